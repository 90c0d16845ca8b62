"""An Optuna study for `kit tune`: created once, joined by any number of workers; its sampler and pruner;
the per-epoch reports that let the pruner stop a lagging trial; when a worker stops starting trials.

Sampler: TPE with the constant liar (running trials count as bad guesses, so parallel workers do not all
try the same region) after 5 random trials. Pruner: the median rule (a trial stops when its validation
mAP at an epoch is below the median of earlier trials at that epoch). Median rather than Hyperband: a
day's search is tens of trials; Hyperband splits those over brackets, each comparing only a handful,
while the median rule compares every trial with all before it and needs no resource bounds, which a
time-budgeted schedule (`training.max_minutes`) does not have.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from kit.errors import StopRun
from kit.search.space import PrunerSpec

RUN_ATTR = "mlflow_run_id"
"""Trial user attribute: the id of the trial's MLflow run."""
RETRY_ATTR = "retry_of"
"""Trial user attribute of a trial queued again after its worker died: the number of the first try."""
PARENT_ATTR = "mlflow_parent_run_id"
"""Study user attribute: the id of the study's MLflow parent run."""
SETTINGS_ATTR = "kit_settings"
"""Study user attribute: what every trial shares (experiment, `--set`, folds, trial minutes, space)."""
TPE_STARTUP_TRIALS = 5


class TrialStopped(StopRun):
    """The pruner stopped the trial at an epoch (the MLflow runs it interrupts end KILLED)."""


def make_pruner(spec: PrunerSpec) -> Any:
    """Optuna's median pruner with the space's settings, or one that never prunes."""
    import optuna

    if not spec.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.n_startup_trials,
        n_warmup_steps=spec.n_warmup_steps,
        interval_steps=spec.interval_steps,
    )


def make_sampler(seed: int | None = None) -> Any:
    """TPE with the constant liar (see the module docstring)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
        return optuna.samplers.TPESampler(n_startup_trials=TPE_STARTUP_TRIALS, constant_liar=True, seed=seed)


def open_study(storage: Any, name: str, *, pruner: Any, sampler: Any) -> tuple[Any, bool]:
    """(the study `name` in `storage`, whether this call created it). Creation is atomic in the
    storage, so of several workers starting together exactly one is the creator."""
    import optuna

    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", pruner=pruner, sampler=sampler
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler), False


def load_existing_study(storage: Any, name: str) -> Any | None:
    """The study `name` in `storage`, or None when there is none."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def study_names(storage: Any) -> list[str]:
    """Names of the studies in `storage`."""
    return [s.study_name for s in storage.get_all_studies()]


class EpochReporter:
    """The train stage's per-epoch hook for one trial: reports each validated epoch's `val_map` to the
    trial at step = the fold's position (in the order trained) × epochs per fold + epoch, so the folds
    of every trial line up, and raises `TrialStopped` when the pruner says the trial lags."""

    def __init__(self, trial: Any, epochs_per_fold: int) -> None:
        self.trial, self.epochs_per_fold = trial, epochs_per_fold
        self.positions: dict[int, int] = {}
        self.pruned_at: int | None = None

    def __call__(self, fold: int, record: Mapping[str, float], epoch: int) -> None:
        value = record.get("val_map")
        if value is None or not math.isfinite(value):
            return
        position = self.positions.setdefault(fold, len(self.positions))
        step = position * self.epochs_per_fold + epoch
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.pruned_at = step
            raise TrialStopped(f"trial {self.trial.number} pruned at step {step} (val mAP {value:.4f})")


def trial_counts(study: Any) -> dict[str, int]:
    """Trials of the study by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def trials_left(study: Any, n_trials: int | None) -> int | None:
    """How many more trials the study needs to hold `n_trials` finished (complete or pruned) ones,
    counting those running now in any worker; None when there is no limit."""
    if n_trials is None:
        return None
    counts = trial_counts(study)
    return max(0, n_trials - counts.get("COMPLETE", 0) - counts.get("PRUNED", 0) - counts.get("RUNNING", 0))


class StopWhen:
    """An `optimize` callback that stops this worker once the study needs no more trials
    (`trials_left` is 0) or once the next trial, estimated from this worker's trials so far, would end
    after `deadline` (a `clock()` time)."""

    def __init__(
        self, n_trials: int | None, deadline: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.n_trials, self.deadline, self.clock = n_trials, deadline, clock
        self.started = clock()
        self.finished = 0

    def __call__(self, study: Any, trial: Any) -> None:
        self.finished += 1
        if self.n_trials is not None and trials_left(study, self.n_trials) == 0:
            study.stop()
        elif self.deadline is not None:
            now = self.clock()
            if now + (now - self.started) / self.finished > self.deadline:
                study.stop()
