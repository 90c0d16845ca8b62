"""The run schema: how kit's stages find each other in MLflow. Every role, tag name and run-level artifact
path lives here, and so does every lookup, so a stage never writes a tag literal or a filter string.

Runs by role (`kit.role` tag) and what they hold:

- `train`: a parent run per `kit train` (tags `kit.folds`), `config.yaml`, after `kit predict --oof` also
  `postprocess_tuned.json`, and an MLflow Model (`model/`); one `train-fold` child per fold (tags
  `kit.fold`, `kit.parent_run_id`) holding `checkpoints/best.pt`, `checkpoints/last.pt`, `val_ids.txt`
  (the images that fold did not train on) and `config.yaml`.
- `predict`: one per `kit predict` (tags `kit.predict_kind` = test / validation / oof / input,
  `kit.train_run_id`), its per-image files laid out as `kit.inference.artifacts` describes. The ensemble's
  predictions are predict runs too, nested in their `ensemble` run (`kit.ensemble_run_id`).
- `ensemble`, `evaluate` (`kit.predict_run_id`), `submit`, `import` and `autolabel` (`kit.labels_source`;
  experiment `datasets`), `score`
  (experiment `scores`), `style-fit` (`kit.style`), `style-synth`.
- `study`: the parent run of a `kit tune` study (tags `kit.study`, `kit.study_storage`; the MLflow experiment, named after the
  study and tagged `kit.study` too, holds nothing else), with `space.yaml`, best-so-far metrics and, as
  each worker ends, `trials.csv` and the study's plots under `plots/`. One `trial` child per Optuna trial
  (tags `kit.trial` = its number, `kit.trial_state` = RUNNING / COMPLETE / PRUNED / FAIL, `kit.retry_of`),
  whose params are the sampled values; below it the trial's `train` run (with its folds) and its OOF
  `predict` run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.errors import RunNotFoundError
from kit.tracking import store


class Role:
    """Values of the `kit.role` tag."""

    TRAIN = "train"
    TRAIN_FOLD = "train-fold"
    PREDICT = "predict"
    ENSEMBLE = "ensemble"
    EVALUATE = "evaluate"
    SUBMIT = "submit"
    IMPORT = "import"
    STYLES = "styles"
    SCORE = "score"
    STYLE_FIT = "style-fit"
    STYLE_SYNTH = "style-synth"
    STUDY = "study"
    TRIAL = "trial"
    AUTOLABEL = "autolabel"


class Tag:
    """Tag names stages write and read (standard tags such as `kit.experiment` are in `store`)."""

    ROLE = "kit.role"
    FOLD = "kit.fold"
    FOLDS = "kit.folds"
    PARENT_RUN = "kit.parent_run_id"
    TRAIN_RUN = "kit.train_run_id"
    PREDICT_RUN = "kit.predict_run_id"
    PREDICT_KIND = "kit.predict_kind"
    FOLD_RUNS = "kit.fold_runs"
    MODEL_SOURCE = "kit.model_source"
    ENSEMBLE_RUN = "kit.ensemble_run_id"
    BASE_EXPERIMENTS = "kit.base_experiments"
    BASE_OOF_RUNS = "kit.base_oof_runs"
    BASE_APPLY_RUNS = "kit.base_apply_runs"
    BASE_PREDICT_RUNS = "kit.base_predict_runs"
    DATASET = "kit.dataset"
    DATASET_DIGEST = "kit.dataset_digest"
    STYLE = "kit.style"
    STYLES = "kit.styles"
    LABELS_SOURCE = "kit.labels_source"
    STUDY = "kit.study"
    TRIAL = "kit.trial"
    TRIAL_STATE = "kit.trial_state"
    RETRY_OF = "kit.retry_of"
    STUDY_STORAGE = "kit.study_storage"


# MLflow experiments of the stages that do not belong to one model experiment.
DATASETS_EXPERIMENT = "datasets"
SCORES_EXPERIMENT = "scores"
STYLE_EXPERIMENT = "style"

# Run-level artifact paths.
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = f"{CHECKPOINT_DIR}/best.pt"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.pt"
VAL_IDS_FILE = "val_ids.txt"
TUNED_POSTPROCESS_FILE = "postprocess_tuned.json"
SPACE_FILE = "space.yaml"  # a study's search space
TRIALS_FILE = "trials.csv"  # a study's trials, as Optuna holds them
STUDY_PLOTS_DIR = "plots"  # a study's pictures (PNG, and study.html)

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


def role_tags(role: str, **tags: str) -> dict[str, str]:
    """{kit.role: role, **tags}: the tags a stage starts its run with (keys are `Tag` names)."""
    return {Tag.ROLE: role, **tags}


def _client() -> Any:
    return store.configure().MlflowClient()


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
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
            f"no run {run_id} in {store.tracking_uri()}; `kit runs` lists the runs"
        ) from None


def check_finished(run: Any, what: str) -> Any:
    """`run` if it is FINISHED, else RunNotFoundError: a stage never reads a run that was interrupted
    (killed, failed, or still being written) or that belongs to an unfinished ensemble run."""
    status = run.info.status
    if status != "FINISHED":
        state = store.status_text(run)
        raise RunNotFoundError(
            f"{what} {run.info.run_id} is {state}, not finished: its outputs may be incomplete; "
            "run the stage again (or pick a finished run, see `kit runs`)"
        )
    parent = run.data.tags.get(Tag.ENSEMBLE_RUN)
    if parent and not _finished(parent):
        raise RunNotFoundError(
            f"{what} {run.info.run_id} belongs to ensemble run {parent}, which did not finish; "
            "run `kit ensemble` again"
        )
    return run


def _finished(run_id: str) -> bool:
    try:
        return get_run(run_id).info.status == "FINISHED"
    except RunNotFoundError:
        return False


def role_of(run: Any) -> str:
    """The `kit.role` of a run ("" for runs kit did not make)."""
    return run.data.tags.get(Tag.ROLE, "")


def find_role_runs(
    experiment: str, role: str, *, status: str | None = "FINISHED", max_results: int = 1000, **tags: str
) -> list[Any]:
    """Runs of `role` in MLflow experiment `experiment` with the given `Tag` values, newest first."""
    return store.find_runs(experiment, tags=role_tags(role, **tags), status=status, max_results=max_results)


def find_train_run(experiment: str, run_id: str | None = None) -> Any:
    """The train parent run `run_id`, or the newest finished one of MLflow experiment `experiment`."""
    if run_id is not None:
        run = get_run(run_id)
        role = role_of(run)
        if role != Role.TRAIN:
            hint = f"; use its parent {run.data.tags.get(Tag.PARENT_RUN)}" if role == Role.TRAIN_FOLD else ""
            raise RunNotFoundError(f"run {run_id} is a {role or 'non-kit'} run, not a train run{hint}")
        return check_finished(run, "train run")
    runs = find_role_runs(experiment, Role.TRAIN, max_results=1)
    if not runs:
        raise RunNotFoundError(
            f"experiment '{experiment}' has no finished train run in {store.tracking_uri()}; "
            f"train it first with `kit train --exp {experiment}`"
        )
    return runs[0]


def fold_runs(parent: Any, *, status: str | None = "FINISHED") -> list[Any]:
    """The fold child runs of train run `parent` (any status when `status` is None), newest first."""
    return store.find_runs_in(
        parent.info.experiment_id,
        tags=role_tags(Role.TRAIN_FOLD, **{Tag.PARENT_RUN: parent.info.run_id}),
        status=status,
    )


DOWNLOADS_DIR = Path("~/.cache/kit/artifacts")
"""Where artifacts of runs in a remote store are kept once fetched (`$KIT_ARTIFACTS_CACHE` overrides)."""


@quiet_downloads()
def local_artifact(run: Any, path: str = "") -> Path:
    """A finished run's artifact `path` (a file or folder; "" = all of them) on the local disk.

    A local store's artifacts are used where they lie. A remote store's are fetched once into
    `DOWNLOADS_DIR/<run id>/` and reused: MLflow's own download without a destination copies into a new
    temporary folder on every call and never removes it, which filled /tmp with checkpoints."""
    import tempfile
    from urllib.parse import urlparse

    import mlflow

    uri = f"{run.info.artifact_uri.rstrip('/')}/{path}" if path else run.info.artifact_uri
    if urlparse(uri).scheme in ("", "file") or os.path.isabs(uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))  # the path itself, no copy
    root = Path(os.environ.get("KIT_ARTIFACTS_CACHE", DOWNLOADS_DIR)).expanduser() / run.info.run_id
    target = root / (path or "artifacts")
    if not target.exists():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".partial-", dir=root) as partial:
            fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=partial))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                fetched.rename(target)
            except OSError:  # another process stored it first
                if not target.exists():
                    raise
    return target


@quiet_downloads()
def fold_models(train_run: Any) -> list[FoldModel]:
    """The finished folds of `train_run`, sorted by fold, with their checkpoints available locally."""
    import mlflow

    children = fold_runs(train_run)
    if not children:
        raise RunNotFoundError(
            f"train run {train_run.info.run_id} has no finished fold run; (re)train with `kit train`"
        )
    folds = []
    for child in children:
        run_id = child.info.run_id
        try:
            val_text = mlflow.artifacts.load_text(f"{child.info.artifact_uri}/{VAL_IDS_FILE}")
            checkpoint = local_artifact(child, BEST_CHECKPOINT)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise RunNotFoundError(
                f"fold run {run_id} of train run {train_run.info.run_id} lacks {VAL_IDS_FILE} or "
                f"{BEST_CHECKPOINT} ({exc})"
            ) from None
        val_ids = tuple(line.strip() for line in val_text.splitlines() if line.strip())
        folds.append(FoldModel(int(child.data.tags[Tag.FOLD]), run_id, val_ids, Path(checkpoint)))
    folds.sort(key=lambda f: f.fold)
    return folds


def load_json_artifact(run: Any, path: str) -> dict | None:
    """A JSON artifact of `run` as data, or None when the run has none at `path`."""
    import mlflow

    try:
        return json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{path}"))
    except Exception:  # MLflow raises several types for a missing artifact
        return None


def tuned_postprocess(train: Any) -> dict | None:
    """The record of the thresholds tuned for train run `train` by its newest `kit predict --oof`
    (`params`, `score`, `start_score`, `n_images`, `oof_predict_run`), or None when it was never tuned."""
    return load_json_artifact(train, TUNED_POSTPROCESS_FILE)


def tuned_thresholds(train: Any) -> dict | None:
    """The thresholds tuned out of fold for train run `train` (the `params` of `tuned_postprocess`), or
    None when it was never tuned."""
    record = tuned_postprocess(train)
    return dict(record["params"]) if record and "params" in record else None


@quiet_downloads()
def run_config(run: Any) -> dict[str, Any]:
    """The resolved experiment config a run logged (config.yaml), as plain data."""
    import mlflow
    import yaml

    try:
        return yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{CONFIG_FILE}")) or {}
    except Exception as exc:  # missing artifact
        raise RunNotFoundError(f"run {run.info.run_id} has no {CONFIG_FILE} ({exc})") from None


def find_predict_run(experiment: str, kinds: str | Sequence[str] = "test", run_id: str | None = None) -> Any:
    """The predict run `run_id`, or the newest finished predict run of one of `kinds` in `experiment`.

    The predict runs an ensemble run nests count only once their ensemble run has finished: a killed
    `kit ensemble` leaves finished OOF predictions inside an unfinished ensemble, which no stage reads."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if run_id is not None:
        run = get_run(run_id)
        if role_of(run) != Role.PREDICT:
            raise RunNotFoundError(f"run {run_id} is not a predict run ({Tag.ROLE}={role_of(run)})")
        return check_finished(run, "predict run")
    runs = [
        run
        for kind in kinds
        for run in find_role_runs(experiment, Role.PREDICT, max_results=20, **{Tag.PREDICT_KIND: kind})
        if not run.data.tags.get(Tag.ENSEMBLE_RUN) or _finished(run.data.tags[Tag.ENSEMBLE_RUN])
    ]
    if not runs:
        how = " or ".join(
            f"`kit predict --exp {experiment} {_PREDICT_HINTS[k]}`" for k in kinds if k in _PREDICT_HINTS
        )
        raise RunNotFoundError(
            f"experiment '{experiment}' has no finished predict run of kind {'/'.join(kinds)}; run {how} first"
        )
    return max(runs, key=lambda r: r.info.start_time)


def run_folder(run: Any) -> Path:
    """The local folder of a run's artifacts (fetched once when the store is remote)."""
    try:
        return local_artifact(run)
    except Exception as exc:  # unreachable store or deleted artifacts
        raise RunNotFoundError(f"cannot read the artifacts of run {run.info.run_id} ({exc})") from None


def log_artifact_to(run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Add a file to the artifacts of run `run_id` (which may be finished)."""
    _client().log_artifact(run_id, str(local_path), artifact_path)
