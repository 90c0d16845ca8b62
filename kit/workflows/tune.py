"""`kit tune` as a library call: an Optuna study over an experiment's `--set` keys, shared by any number of
workers; each trial is trained by the train stage and scored by the predict stage, and the tune stage
records the study in MLflow.

One trial: sample the space (`kit.search.space`) → the trial's config (the study's experiment with the
sampled values and its share of the per-trial minutes as `training.max_minutes`, logged to the study's
MLflow experiment, without an MLflow Model) → its child run under the study's parent run →
`train_experiment` on the study's folds, each validated epoch's val mAP reported to the median pruner →
`predict_experiment(oof=True)`, which tunes the post-processing → the OOF mAP after tuning
(`oof_map_tuned`) is the trial's value.

Workers: the first creates the study (atomic in the storage), its parent run, and stores in the study the
settings every trial shares (the resolved experiment config, the space, folds, per-trial minutes) and the
parent's run id; any other worker (`--study NAME` on any machine that reaches the storage and the tracking
store) reads them and works under the same parent. Optuna hands each trial to one worker. A worker killed
with SIGKILL leaves its trial RUNNING until another worker, as it starts or between two trials, sees it
dead: on the same host at once (the trial run's process is gone: kit's run liveness), elsewhere once its
heartbeat is `GRACE_SECONDS` old (Optuna's, on database storages; the trial run's MLflow heartbeat, on a
journal file). The trial then becomes FAIL, its MLflow runs FAILED, and it is queued once more with the
same values. Re-running the command resumes the study.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kit import tracking
from kit.config import ExperimentConfig, config_from_dict, load_experiment, parse_override, set_values
from kit.errors import ConfigError, RunNotFoundError
from kit.search.space import SearchSpace, load_space, parse_space
from kit.search.storage import GRACE_SECONDS, HEARTBEAT_SECONDS, default_storage, open_storage, redacted
from kit.search.study import (
    PARENT_ATTR,
    RETRY_ATTR,
    RUN_ATTR,
    SETTINGS_ATTR,
    EpochReporter,
    StopWhen,
    TrialStopped,
    load_existing_study,
    make_pruner,
    make_sampler,
    open_study,
    study_names,
    trial_counts,
    trials_left,
)
from kit.stages import tune as record

log = logging.getLogger(__name__)

JOIN_WAIT_SECONDS = 60.0
"""How long a joining worker waits for the creator to store the study's settings and parent run."""
MAX_RETRIES = 1
"""A trial whose worker died is queued again this many times with the same values."""
MAX_FAILURES_IN_A_ROW = 3
"""A worker stops after this many consecutive failed trials (a bug, not a bad sample)."""
TRIAL_ERRORS = (FloatingPointError, RuntimeError, ConfigError)
"""What fails one trial and lets the study go on: a diverging loss, out of memory, an invalid combination
of sampled values. Anything else stops the worker."""


@dataclass(frozen=True)
class StudySettings:
    """What every trial of a study shares, stored in the study so that any worker can join it."""

    exp: str
    overrides: list[str]
    config: dict[str, Any]
    space: dict[str, Any]
    space_file: str
    folds: list[int]
    trial_minutes: float | None

    def base_config(self) -> ExperimentConfig:
        return config_from_dict(self.config, f"study config of {self.exp}")

    def search_space(self, study: str) -> SearchSpace:
        return parse_space(self.space, f"{self.space_file} (space of study {study})")

    def fixed_values(self) -> dict[str, Any]:
        """`section.key` → value of the `--set` overrides and the per-fold budget every trial trains with."""
        values = {".".join(parts): value for parts, value in map(parse_override, self.overrides)}
        if self.trial_minutes is not None:
            values["training.max_minutes"] = round(self.trial_minutes / len(self.folds), 6)
        return values


@dataclass
class TuneOutcome:
    """Where a worker left its study: trial counts by state and the best trial so far."""

    study: str
    experiment: str
    parent_run_id: str
    storage: str
    counts: dict[str, int]
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    stopped_by_failures: bool = False


