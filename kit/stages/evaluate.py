"""`kit evaluate` as a library call: a predict run's label images against the dataset's truth.

The newest finished predict run of an experiment and kind (oof / test / validation / input) is paired
image by image with the truth of the experiment's dataset (`cfg.data.root`) and scored with
`kit.metrics.evaluate`. The report of `kit.stages.score.write_report` (summary.json, per_image.csv, the AP-vs-IoU
curve, error bars, TP/FP/FN overlays of the worst images) goes to `outputs/evaluate/<name>-<kind>/` and
to an evaluate run (kit.role=evaluate, kit.predict_run_id, kit.train_run_id, kit.predict_kind) with the
summary numbers as metrics.

Other experiments can be compared with it (`--compare`, and `kit compare A B C ...`, which is this with
the first experiment as the reference): seed 003's comparison (Caicedo et al. 2019) of each one's newest
predict run of the same kind against the same truth on the same images, written beside the report and
logged with the same evaluate run (`_compare`).
"""

from __future__ import annotations

import logging
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
from kit.inference.artifacts import read_index, read_predicted_labels
from kit.metrics import SIZE_BINS, Evaluation, evaluate, plot_ap_curves
from kit.metrics.report import summary_metrics, write_report
from kit.tracking.schema import Role, Tag, find_predict_run, get_run, role_tags, run_folder

