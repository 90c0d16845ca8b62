"""The runs inference consumes and produces, found through MLflow.

- A train run (`kit.training.stage`): a parent run (tag kit.role=train) with one finished child per fold
  (kit.role=train-fold, kit.fold, kit.parent_run_id), each holding `checkpoints/best.pt` and
  `val_ids.txt`, the images that fold did not train on.
- A predict run (`kit.inference.stage`): kit.role=predict, kit.predict_kind, kit.train_run_id; its
  per-image files are laid out as `kit.inference.artifacts` describes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit import tracking
from kit.errors import RunNotFoundError
from kit.inference.artifacts import INDEX_COLUMNS, INDEX_FILE, read_labels, read_table
from kit.training.stage import CHECKPOINT_DIR, FOLD_ROLE, PARENT_ROLE

PREDICT_ROLE = "predict"
PREDICT_KINDS = ("test", "validation", "oof", "input")
_PREDICT_HINTS = {
    "oof": "--oof",
    "test": "--split test",
    "validation": "--split validation",
    "input": "--input DIR",
}


@dataclass(frozen=True)
class FoldModel:
    """A finished fold of a train run: its run, the ids it did not train on, its best checkpoint."""

    fold: int
    run_id: str
    val_ids: tuple[str, ...]
    checkpoint: Path


def _client() -> Any:
    return tracking.configure().MlflowClient()


@contextlib.contextmanager
def _no_download_bars() -> Iterator[None]:
    """Off, unless the user chose: MLflow's progress bar per artifact download (a stage has its own bar)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def get_run(run_id: str) -> Any:
    """The MLflow run `run_id`, or RunNotFoundError naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_run(run_id)
    except MlflowException:
        raise RunNotFoundError(
            f"no run {run_id} in {tracking.tracking_uri()}; `kit runs` lists the runs"
        ) from None


def find_train_run(experiment: str, run_id: str | None = None) -> Any:
    """The train parent run `run_id`, or the newest finished one of MLflow experiment `experiment`."""
    if run_id is not None:
        run = get_run(run_id)
        role = run.data.tags.get("kit.role")
        if role != PARENT_ROLE:
            hint = f"; use its parent {run.data.tags.get('kit.parent_run_id')}" if role == FOLD_ROLE else ""
            raise RunNotFoundError(f"run {run_id} is a {role or 'non-kit'} run, not a train run{hint}")
        return run
    runs = tracking.find_runs(experiment, tags={"kit.role": PARENT_ROLE}, max_results=1)
    if not runs:
        raise RunNotFoundError(
            f"experiment '{experiment}' has no finished train run in {tracking.tracking_uri()}; "
            f"train it first with `kit train --exp {experiment}`"
        )
    return runs[0]


@_no_download_bars()
def fold_models(train_run: Any) -> list[FoldModel]:
    """The finished folds of `train_run`, sorted by fold, with their checkpoints available locally."""
    import mlflow

    parent_id = train_run.info.run_id
    children = _client().search_runs(
        [train_run.info.experiment_id],
        filter_string=(
            f"tags.`kit.parent_run_id` = '{parent_id}' and tags.`kit.role` = '{FOLD_ROLE}' "
            "and attributes.status = 'FINISHED'"
        ),
        max_results=1000,
    )
    if not children:
        raise RunNotFoundError(f"train run {parent_id} has no finished fold run; (re)train with `kit train`")
    folds = []
    for child in children:
        run_id = child.info.run_id
        try:
            val_text = mlflow.artifacts.load_text(f"{child.info.artifact_uri}/val_ids.txt")
            checkpoint = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/best.pt"
            )
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise RunNotFoundError(
                f"fold run {run_id} of train run {parent_id} lacks val_ids.txt or {CHECKPOINT_DIR}/best.pt ({exc})"
            ) from None
        val_ids = tuple(line.strip() for line in val_text.splitlines() if line.strip())
        folds.append(FoldModel(int(child.data.tags["kit.fold"]), run_id, val_ids, Path(checkpoint)))
    folds.sort(key=lambda f: f.fold)
    return folds


@_no_download_bars()
def train_config(train_run: Any) -> dict[str, Any]:
    """The resolved experiment config the train run logged (config.yaml), as plain data."""
    import mlflow
    import yaml

    try:
        return yaml.safe_load(mlflow.artifacts.load_text(f"{train_run.info.artifact_uri}/config.yaml")) or {}
    except Exception as exc:  # missing artifact
        raise RunNotFoundError(f"train run {train_run.info.run_id} has no config.yaml ({exc})") from None


def find_predict_run(experiment: str, kinds: str | Sequence[str] = "test", run_id: str | None = None) -> Any:
    """The predict run `run_id`, or the newest finished predict run of one of `kinds` in `experiment`."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if run_id is not None:
        run = get_run(run_id)
        if run.data.tags.get("kit.role") != PREDICT_ROLE:
            raise RunNotFoundError(
                f"run {run_id} is not a predict run (kit.role={run.data.tags.get('kit.role')})"
            )
        return run
    runs = [
        run
        for kind in kinds
        for run in tracking.find_runs(
            experiment, tags={"kit.role": PREDICT_ROLE, "kit.predict_kind": kind}, max_results=1
        )
    ]
    if not runs:
        how = " or ".join(
            f"`kit predict --exp {experiment} {_PREDICT_HINTS[k]}`" for k in kinds if k in _PREDICT_HINTS
        )
        raise RunNotFoundError(
            f"experiment '{experiment}' has no finished predict run of kind {'/'.join(kinds)}; run {how} first"
        )
    return max(runs, key=lambda r: r.info.start_time)


@_no_download_bars()
def predict_root(run: Any) -> Path:
    """The local folder of a predict run's artifacts (downloaded when the store is remote)."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    except Exception as exc:  # unreachable store or deleted artifacts
        raise RunNotFoundError(
            f"cannot read the artifacts of predict run {run.info.run_id} ({exc})"
        ) from None


def read_index(root: Path) -> pd.DataFrame:
    """The predictions.csv of a predict run's artifact folder."""
    if not (root / INDEX_FILE).is_file():
        raise RunNotFoundError(f"{root} has no {INDEX_FILE}: not a (finished) predict run")
    return read_table(root / INDEX_FILE, INDEX_COLUMNS)


def load_predicted_labels(run: Any) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(predictions.csv, image id → int32 label image) of a predict run."""
    root = predict_root(run)
    index = read_index(root)
    return index, {row.image_id: read_labels(root / row.labels) for row in index.itertuples(index=False)}