@dataclass(frozen=True)
class BestOutcome:
    """The experiment file `write_best` wrote: which trial of which study, its value and the values set."""

    path: Path
    study: str
    number: int
    value: float
    values: dict[str, Any]


def tune_experiment(
    *,
    study: str | None = None,
    exp: str | None = None,
    space: str | Path | None = None,
    overrides: list[str] | None = None,
    folds: list[int] | str | None = None,
    trial_minutes: float | None = None,
    n_trials: int | None = None,
    minutes: float | None = None,
    storage: str | None = None,
    command: str = "tune",
    progress: bool = True,
    heartbeat_interval: int = HEARTBEAT_SECONDS,
    grace_period: int = GRACE_SECONDS,
) -> TuneOutcome:
    """Run trials of study `study` (default `<experiment>-tune`) until it holds `n_trials` finished
    trials and/or `minutes` have passed; see the module docstring. A new study needs `exp` and `space`
    (with `overrides`, `folds` (default: the experiment's first fold) and `trial_minutes`); joining an
    existing one needs only its name, and settings given for it must be its own."""
    if n_trials is None and minutes is None:
        raise ConfigError("give --trials N (finished trials the study should hold) and/or --minutes M")
    if exp is None and study is None:
        raise ConfigError("give --exp E --space SPACE.yaml to start a study, or --study NAME to join one")
    wanted = _new_settings(exp, space, overrides or [], folds, trial_minutes) if exp is not None else None
    name = study or f"{wanted.base_config().name}-tune"
    tracking.configure()  # creates the local store folder the default storage lives in
    url = storage or default_storage(tracking.tracking_uri())
    opened = open_storage(
        url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, on_stale=_trial_died
    )
    settings, parent_id, optuna_study = _join(opened, name, url, wanted, command)
    space_ = settings.search_space(name)
    base = settings.base_config()
    _fail_dead_trials(optuna_study)
    outcome = TuneOutcome(name, name, parent_id, redacted(url), {})
    if trials_left(optuna_study, n_trials) == 0:
        log.info("study %s already holds %s finished or running trials", name, n_trials)
    else:
        objective = _Objective(name, parent_id, base, space_, settings, command, progress)
        stop = StopWhen(n_trials, time.monotonic() + minutes * 60 if minutes is not None else None)
        failures = _FailureGuard()
        with record.study_run(name, parent_id, command):
            optuna_study.optimize(
                objective,
                callbacks=[stop, failures, _Progress(parent_id), _sweep],
                catch=TRIAL_ERRORS,
                gc_after_trial=True,
            )
            record.log_summary(parent_id, optuna_study)
        outcome.stopped_by_failures = failures.tripped
    outcome.counts = trial_counts(optuna_study)
    best = _best_trial(optuna_study)
    if best is not None:
        outcome.best_number, outcome.best_value, outcome.best_params = best.number, best.value, best.params
    return outcome


def write_best(study: str, path: str | Path, *, storage: str | None = None) -> BestOutcome:
    """Write the best trial of `study` as an experiment file at `path` that inherits from the study's
    experiment (`base:`) and sets the study's fixed values and the winner's parameters; it loads (checked
    before the file is written) and trains like any other experiment."""
    from kit.fileio import atomic_path
    from kit.search.tuned import tuned_experiment_yaml

    tracking.configure()  # creates the local store folder the default storage lives in
    url = storage or default_storage(tracking.tracking_uri())
    optuna_study = _existing(open_storage(url), study, url)
    settings = _settings_of(optuna_study)
    best = _best_trial(optuna_study)
    if best is None or settings is None:
        raise RunNotFoundError(f"study '{study}' has no complete trial yet; run `kit tune --study {study}`")
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--write {path}: an experiment file must end in .yaml")
    values = {**settings.fixed_values(), **best.params}
    n_trials = len(optuna_study.get_trials(deepcopy=False))
    header = [
        f"Tuned by `kit tune`: study {study}, trial {best.number} of {n_trials}, OOF mAP after tuned "
        f"post-processing {best.value:.4f} on fold(s) {','.join(map(str, settings.folds))}.",
        f"The trial's MLflow run: {best.user_attrs.get(RUN_ATTR, '?')}.",
    ]
    text = tuned_experiment_yaml(_base_reference(settings.exp, path), values, header)
    expected = set_values(settings.config, best.params)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        written = load_experiment(tmp)  # fails here, before the rename, if it does not load
    changed = _first_difference(expected, {**written.to_dict(), "name": expected.get("name")})
    if changed:
        log.warning(
            "%s differs from trial %d's config at %s: its base experiment changed since the study began",
            path,
            best.number,
            changed,
        )
    return BestOutcome(path, study, best.number, float(best.value), values)


