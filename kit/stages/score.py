"""`kit score` as a library call: a submission CSV against the truth → the DSB metric, the error report
(`kit.metrics.report`) and a run in MLflow experiment `scores`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit import tracking
from kit.errors import ConfigError, DataError
from kit.metrics import Evaluation, evaluate
from kit.metrics.report import summary_metrics, write_report
from kit.tracking.schema import SCORES_EXPERIMENT, Role, role_tags

REPORT_DIR = Path("outputs") / "score"


@dataclass
class ScoreOutcome:
    """A scored submission: the evaluation, the report folder and files, the MLflow run (if tracked)."""

    evaluation: Evaluation
    out_dir: Path
    files: list[Path]
    run_id: str | None = None


def load_truth(truth: Path, split: str | None = None, ids: set[str] | None = None) -> dict[str, np.ndarray]:
    """Truth label images from whichever layout a user has:

    - a labels CSV with Height/Width columns (the DSB stage-1 solution);
    - a kit dataset folder (manifest.csv): `split` picks the images; when it is None, the splits that
      hold any of `ids` are used (so a submission for the test split is scored against the whole split);
    - a DSB folder or zip (`<id>/images/`, `<id>/masks/`, as Kaggle ships stage1_train): all its images.

    Images without truth are an error naming them.
    """
    if truth.is_dir() and (truth / "manifest.csv").is_file():
        return _dataset_truth(truth, split, ids)
    dsb_folder = truth.is_dir() and any(truth.glob("**/images"))
    if dsb_folder or truth.suffix.lower() == ".zip":
        from kit.data.dsb2018 import read_dsb_labels

        if split is not None:
            raise ConfigError(
                f"--split {split}: {truth} is a DSB folder, not a kit dataset; it has no splits"
            )
        return read_dsb_labels(truth)
    if truth.suffix.lower() == ".csv":
        from kit.submission import read_submission_labels

        return read_submission_labels(truth)
    raise DataError(
        f"{truth}: truth must be a labels CSV (ImageId,EncodedPixels,Height,Width), a kit dataset folder "
        "(manifest.csv) or a DSB folder or zip (<id>/images/, <id>/masks/)"
    )


def _dataset_truth(truth: Path, split: str | None, ids: set[str] | None) -> dict[str, np.ndarray]:
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
    return {i: dataset.truth(i) for i in wanted}


def score(
    submission: Path,
    truth: Path,
    *,
    split: str | None = None,
    out: Path | None = None,
    track: bool = True,
    command: str = "score",
) -> ScoreOutcome:
    """Score `submission` (`score_submission`), write the report to `out` (default
    outputs/score/<name>/) and, with `track`, log it as a run of MLflow experiment `scores`."""
    started_at = time.time()
    evaluation = score_submission(submission, truth, split=split)
    out = out or REPORT_DIR / submission.stem
    files = write_report(evaluation, out, name=submission.stem)
    outcome = ScoreOutcome(evaluation, out, files)
    if track:
        import mlflow

        with tracking.start_run(
            SCORES_EXPERIMENT,
            command,
            run_name=submission.stem,
            tags=role_tags(Role.SCORE),
            started_at=started_at,  # the run records the scoring done above: its duration spans it
        ) as run:
            mlflow.log_params({"submission": str(submission.resolve()), "truth": str(truth.resolve())})
            mlflow.log_metrics(summary_metrics(evaluation.summary))
            mlflow.log_artifacts(str(out), artifact_path="report")
            mlflow.log_artifact(str(submission), artifact_path="submission")
        outcome.run_id = run.info.run_id
    return outcome


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