log = logging.getLogger(__name__)

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

    Every predicted image must have truth in `cfg.data.root`, drawn rather than made automatically
    (`NucleiDataset.truth`); otherwise a `DataError` names it.
    """
    run, _, predicted = _predictions(cfg, kind, predict_run_id)
    dataset = open_dataset(cfg.data.root)
    missing = [i for i in predicted if i not in dataset or dataset.mask_paths(i) is None]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of predict run {run.info.run_id} have no truth in {dataset.root}, "
            f"e.g. {missing[0]!r}; evaluate needs annotated images (kinds oof, validation, test)"
        )
    truth = {i: dataset.truth(i) for i in predicted}
    return run, dataset, truth, predicted


def _predictions(cfg: ExperimentConfig, kind: str, predict_run_id: str | None = None):
    """(predict run, its predictions.csv, predicted label image by id) of the newest run of `kind`."""
    run = find_predict_run(cfg.mlflow_experiment, kind, predict_run_id)
    index, predicted = read_predicted_labels(run_folder(run))
    return run, index, predicted


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
    n_gallery: int = 4,
    command: str = "evaluate",
) -> EvaluateOutcome:
    """Evaluate the newest predict run of `kind` (or `predict_run_id`); see the module docstring.

    `compare`: further experiments whose newest predict run of `kind` is scored against this
    experiment's truth on the images they all predicted, with a row each in `compare.csv` (this
    experiment first) and the comparison files of `_compare` (`n_gallery` images in the gallery).
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
        outcome.comparison, compared = _compare(
            cfg, run, images, truth, predicted, compare, kind, out, n_bootstrap, n_gallery
        )
        files.extend(compared)
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
    run: Any,
    images: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    predicted: Mapping[str, np.ndarray],
    others: Sequence[ExperimentConfig],
    kind: str,
    out: Path,
    n_bootstrap: int,
    n_gallery: int,
) -> tuple[pd.DataFrame, list[Path]]:
    """Seed 003's comparison (Caicedo et al. 2019) of this experiment's predictions with each of
    `others`' newest predict run of `kind`, all scored against this experiment's truth on the images
    every one of them predicted: (the table, the files written).

    Files: compare.csv (one row per experiment: mAP with its bootstrap 95 % interval, its difference from
    the first experiment with a paired bootstrap interval, average F1, AP and F1 at 0.5/0.75, precision and
    recall at 0.7, missed nuclei by size, extra, merges, splits, Dice, seconds per image from
    predictions.csv, an ensemble's with its bases' added), compare_curves.csv (AP and F1 per IoU threshold 0.50–0.95), compare_ap_vs_iou.png,
    compare_f1_vs_iou.png, compare_errors.png and compare_gallery.png (TP/FP/FN overlays of the
    `n_gallery` images on which the experiments' scores differ most).
    """
    from kit.metrics import (
        f1_curve,
        paired_bootstrap_ci,
        plot_error_comparison,
        plot_f1_curves,
        plot_overlay_gallery,
    )

    entries = [(cfg.name, run, read_index(run_folder(run)), dict(predicted))]
    entries += [(other.name, *_predictions(other, kind)) for other in others]
    names = [name for name, *_ in entries]
    if len(set(names)) < len(names):
        raise DataError(f"--compare lists an experiment twice: {', '.join(names)}")
    common = sorted(set.intersection(*(set(labels) for *_, labels in entries)))
    if not common:
        raise DataError(
            f"the {kind} predictions of {', '.join(names)} share no image; predict the same images"
        )
    for name, _, _, labels in entries:
        if len(labels) != len(common):
            log.warning(
                "%s: %d of its %d %s images are compared (those all experiments predicted)",
                name,
                len(common),
                len(labels),
                kind,
            )
    rows, curves, summaries, scores = [], [], {}, {}
    for name, other_run, index, labels in entries:
        result = evaluate(((i, truth[i], labels[i]) for i in common), n_bootstrap=n_bootstrap)
        s, per_image = result.summary, result.per_image
        scores[name] = per_image.set_index("image_id")["score"].reindex(common).to_numpy()
        lo, hi = s["map_ci95"] or (np.nan, np.nan)
        diff = paired_bootstrap_ci(scores[name], scores[names[0]], n_bootstrap) or (np.nan, np.nan)
        seconds = _seconds(other_run, index, common)
        f1 = f1_curve(per_image)
        rows.append(
            {
                "experiment": name,
                "predict_run": other_run.info.run_id[:8],
                "images": s["n_images"],
                "map": s["map"],
                "map_ci_low": lo,
                "map_ci_high": hi,
                "map_diff": float(np.mean(scores[name] - scores[names[0]])),
                "map_diff_ci_low": diff[0],
                "map_diff_ci_high": diff[1],
                "f1_avg": s["f1_avg"],
                "ap_0.50": s["ap_per_threshold"]["0.50"],
                "ap_0.75": s["ap_per_threshold"]["0.75"],
                "f1_0.50": f1["0.50"],
                "f1_0.75": f1["0.75"],
                "precision_0.7": s["precision_0.7"],
                "recall_0.7": s["recall_0.7"],
                "n_true": s["n_true"],
                "n_pred": s["n_pred"],
                **{f"missed_{b}": s["missed_0.7"][b] for b in SIZE_BINS},
                "missed_rate_0.7": s["missed_rate_0.7"],
                "extra_0.7": s["extra_0.7"],
                "merges": s["merges"],
                "splits": s["splits"],
                "dice": s["dice"],
                "s_per_image": float(seconds.mean()),
            }
        )
        curves += [
            {"experiment": name, "threshold": t, "ap": s["ap_per_threshold"][t], "f1": f1[t]} for t in f1
        ]
        summaries[name] = {**s, "f1_per_iou": f1}
    table = pd.DataFrame(rows)
    spread = np.ptp(np.stack([scores[n] for n in names]), axis=0)
    shown = [common[i] for i in sorted(np.argsort(-spread, kind="stable")[:n_gallery])]
    gallery = [(i, images[i], truth[i], {name: labels[i] for name, *_, labels in entries}) for i in shown]
    title = f"{kind}: {len(common)} images"
    files = [
        atomic_write_text(out / "compare.csv", table.to_csv(index=False)),
        atomic_write_text(out / "compare_curves.csv", pd.DataFrame(curves).to_csv(index=False)),
        plot_ap_curves(
            {n: s["ap_per_threshold"] for n, s in summaries.items()},
            out / "compare_ap_vs_iou.png",
            title=f"AP vs IoU ({title})",
        ),
        plot_f1_curves(
            {n: s["f1_per_iou"] for n, s in summaries.items()},
            out / "compare_f1_vs_iou.png",
            title=f"F1 vs IoU ({title})",
        ),
        plot_error_comparison(summaries, out / "compare_errors.png", title=f"Errors ({title})"),
    ]
    if gallery:
        files.append(plot_overlay_gallery(gallery, out / "compare_gallery.png"))
    return table, files


def _seconds(run: Any, index: pd.DataFrame, ids: Sequence[str]) -> pd.Series:
    """Seconds each image of `ids` took to predict (predictions.csv); for an ensemble's predictions, plus
    the seconds its base models' predict runs took on it, so the whole model is timed."""
    seconds = pd.to_numeric(index.set_index("image_id")["seconds"], errors="coerce").reindex(ids)
    for item in filter(None, run.data.tags.get(Tag.BASE_PREDICT_RUNS, "").split(",")):
        base = get_run(item.partition(":")[2])
        base_index = read_index(run_folder(base)).set_index("image_id")["seconds"]
        seconds = seconds + pd.to_numeric(base_index, errors="coerce").reindex(ids)
    return seconds


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