# -- joining --------------------------------------------------------------------------------------------


def _new_settings(
    exp: str,
    space: str | Path | None,
    overrides: list[str],
    folds: list[int] | str | None,
    trial_minutes: float | None,
) -> StudySettings:
    import yaml

    from kit.data.dataset import open_dataset
    from kit.stages.train import resolve_folds

    if space is None:
        raise ConfigError("a new study needs --space SPACE.yaml (the values to search)")
    cfg = load_experiment(exp, overrides)
    if not cfg.postprocess.tuned:
        raise ConfigError(
            f"{exp}: kit tune maximises the OOF mAP after the tuned post-processing; "
            "leave postprocess.tuned true"
        )
    searched = load_space(space, cfg)
    _check_model_arguments(searched, cfg)
    if trial_minutes is not None and any(p.key == "training.max_minutes" for p in searched.params):
        raise ConfigError(f"{space}: training.max_minutes is searched; leave out --trial-minutes")
    chosen = folds if folds is not None else cfg.training.folds[:1]
    resolved = resolve_folds(open_dataset(cfg.data.root), chosen, cfg)
    return StudySettings(
        exp=str(exp),
        overrides=list(overrides),
        config=cfg.to_dict(),
        space=yaml.safe_load(Path(space).read_text()),
        space_file=str(space),
        folds=resolved,
        trial_minutes=trial_minutes,
    )


def _check_model_arguments(space: SearchSpace, cfg: ExperimentConfig) -> None:
    """ConfigError for a searched `model.params.X` the experiment's model does not take (the config
    accepts any key there; the model builder would refuse it in every trial)."""
    from kit.models.registry import model_arguments

    takes = model_arguments(cfg.model.name)
    for param in space.params:
        parts = param.key.split(".")
        if parts[:2] == ["model", "params"] and len(parts) > 2 and parts[2] not in takes:
            raise ConfigError(
                f"{space.source}: {param.key}: model '{cfg.model.name}' takes no argument '{parts[2]}' "
                f"(it takes: {', '.join(takes)})"
            )


def _join(
    storage: Any, name: str, url: str, wanted: StudySettings | None, command: str
) -> tuple[StudySettings, str, Any]:
    """(settings, parent run id, study with this worker's sampler and pruner): the study created (with its
    parent run) when it does not exist and `wanted` is given, else joined."""
    existing = load_existing_study(storage, name)
    if existing is None and wanted is None:
        known = ", ".join(study_names(storage)) or "none"
        raise ConfigError(
            f"no study '{name}' in {redacted(url)} (studies there: {known}); start it with "
            f"--exp E --space SPACE.yaml"
        )
    if existing is None:
        space_ = wanted.search_space(name)
        created, is_creator = open_study(
            storage, name, pruner=make_pruner(space_.pruner), sampler=make_sampler()
        )
        if is_creator:
            created.set_user_attr(SETTINGS_ATTR, asdict(wanted))
            parent = record.create_study_run(
                name,
                name,
                command=command,
                params=_study_params(wanted),
                space_yaml=Path(wanted.space_file).read_text(),
                storage=redacted(url),
            )
            created.set_user_attr(PARENT_ATTR, parent)
            return wanted, parent, created
        existing = created
    settings, parent = _wait_for_creator(existing, name)
    if wanted is not None and (difference := _settings_difference(settings, wanted)):
        raise ConfigError(
            f"study '{name}' already searches other settings ({difference}); leave out --exp, --space, --set, "
            "--folds and --trial-minutes to join it, or start another with --study NEW_NAME"
        )
    import optuna

    space_ = settings.search_space(name)
    joined = optuna.load_study(
        study_name=name, storage=storage, pruner=make_pruner(space_.pruner), sampler=make_sampler()
    )
    return settings, parent, joined


