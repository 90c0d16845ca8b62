"""`kit evaluate` as a library call: a predict run's label images against the dataset's truth.

The newest finished predict run of an experiment and kind (oof / test / validation / input) is paired
image by image with the truth of the experiment's dataset (`cfg.data.root`) and scored with
`kit.metrics.evaluate`. The report of `kit.stages.score.write_report` (summary.json, per_image.csv, the AP-vs-IoU
curve, error bars, TP/FP/FN overlays of the worst images) goes to `outputs/evaluate/<name>-<kind>/` and
to an evaluate run (kit.role=evaluate, kit.predict_run_id, kit.train_run_id, kit.predict_kind) with the
summary numbers as metrics. Other experiments can be compared on the same axis: one AP-vs-IoU curve each,
from each one's newest predict run of the same kind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit import tracking
from kit.config import ExperimentConfig
from kit.data.dataset import open_dataset
from kit.errors import DataError
from kit.fileio import atomic_write_text
from kit.inference.artifacts import read_predicted_labels
from kit.metrics import Evaluation, evaluate, plot_ap_curves
from kit.metrics.report import summary_metrics, write_report
from kit.tracking.schema import Role, Tag, find_predict_run, role_tags, run_folder

OUTPUT_DIR = Path("outputs") / "evaluate"


@dataclass
class EvaluateOutcome:
    """An evaluation of one predict run, where its report went and, with `compare`, the comparison."""

    experiment: str
    kind: str
    predict_run_id: str
    evaluation: Evaluation
    out_dir: Path
    files: list[Path]
    run_id: str | None = None
    comparison: pd.DataFrame | None = None
    breakdown: pd.DataFrame | None = None


class _DatasetImages(Mapping):
    """Image id → raw image of a dataset, read on access (only the worst images get drawn)."""

    def __init__(self, dataset: Any, ids: Sequence[str]) -> None:
        self._dataset, self._ids = dataset, list(ids)

    def __getitem__(self, image_id: str) -> np.ndarray:
        return self._dataset.load(image_id).image

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def predicted_pairs(cfg: ExperimentConfig, kind: str = "oof", predict_run_id: str | None = None):
    """(predict run, dataset, truth by id, predicted by id) for the newest predict run of `kind`.

    Every predicted image must have truth in `cfg.data.root`; otherwise a `DataError` names it.
    """
    run = find_predict_run(cfg.mlflow_experiment, kind, predict_run_id)
    _, predicted = read_predicted_labels(run_folder(run))
    dataset = open_dataset(cfg.data.root)
    missing = [i for i in predicted if i not in dataset or dataset.mask_paths(i) is None]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of predict run {run.info.run_id} have no truth in {dataset.root}, "
            f"e.g. {missing[0]!r}; evaluate needs annotated images (kinds oof, validation, test)"
        )
    truth = {i: np.asarray(dataset.load(i).labels) for i in predicted}
    return run, dataset, truth, predicted


def evaluate_experiment(
    cfg: ExperimentConfig,
    *,
    kind: str = "oof",
    predict_run_id: str | None = None,
    compare: Sequence[ExperimentConfig] = (),
    out: Path | None = None,
    n_worst: int = 4,
    n_bootstrap: int = 1000,
    track: bool = True,
    progress: bool = False,
    by: str | None = None,
    command: str = "evaluate",
) -> EvaluateOutcome:
    """Evaluate the newest predict run of `kind` (or `predict_run_id`); see the module docstring.

    `compare`: further experiments whose newest predict run of `kind` is evaluated too and drawn as one
    curve each on `compare_ap_vs_iou.png`, with a row each in `compare.csv` (this experiment first).
    `by`: a manifest column (e.g. "style", the image-style cluster) to break the score down by, written
    to `by_<column>.csv` (one row per value: images, mAP and its bootstrap 95 % interval).
    """

    started_at = time.time()
    run, dataset, truth, predicted = predicted_pairs(cfg, kind, predict_run_id)
    pairs = ((i, truth[i], predicted[i]) for i in sorted(predicted))
    evaluation = evaluate(pairs, n_bootstrap=n_bootstrap, progress=progress)
    out = out or OUTPUT_DIR / f"{cfg.name}-{kind}"
    images = _DatasetImages(dataset, sorted(predicted))
    files = write_report(
        evaluation,
        out,
        name=f"{cfg.name} {kind}",
        images=images,
        truth=truth,
        predicted=predicted,
        n_worst=n_worst,
    )
    outcome = EvaluateOutcome(cfg.mlflow_experiment, kind, run.info.run_id, evaluation, out, files)
    if compare:
        outcome.comparison = _compare(cfg, evaluation, run, compare, kind, out)
        files.extend([out / "compare.csv", out / "compare_ap_vs_iou.png"])
    if by is not None:
        outcome.breakdown = breakdown(evaluation.per_image, dataset.manifest, by, n_bootstrap)
        files.append(atomic_write_text(out / f"by_{by}.csv", outcome.breakdown.to_csv(index=False)))
    if track:
        outcome.run_id = _log_evaluation(cfg, run, kind, outcome, command, started_at)
    return outcome


def breakdown(
    per_image: pd.DataFrame, manifest: pd.DataFrame, column: str, n_bootstrap: int = 1000
) -> pd.DataFrame:
    """Per value of manifest `column` (e.g. "style"): images, mean DSB score (mAP) and its bootstrap 95 %
    interval, and the images of that value in the training split (0 marks a value never trained on)."""
    from kit.metrics.evaluation import bootstrap_ci

    if column not in manifest.columns:
        raise DataError(f"the manifest has no column {column!r}; choose one of {', '.join(manifest.columns)}")
    values = manifest.set_index("id")[column]
    scores = per_image.assign(value=per_image["image_id"].map(values))
    rows = []
    for value, group in scores.groupby("value", sort=True):
        lo_hi = bootstrap_ci(group["score"].to_numpy(), n_bootstrap) or [np.nan, np.nan]
        rows.append(
            {
                column: value,
                "images": len(group),
                "map": float(group["score"].mean()),
                "ci_low": lo_hi[0],
                "ci_high": lo_hi[1],
                "train_images": int(((manifest[column] == value) & (manifest["split"] == "train")).sum()),
            }
        )
    return pd.DataFrame(rows)


def _compare(
    cfg: ExperimentConfig,
    evaluation: Evaluation,
    run: Any,
    others: Sequence[ExperimentConfig],
    kind: str,
    out: Path,
) -> pd.DataFrame:
    results = [(cfg.name, run.info.run_id, evaluation.summary)]
    for other in others:
        other_run, _, truth, predicted = predicted_pairs(other, kind)
        pairs = ((i, truth[i], predicted[i]) for i in sorted(predicted))
        results.append((other.name, other_run.info.run_id, evaluate(pairs, n_bootstrap=0).summary))
    names = [name for name, _, _ in results]
    if len(set(names)) < len(names):
        raise DataError(f"--compare lists an experiment twice: {', '.join(names)}")
    table = pd.DataFrame(
        [
            {
                "experiment": name,
                "predict_run": run_id[:8],
                "images": s["n_images"],
                "map": s["map"],
                "f1_avg": s["f1_avg"],
                "ap_0.50": s["ap_per_threshold"]["0.50"],
                "ap_0.75": s["ap_per_threshold"]["0.75"],
                "dice": s["dice"],
            }
            for name, run_id, s in results
        ]
    )
    atomic_write_text(out / "compare.csv", table.to_csv(index=False))
    curves = {name: s["ap_per_threshold"] for name, _, s in results}
    plot_ap_curves(curves, out / "compare_ap_vs_iou.png", title=f"AP vs IoU ({kind})")
    return table


def _log_evaluation(
    cfg: ExperimentConfig,
    predict_run: Any,
    kind: str,
    outcome: EvaluateOutcome,
    command: str,
    started_at: float,
) -> str:
    import mlflow

    tags = role_tags(
        Role.EVALUATE,
        **{
            Tag.PREDICT_KIND: kind,
            Tag.PREDICT_RUN: predict_run.info.run_id,
            Tag.TRAIN_RUN: predict_run.data.tags.get(Tag.TRAIN_RUN, ""),
        },
    )
    with tracking.start_run(
        cfg.mlflow_experiment,
        command,
        run_name=f"{cfg.name}-evaluate-{kind}",
        tags=tags,
        started_at=started_at,  # the run is opened to record the evaluation: its duration spans it
    ) as run:
        params = {
            "kind": kind,
            "predict_run_id": predict_run.info.run_id,
            "n_images": len(outcome.evaluation.per_image),
        }
        if outcome.comparison is not None:
            params["compare"] = ",".join(outcome.comparison["experiment"].iloc[1:])
        mlflow.log_params(params)
        mlflow.log_metrics(summary_metrics(outcome.evaluation.summary))
        mlflow.log_artifacts(str(outcome.out_dir), artifact_path="report")
    return run.info.run_id
