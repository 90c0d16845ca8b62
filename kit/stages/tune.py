"""The MLflow record of a `kit tune` study: its parent run, one child run per trial, best-so-far metrics,
and at the end of each worker the trials table and the study's plots. Run layout: `kit.tracking.schema`
(roles `study` and `trial`). The search itself runs in `kit.workflows.tune`.

A trial run ends FINISHED (complete), KILLED (pruned) or FAILED (an error, or a worker that died: the
workflow calls `fail_trial_runs` for a trial Optuna or kit's liveness declared dead, so no trial run stays
RUNNING forever); its `kit.trial_state` tag says which in Optuna's words.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kit import tracking
from kit.errors import RunNotFoundError
from kit.tracking.schema import (
    SPACE_FILE,
    STUDY_PLOTS_DIR,
    TRIALS_FILE,
    Role,
    Tag,
    get_run,
    role_tags,
)

log = logging.getLogger(__name__)

OBJECTIVE_METRIC = "oof_map_tuned"
"""What a trial maximises: the OOF mAP after the tuned post-processing (a metric of its predict run)."""


def create_study_run(
    experiment: str, study: str, *, command: str, params: Mapping[str, Any], space_yaml: str, storage: str
) -> str:
    """Create the study's parent run in MLflow experiment `experiment` (tagged as a study's experiment)
    with the study's settings as params and its space as `space.yaml`; the run id."""
    import mlflow

    tags = role_tags(Role.STUDY, **{Tag.STUDY: study, Tag.STUDY_STORAGE: storage})
    with tracking.start_run(experiment, command, run_name=study, tags=tags) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_text(space_yaml, SPACE_FILE)
    client = tracking.configure().MlflowClient()
    client.set_experiment_tag(run.info.experiment_id, Tag.STUDY, study)
    return run.info.run_id


@contextlib.contextmanager
def study_run(experiment: str, run_id: str, command: str) -> Iterator[Any]:
    """A worker's time in the study: the parent run resumed (RUNNING, with this process's liveness tags)
    until the worker ends."""
    with tracking.start_run(experiment, command, run_id=run_id) as run:
        yield run


@contextlib.contextmanager
def trial_run(
    experiment: str,
    parent_run_id: str,
    study: str,
    number: int,
    params: Mapping[str, Any],
    *,
    command: str,
    retry_of: int | None = None,
) -> Iterator[Any]:
    """The child run of trial `number`, holding its sampled values as params; it ends FINISHED, FAILED
    on an exception, KILLED when pruned (`StopRun`)."""
    import mlflow

    tags = {Tag.STUDY: study, Tag.TRIAL: str(number), Tag.TRIAL_STATE: "RUNNING"}
    if retry_of is not None:
        tags[Tag.RETRY_OF] = str(retry_of)
    with tracking.start_run(
        experiment,
        command,
        run_name=f"{study}-trial{number}",
        tags=role_tags(Role.TRIAL, **tags),
        parent_run_id=parent_run_id,
    ) as run:
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        yield run


def end_trial(run_id: str, state: str, metrics: Mapping[str, float] | None = None) -> None:
    """Record how trial run `run_id` ended: its `kit.trial_state` and final metrics."""
    client = tracking.configure().MlflowClient()
    client.set_tag(run_id, Tag.TRIAL_STATE, state)
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, float(value))


def objective_value(predict_run_id: str) -> float:
    """The objective of a trial from its OOF predict run (`OBJECTIVE_METRIC`)."""
    metrics = get_run(predict_run_id).data.metrics
    if OBJECTIVE_METRIC not in metrics:
        raise RunNotFoundError(
            f"predict run {predict_run_id} has no {OBJECTIVE_METRIC}: the OOF post-processing was not tuned"
        )
    return float(metrics[OBJECTIVE_METRIC])


def fail_trial_runs(run_id: str) -> list[str]:
    """Mark trial run `run_id` FAILED (`kit.trial_state` FAIL) with every run below it that is still
    RUNNING (its train, fold and predict runs); the ids changed. For a trial whose worker died."""
    client = tracking.configure().MlflowClient()
    try:
        trial = get_run(run_id)
    except RunNotFoundError as exc:  # the store lost it
        log.warning("%s", exc)
        return []
    changed = []
    for run in [trial, *_descendants(trial)]:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="FAILED")
            changed.append(run.info.run_id)
    client.set_tag(run_id, Tag.TRIAL_STATE, "FAIL")
    return changed


def _descendants(run: Any) -> list[Any]:
    """Every run nested below `run` in its experiment (through `kit.parent_run_id`)."""
    out, frontier = [], [run.info.run_id]
    while frontier:
        parent = frontier.pop()
        children = tracking.find_runs_in(run.info.experiment_id, tags={Tag.PARENT_RUN: parent}, status=None)
        out.extend(children)
        frontier.extend(c.info.run_id for c in children)
    return out


def is_stale_run(run_id: str) -> bool:
    """Whether run `run_id` is RUNNING but its process is gone (`kit.tracking.is_stale`)."""
    try:
        return tracking.is_stale(get_run(run_id))
    except RunNotFoundError:  # a run that cannot be read is not known to be stale
        return False


def log_progress(
    parent_run_id: str, number: int, value: float | None, best: float | None, counts: Mapping[str, int]
) -> None:
    """Best-so-far metrics on the parent after trial `number`: its value, the best value, trial counts."""
    client = tracking.configure().MlflowClient()
    metrics = {f"trials_{state.lower()}": n for state, n in counts.items()}
    if value is not None:
        metrics["trial_value"] = value
    if best is not None:
        metrics["best_value"] = best
    for key, v in metrics.items():
        client.log_metric(parent_run_id, key, float(v), step=number)


def log_summary(parent_run_id: str, study: Any) -> list[str]:
    """Log the study's trials table and plots (`kit.search.plots`) to the parent run, replacing those of
    an earlier worker; the artifact paths logged."""
    from kit.fileio import atomic_write_text
    from kit.search.plots import write_study_plots

    client = tracking.configure().MlflowClient()
    with tempfile.TemporaryDirectory(prefix="kit-study-") as tmp:
        folder = Path(tmp)
        table = study.trials_dataframe()
        atomic_write_text(folder / TRIALS_FILE, table.to_csv(index=False))
        client.log_artifact(parent_run_id, str(folder / TRIALS_FILE))
        logged = [TRIALS_FILE]
        for path in write_study_plots(study, folder / STUDY_PLOTS_DIR):
            client.log_artifact(parent_run_id, str(path), STUDY_PLOTS_DIR)
            logged.append(f"{STUDY_PLOTS_DIR}/{path.name}")
    return logged