def _wait_for_creator(study: Any, name: str) -> tuple[StudySettings, str]:
    """The settings and parent run id the study's creator stores right after creating it."""
    deadline = time.monotonic() + JOIN_WAIT_SECONDS
    while True:
        settings, parent = _settings_of(study), study.user_attrs.get(PARENT_ATTR)
        if settings is not None and parent:
            return settings, parent
        if time.monotonic() > deadline:
            raise RunNotFoundError(
                f"study '{name}' has no settings or parent run after {JOIN_WAIT_SECONDS:.0f} s: the worker that "
                "created it died first; delete the study (optuna delete-study) and start it again"
            )
        time.sleep(0.5)


def _settings_of(study: Any) -> StudySettings | None:
    data = study.user_attrs.get(SETTINGS_ATTR)
    return StudySettings(**data) if data else None


def _settings_difference(have: StudySettings, wanted: StudySettings) -> str:
    for key in ("config", "space", "folds", "trial_minutes"):
        a, b = getattr(have, key), getattr(wanted, key)
        if a != b:
            inner = _first_difference(a, b) if isinstance(a, dict) and isinstance(b, dict) else ""
            return f"{key}{': ' + inner if inner else ''}"
    return ""


def _first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    """The first dotted key whose value differs between two nested dicts ("" when equal)."""
    for key in sorted(set(a) | set(b), key=str):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            inner = _first_difference(left, right, f"{prefix}{key}.")
            if inner:
                return inner
        elif left != right:
            return f"{prefix}{key} is {left!r} there, {right!r} here"
    return ""


def _study_params(settings: StudySettings) -> dict[str, Any]:
    return {
        "exp": settings.exp,
        "overrides": " ".join(settings.overrides),
        "folds": ",".join(map(str, settings.folds)),
        "trial_minutes": settings.trial_minutes,
        "space_file": settings.space_file,
    }


def _base_reference(exp: str, written: Path) -> str:
    """How the tuned file names its base: the experiment name as given, or a path relative to it."""
    from kit.config import resolve_experiment_path

    base = resolve_experiment_path(exp)
    if str(exp) == base.stem:
        return exp
    return os.path.relpath(base.resolve(), written.resolve().parent)


def _existing(storage: Any, name: str, url: str) -> Any:
    study = load_existing_study(storage, name)
    if study is None:
        known = ", ".join(study_names(storage)) or "none"
        raise RunNotFoundError(f"no study '{name}' in {redacted(url)} (studies there: {known})")
    return study


def _best_trial(study: Any) -> Any | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


# -- trials ---------------------------------------------------------------------------------------------


