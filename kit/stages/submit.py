"""`kit submit` as a library call: a predict run's label images → a validated submission CSV.

The newest finished `test` or `input` predict run of the experiment (or a given one) is written to
`submissions/<name>.csv` with `write_submission`, then read back and checked with `check_submission`
against the images that must be there and their sizes: the dataset split's images (manifest height and
width) for a split run, the predicted folder's images for an input run. The file is written and checked
under a temporary name and takes its own only when valid, so a failed check or a kill leaves any earlier
submission of that name untouched. The CSV is logged as an artifact of a submit run (kit.role=submit, kit.predict_run_id,
kit.train_run_id).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit import tracking
from kit.config import SUBMIT_KINDS, ExperimentConfig
from kit.data.dataset import open_dataset
from kit.errors import ConfigError, DataError
from kit.fileio import atomic_path
from kit.inference.artifacts import read_predicted_labels
from kit.tracking.schema import Role, Tag, find_predict_run, role_tags, run_folder

SUBMISSIONS_DIR = Path("submissions")


@dataclass
class SubmitOutcome:
    """The submission written, its size and the runs involved."""

    path: Path
    n_rows: int
    n_images: int
    predict_run_id: str
    run_id: str | None = None


def expected_images(cfg: ExperimentConfig, run: Any, index: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Image id → (H, W) a submission of predict run `run` must cover.

    A split run (kind test/validation) must cover its whole split of the experiment's dataset at the
    sizes in the manifest; an input run the images it predicted.
    """
    kind = run.data.tags.get(Tag.PREDICT_KIND)
    if kind in ("test", "validation"):
        manifest = open_dataset(cfg.data.root).manifest
        rows = manifest[manifest["split"] == kind]
        return {str(r.id): (int(r.height), int(r.width)) for r in rows.itertuples(index=False)}
    return {str(r.image_id): (int(r.height), int(r.width)) for r in index.itertuples(index=False)}


def _check_coverage(run_id: str, labels: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]]) -> None:
    missing = sorted(set(sizes) - set(labels))
    if missing:
        raise DataError(
            f"predict run {run_id} lacks {len(missing)} of the {len(sizes)} images to submit, e.g. {missing[0]!r}; "
            f"predict them again with `kit predict`"
        )
    wrong = [i for i in sorted(labels) if i in sizes and labels[i].shape != sizes[i]]
    if wrong:
        i = wrong[0]
        raise DataError(
            f"predict run {run_id}: image {i!r} was predicted at {labels[i].shape}, expected {sizes[i]}"
        )


def submit_experiment(
    cfg: ExperimentConfig,
    name: str,
    *,
    kind: str | None = None,
    predict_run_id: str | None = None,
    out_dir: Path = SUBMISSIONS_DIR,
    track: bool = True,
    command: str = "submit",
) -> SubmitOutcome:
    """Write `out_dir/<name>.csv` from the newest predict run of `kind` (default: test or input); see the
    module docstring. Images predicted beyond those expected (e.g. other splits) are left out."""
    from kit.submission import check_submission, write_submission

    started_at = time.time()
    name = name.removesuffix(".csv")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"--name {name!r}: give a plain file name such as 'unet_r34_d4'")
    if kind is not None and kind not in SUBMIT_KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(SUBMIT_KINDS)}, got {kind!r}")
    run = find_predict_run(cfg.mlflow_experiment, kind or SUBMIT_KINDS, predict_run_id)
    index, labels = read_predicted_labels(run_folder(run))
    sizes = expected_images(cfg, run, index)
    _check_coverage(run.info.run_id, labels, sizes)
    path = out_dir / f"{name}.csv"
    with atomic_path(path) as tmp:  # only a checked file takes the name; a kill leaves the old one
        write_submission(tmp, {i: labels[i] for i in sizes})
        try:
            frame = check_submission(tmp, sizes, sizes.keys())
        except DataError as exc:
            raise DataError(str(exc).replace(str(tmp), str(path))) from None
    outcome = SubmitOutcome(path, len(frame), len(sizes), run.info.run_id)
    if track:
        outcome.run_id = _log_submission(cfg, run, outcome, name, command, started_at)
    return outcome


def _log_submission(
    cfg: ExperimentConfig,
    predict_run: Any,
    outcome: SubmitOutcome,
    name: str,
    command: str,
    started_at: float,
) -> str:
    import mlflow

    tags = role_tags(
        Role.SUBMIT,
        **{
            Tag.PREDICT_RUN: predict_run.info.run_id,
            Tag.PREDICT_KIND: predict_run.data.tags.get(Tag.PREDICT_KIND, ""),
            Tag.TRAIN_RUN: predict_run.data.tags.get(Tag.TRAIN_RUN, ""),
        },
    )
    with tracking.start_run(
        cfg.mlflow_experiment,
        command,
        run_name=f"{cfg.name}-submit-{name}",
        tags=tags,
        started_at=started_at,  # the run records the file written above: its duration spans it
    ) as run:
        mlflow.log_params({"name": name, "path": str(outcome.path.resolve())[:500]})
        mlflow.log_metrics({"n_rows": outcome.n_rows, "n_images": outcome.n_images})
        mlflow.log_artifact(str(outcome.path), artifact_path="submission")
    return run.info.run_id
