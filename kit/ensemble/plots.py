"""Figures of an ensemble run: feature importance, OOF predicted vs true IoU, the threshold curve and
the estimated vs real image scores (PNG, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kit.visualize import save_figure


def plot_feature_importance(importance: pd.Series, path: str | os.PathLike, top: int = 30) -> Path:
    """Horizontal bars of the `top` largest gain shares (a Series feature → share)."""
    from matplotlib.figure import Figure

    shown = importance.sort_values(ascending=False).head(top)[::-1]
    fig = Figure(figsize=(7, 0.25 * len(shown) + 1.2))
    ax = fig.add_subplot()
    ax.barh(shown.index, shown.to_numpy(), color="tab:blue")
    ax.set_xlabel("share of split gain (mean over boosters)")
    ax.set_title("IoU model: feature importance")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_oof_scatter(
    predicted: np.ndarray, target: np.ndarray, sources: Sequence[str], path: str | os.PathLike
) -> Path:
    """Out-of-fold predicted IoU against the target, one colour per source, with the diagonal."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    sources = np.asarray(sources)
    for name in dict.fromkeys(sources.tolist()):
        sel = sources == name
        ax.scatter(target[sel], predicted[sel], s=4, alpha=0.3, label=name)
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    r = (
        np.corrcoef(target, predicted)[0, 1]
        if len(target) > 1 and np.std(target) > 0 and np.std(predicted) > 0
        else 0
    )
    ax.set_xlabel("target (best IoU with truth if > min, else 0)")
    ax.set_ylabel("predicted IoU (out of fold)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left", markerscale=3)
    ax.set_title(f"OOF predicted vs true IoU (r = {r:.3f}, n = {len(target)})")
    return save_figure(fig, path)


def plot_threshold_curve(
    grid: Sequence[float],
    scores: np.ndarray,
    chosen: float,
    baselines: Mapping[str, float],
    path: str | os.PathLike,
) -> Path:
    """OOF mAP of the ensemble against the drop threshold, the chosen one marked, sources as lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(grid, scores, marker="o", label="ensemble")
    ax.axvline(chosen, color="gray", linestyle="--", label=f"chosen {chosen:.2f}")
    for i, (name, value) in enumerate(baselines.items()):
        ax.axhline(value, linestyle=":", label=f"{name} {value:.3f}", color=f"C{i + 1}")
    ax.set_xlabel("drop threshold on predicted IoU")
    ax.set_ylabel("OOF DSB mAP")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("Threshold tuned on out-of-fold predictions")
    return save_figure(fig, path)


def plot_estimate(real: np.ndarray, estimated: np.ndarray, path: str | os.PathLike) -> Path:
    """Per-image estimated DSB score against the real one on the OOF images."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.scatter(real, estimated, s=12, alpha=0.7)
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    ax.set_xlabel("real image score (OOF)")
    ax.set_ylabel("estimated image score")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Estimated vs real: mean {np.mean(estimated):.3f} vs {np.mean(real):.3f}")
    return save_figure(fig, path)