class _Objective:
    """One trial: sample, train, predict out of fold, return the OOF mAP after tuning."""

    def __init__(
        self,
        study: str,
        parent_run_id: str,
        base: ExperimentConfig,
        space: SearchSpace,
        settings: StudySettings,
        command: str,
        progress: bool,
    ) -> None:
        self.study, self.parent_run_id, self.base, self.space = study, parent_run_id, base, space
        self.settings, self.command, self.progress = settings, command, progress

    def __call__(self, trial: Any) -> float:
        import optuna

        try:
            return self._run(trial)
        except TrialStopped as stopped:  # its runs ended KILLED on the way out
            raise optuna.TrialPruned(str(stopped)) from None

    def _run(self, trial: Any) -> float:
        from kit.stages.predict import predict_experiment
        from kit.stages.train import train_experiment

        values = self.space.sample(trial)
        with record.trial_run(
            self.study,
            self.parent_run_id,
            self.study,
            trial.number,
            values,
            command=self.command,
            retry_of=trial.user_attrs.get(RETRY_ATTR),
        ) as run:
            run_id = run.info.run_id
            trial.set_user_attr(RUN_ATTR, run_id)
            reporter = EpochReporter(trial, self.base.training.epochs)
            try:
                cfg = self.trial_config(values)
                reporter.epochs_per_fold = cfg.training.epochs
                train = train_experiment(
                    cfg,
                    folds=self.settings.folds,
                    command=self.command,
                    progress=self.progress,
                    parent_run_id=run_id,
                    on_epoch=reporter,
                )
                predicted = predict_experiment(
                    cfg,
                    oof=True,
                    train_run_id=train.parent_run_id,
                    progress=self.progress,
                    command=self.command,
                    parent_run_id=run_id,
                )
                value = record.objective_value(predicted.run_id)
            except TrialStopped:
                record.end_trial(run_id, "PRUNED", {"pruned_at_step": float(reporter.pruned_at or 0)})
                raise
            except BaseException:
                record.end_trial(run_id, "FAIL")
                raise
            val_maps = train.val_maps
            metrics = {record.OBJECTIVE_METRIC: value}
            if val_maps:
                metrics["cv_val_map_mean"] = sum(val_maps) / len(val_maps)
            record.end_trial(run_id, "COMPLETE", metrics)
        return value

    def trial_config(self, values: dict[str, Any]) -> ExperimentConfig:
        """The study's experiment with this trial's values, its budget, in the study's MLflow experiment."""
        fixed = {
            "tracking.experiment": self.study,
            "tracking.log_model": False,  # a trial's model is never served; the winner is trained again
        }
        if self.settings.trial_minutes is not None:
            fixed["training.max_minutes"] = self.settings.fixed_values()["training.max_minutes"]
        raw = set_values(self.base.to_dict(), {**values, **fixed})
        return config_from_dict(raw, f"trial values {values} of study {self.study}")


class _Progress:
    """After each trial: best-so-far metrics on the study's parent run."""

    def __init__(self, parent_run_id: str) -> None:
        self.parent_run_id = parent_run_id

    def __call__(self, study: Any, trial: Any) -> None:
        best = _best_trial(study)
        record.log_progress(
            self.parent_run_id,
            trial.number,
            trial.value if trial.value is not None else None,
            best.value if best is not None else None,
            trial_counts(study),
        )


class _FailureGuard:
    """Stops this worker after `MAX_FAILURES_IN_A_ROW` failed trials in a row."""

    def __init__(self) -> None:
        self.in_a_row = 0
        self.tripped = False

    def __call__(self, study: Any, trial: Any) -> None:
        self.in_a_row = self.in_a_row + 1 if trial.state.name == "FAIL" else 0
        if self.in_a_row >= MAX_FAILURES_IN_A_ROW:
            self.tripped = True
            study.stop()


# -- dead workers ---------------------------------------------------------------------------------------


def _trial_died(study: Any, trial: Any) -> None:
    """A trial whose worker died (Optuna set it FAIL): its MLflow runs FAILED, and queued once more."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id:
        record.fail_trial_runs(run_id)
    log.warning("trial %d of study %s: its worker died; queued again", trial.number, study.study_name)
    retry = copy.deepcopy(trial)  # the queued copy takes the user attributes: a retry has no run yet
    attrs = {k: v for k, v in retry.user_attrs.items() if k != RUN_ATTR}
    retry.user_attrs = {**attrs, RETRY_ATTR: trial.system_attrs.get("failed_trial", trial.number)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, retry)


def _sweep(study: Any, trial: Any) -> None:
    """Between two trials: fail the trials of workers that died meanwhile (`_fail_dead_trials`)."""
    _fail_dead_trials(study)


def _fail_dead_trials(study: Any) -> None:
    """Fail the running trials whose worker is dead: by Optuna's heartbeat (RDB storages), and by the
    trial run's liveness (its process gone on this host, or its MLflow heartbeat old elsewhere)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # calls _trial_died through the storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_id = trial.user_attrs.get(RUN_ATTR)
        if not run_id or not record.is_stale_run(run_id):
            continue
        try:  # Optuna has no public call to fail another worker's trial; its own heartbeat uses this one
            failed = study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        if failed:
            _trial_died(study, copy.deepcopy(study._storage.get_trial(trial._trial_id)))
