"""Figures of an evaluation: AP- and F1-vs-IoU-threshold curves, error-taxonomy bars (one model or several
side by side) and a gallery of the same images across models (PNG, written atomically).

Figures are built on `matplotlib.figure.Figure` directly, so no pyplot backend state is touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kit.metrics.dsb import THRESHOLDS
from kit.metrics.taxonomy import SIZE_BINS
from kit.visualize import save_figure

Curve = Mapping[str, float] | Sequence[float]


def _curve_points(name: str, curve: Curve) -> tuple[list[float], list[float]]:
    """(thresholds, AP values) of one curve given as {"0.50": ap, ...} or as 10 values in `THRESHOLDS` order."""
    if isinstance(curve, Mapping):
        points = sorted((float(t), float(ap)) for t, ap in curve.items())
        return [t for t, _ in points], [ap for _, ap in points]
    values = [float(ap) for ap in curve]
    if len(values) != len(THRESHOLDS):
        raise ValueError(
            f"curve {name!r} has {len(values)} values, expected one per threshold ({len(THRESHOLDS)})"
        )
    return list(THRESHOLDS), values


def plot_ap_curves(curves: Mapping[str, Curve], path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot DSB precision vs IoU threshold, one line per run or model, and save it as PNG at `path`.

    `curves` maps a name to `summary["ap_per_threshold"]` ({"0.50": ap, ...}) or to 10 AP values in
    `THRESHOLDS` order; the legend shows each curve's mean AP (the mAP for a full curve).
    """
    return _plot_threshold_curves(
        curves, path, title or "AP vs IoU threshold", "AP = TP / (TP + FP + FN)", "mAP"
    )


def plot_f1_curves(curves: Mapping[str, Curve], path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot object F1 = 2TP / (2TP + FP + FN) vs IoU threshold, one line per model (Caicedo et al. 2019,
    Fig. 2a), as PNG at `path`; `curves` as for `plot_ap_curves` (e.g. `kit.metrics.f1_curve`'s)."""
    return _plot_threshold_curves(
        curves, path, title or "F1 vs IoU threshold", "F1 = 2TP / (2TP + FP + FN)", "mean F1"
    )


def _plot_threshold_curves(
    curves: Mapping[str, Curve], path: str | os.PathLike, title: str, ylabel: str, stat: str
) -> Path:
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("a threshold plot needs at least one curve")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        x, y = _curve_points(name, curve)
        ax.plot(x, y, marker="o", label=f"{name} ({stat} {np.mean(y):.3f})")
    ax.set_xlabel("IoU threshold t (hit: IoU > t)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(THRESHOLDS)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_error_bars(summary: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Two panels from an evaluation summary: missed objects at IoU 0.7 by size, and merges/splits/extras.

    Missed bars are annotated with the fraction of truth objects in that size bin when the summary has
    `n_true_by_size`.
    """
    from matplotlib.figure import Figure

    missing = [k for k in ("missed_0.7", "merges", "splits", "extra_0.7") if k not in summary]
    if missing:
        raise ValueError(f"summary lacks {missing}; pass the summary of kit.metrics.evaluate")
    missed = [int(summary["missed_0.7"][name]) for name in SIZE_BINS]
    totals = summary.get("n_true_by_size", {})

    fig = Figure(figsize=(10, 4))
    ax_missed, ax_errors = fig.subplots(1, 2)
    bars = ax_missed.bar(SIZE_BINS, missed, color="tab:blue")
    labels = [f"{n}/{totals[b]}" if totals.get(b) else str(n) for n, b in zip(missed, SIZE_BINS, strict=True)]
    ax_missed.bar_label(bars, labels=labels)
    ax_missed.set_title("Missed at IoU > 0.7, by truth area (px)")
    ax_missed.set_xticks(range(4), ["tiny\n≤250", "small\n250–625", "normal\n625–900", "large\n>900"])
    ax_missed.set_ylabel("objects")

    kinds = ["merges", "splits", "extra_0.7"]
    counts = [int(summary[k]) for k in kinds]
    bars = ax_errors.bar(
        ["merges", "splits", "extra (IoU > 0.7)"], counts, color=["tab:red", "tab:orange", "tab:gray"]
    )
    ax_errors.bar_label(bars)
    ax_errors.set_title("Merges / splits (IoU > 0.1), extra objects")
    for ax in (ax_missed, ax_errors):
        ax.margins(y=0.15)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_error_comparison(
    summaries: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Grouped bars, one colour per model: missed nuclei at IoU > 0.7 by size, extra objects, merges and
    splits (Caicedo et al. 2019, Figs 3–4), from each model's evaluation summary."""
    from matplotlib.figure import Figure

    if not summaries:
        raise ValueError("plot_error_comparison needs at least one summary")
    groups = [f"missed {b}" for b in SIZE_BINS] + ["extra", "merges", "splits"]
    fig = Figure(figsize=(max(8, 1.4 * len(groups)), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(summaries)
    for k, (name, summary) in enumerate(summaries.items()):
        values = [int(summary["missed_0.7"][b]) for b in SIZE_BINS]
        values += [int(summary["extra_0.7"]), int(summary["merges"]), int(summary["splits"])]
        bars = ax.bar(
            np.arange(len(groups)) + (k - (len(summaries) - 1) / 2) * width, values, width, label=name
        )
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("objects")
    ax.legend()
    ax.margins(y=0.15)
    ax.set_title(title or "Errors at IoU > 0.7 (missed by truth size) and merges/splits (IoU > 0.1)")
    return save_figure(fig, path)


def plot_overlay_gallery(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, Mapping[str, np.ndarray]]],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """The same images across models: one row per image (id, raw image, truth, model name → predicted
    labels), one column per model, each cell the TP (green) / FP (red) / FN (blue) overlay with the
    image's DSB score."""
    from matplotlib.figure import Figure

    from kit.metrics.dsb import dsb_score
    from kit.metrics.overlay import tp_fp_fn_overlay

    if not rows:
        raise ValueError("plot_overlay_gallery needs at least one image")
    names = list(rows[0][3])
    fig = Figure(figsize=(3 * len(names), 3 * len(rows) + 0.6))
    axes = np.asarray(fig.subplots(len(rows), len(names), squeeze=False))
    for r, (image_id, image, truth, predicted) in enumerate(rows):
        for c, name in enumerate(names):
            ax = axes[r, c]
            ax.imshow(tp_fp_fn_overlay(image, truth, predicted[name]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {dsb_score(truth, predicted[name]):.3f}", fontsize=9)
            if c == 0:
                ax.set_ylabel(image_id, fontsize=8)
    fig.suptitle(title or "TP green, FP red, FN blue (IoU > 0.5); DSB score per image")
    return save_figure(fig, path)
