"""Scoring stage: truth and predictions as label images → the DSB metric, error taxonomy and pictures.

Shared by `kit score` (a submission CSV against truth) and `kit evaluate` (a predict run against truth).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kit.errors import DataError
from kit.fileio import atomic_write_text
from kit.metrics import Evaluation, evaluate, plot_ap_curves, plot_error_bars, save_overlay


def load_truth(truth: Path, split: str | None = None, ids: set[str] | None = None) -> dict[str, np.ndarray]:
    """Truth label images from a labels CSV (with Height/Width columns) or a kit dataset folder.

    For a dataset folder, `split` picks the images; when it is None, the splits that hold any of `ids`
    are used (so a submission for the test split is scored against the whole test split). Images without
    truth are an error naming them.
    """
    if truth.is_dir():
        from kit.data.dataset import NucleiDataset

        dataset = NucleiDataset(truth)
        if split is None:
            splits = sorted({dataset.row(i)["split"] for i in (ids or set()) if i in dataset})
            if not splits:
                raise DataError(f"{truth}: none of the submission's ImageIds is in this dataset")
        else:
            splits = [split]
        wanted = [i for s in splits for i in dataset.ids(s)]
        missing = [i for i in wanted if dataset.mask_paths(i) is None]
        if missing:
            raise DataError(
                f"{truth}: {len(missing)} image(s) of split {'/'.join(splits)} have no truth (no masks/), "
                f"e.g. {missing[0]}"
            )
        return {i: np.asarray(dataset.load(i).labels) for i in wanted}
    if truth.suffix.lower() == ".csv":
        from kit.submission import read_submission_labels

        return read_submission_labels(truth)
    raise DataError(
        f"{truth}: truth must be a labels CSV (ImageId,EncodedPixels,Height,Width) or a dataset folder"
    )


def summary_metrics(summary: Mapping[str, object]) -> dict[str, float]:
    """The numbers of an evaluation summary as MLflow metric names → floats (ap_0.50, map, f1_avg, ...)."""
    out = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({f"ap_{t}": float(v) for t, v in summary["ap_per_threshold"].items()})
    out.update({f"missed_0.7_{k}": float(v) for k, v in summary["missed_0.7"].items()})
    return out


def score_submission(
    submission: Path, truth: Path, *, split: str | None = None, n_bootstrap: int = 1000
) -> Evaluation:
    """Validate `submission` against the truth's image ids and sizes, decode it and evaluate it."""
    from kit.submission import read_rle_csv, read_submission_labels

    submitted_ids = set(read_rle_csv(submission)["ImageId"])
    truth_labels = load_truth(truth, split, submitted_ids)
    sizes = {i: lab.shape for i, lab in truth_labels.items()}
    predicted = read_submission_labels(submission, sizes)
    pairs = ((i, truth_labels[i], predicted[i]) for i in sorted(truth_labels))
    return evaluate(pairs, n_bootstrap=n_bootstrap, progress=len(truth_labels) > 50)


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
