"""The report of an evaluation, as files people look at: summary.json, per_image.csv, the AP-vs-IoU curve,
error bars and TP/FP/FN overlays of the worst images; and its numbers as MLflow metric names.

Shared by `kit score` (a submission CSV against truth) and `kit evaluate` (a predict run against truth).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kit.fileio import atomic_write_text
from kit.metrics.evaluation import Evaluation
from kit.metrics.overlay import save_overlay
from kit.metrics.plots import plot_ap_curves, plot_error_bars


def summary_metrics(summary: Mapping[str, object]) -> dict[str, float]:
    """The numbers of an evaluation summary as MLflow metric names → floats (ap_0.50, map, f1_avg, ...)."""
    out = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({f"ap_{t}": float(v) for t, v in summary["ap_per_threshold"].items()})
    out.update({f"missed_0.7_{k}": float(v) for k, v in summary["missed_0.7"].items()})
    return out


def write_report(
    evaluation: Evaluation,
    out_dir: Path,
    *,
    name: str,
    images: Mapping[str, np.ndarray] | None = None,
    truth: Mapping[str, np.ndarray] | None = None,
    predicted: Mapping[str, np.ndarray] | None = None,
    n_worst: int = 4,
) -> list[Path]:
    """Write summary.json, per_image.csv, the AP-vs-IoU curve, error bars and TP/FP/FN overlays of the
    `n_worst` images (when images, truth and predictions are given). Returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        atomic_write_text(out_dir / "summary.json", json.dumps(evaluation.summary, indent=2)),
        atomic_write_text(out_dir / "per_image.csv", evaluation.per_image.to_csv(index=False)),
        plot_ap_curves({name: evaluation.summary["ap_per_threshold"]}, out_dir / "ap_vs_iou.png", title=name),
        plot_error_bars(evaluation.summary, out_dir / "errors.png", title=name),
    ]
    if images is not None and truth is not None and predicted is not None:
        worst = evaluation.per_image.nsmallest(n_worst, "score")["image_id"]
        for image_id in worst:
            paths.append(
                save_overlay(
                    out_dir / "overlays" / f"{image_id}.png",
                    images[image_id],
                    truth[image_id],
                    predicted[image_id],
                )
            )
    return paths
