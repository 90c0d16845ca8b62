"""The search building block (`kit.search`), without training: space files and their errors, sampling with
conditions, median pruning of a lagging trial (a constructed objective), when a worker stops, where a
study is stored, the tuned experiment file."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from kit.cli import app
from kit.config import config_from_dict, load_experiment
from kit.errors import ConfigError
from kit.search.space import PrunerSpec, load_space
from kit.search.storage import default_storage, redacted
from kit.search.study import EpochReporter, StopWhen, TrialStopped, make_pruner, trials_left
from kit.search.tuned import tuned_experiment_yaml

REPO = Path(__file__).resolve().parents[1]
GOOD = {
    "params": {
        "training.lr": {"float": ["1e-4", 1.0e-2], "log": True},
        "data.crop_size": {"int": [64, 128], "step": 32},
        "training.schedule": {"choice": ["cosine", "step"]},
        "training.step_size": {"int": [2, 6], "when": {"training.schedule": "step"}},
    },
    "pruner": {"n_startup_trials": 2, "n_warmup_steps": 1},
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space_file(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def test_a_space_file_parses_in_order_and_samples_conditions(tmp_path) -> None:
    space = load_space(
        _space_file(tmp_path, GOOD), load_experiment("unet_tiny", directory=REPO / "experiments")
    )
    assert [p.key for p in space.params] == [
        "training.lr",
        "data.crop_size",
        "training.schedule",
        "training.step_size",
    ]
    lr, crop, schedule, step_size = space.params
    assert (lr.kind, lr.low, lr.high, lr.log) == (
        "float",
        1e-4,
        1e-2,
        True,
    )  # "1e-4" (YAML text) read as a number
    assert (crop.kind, crop.low, crop.high, crop.step) == ("int", 64, 128, 32)
    assert schedule.choices == ("cosine", "step") and step_size.when == {"training.schedule": ("step",)}
    assert space.pruner == PrunerSpec(True, n_startup_trials=2, n_warmup_steps=1)
    fixed = {"training.lr": 3e-3, "data.crop_size": 96, "training.schedule": "step", "training.step_size": 4}
    assert space.sample(optuna.trial.FixedTrial(fixed)) == fixed
    cosine = {**fixed, "training.schedule": "cosine"}
    assert space.sample(optuna.trial.FixedTrial(cosine)) == {
        k: v for k, v in cosine.items() if k != "training.step_size"
    }
    # sampled by Optuna: every value within its range, the conditional one exactly when its condition holds
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        values = space.sample(trial)
        assert 1e-4 <= values["training.lr"] <= 1e-2 and values["data.crop_size"] in (64, 96, 128)
        assert ("training.step_size" in values) == (values["training.schedule"] == "step")
        seen.add(values["training.schedule"])
        study.tell(trial, 0.0)
    assert seen == {"cosine", "step"}


@pytest.mark.parametrize(
    "data, message",
    [
        ("params: [unclosed", r"not valid YAML \(line 1"),
        ({"params": {}}, r"`params:` must map at least one"),
        ({"params": {"training.lr": [1, 2]}}, r"params.training.lr: expected a mapping"),
        ({"params": {"training.lr": {"float": [1, 2], "int": [1, 2]}}}, r"give exactly one of"),
        ({"params": {"training.lr": {"float": [2, 1]}}}, r"low must be below high, got \[2.0, 1.0\]"),
        ({"params": {"training.lr": {"float": ["a", 1]}}}, r"training.lr: float: expected a number, got 'a'"),
        ({"params": {"training.lr": {"float": [0, 1], "log": True}}}, r"a log range needs a positive low"),
        ({"params": {"training.epochs": {"int": [1.5, 3]}}}, r"expected a whole number, got 1.5"),
        ({"params": {"training.lr": {"float": [0.1, 1], "stride": 2}}}, r"unknown field\(s\) \['stride'\]"),
        ({"params": {"model.params": {"choice": [[1, 2], [3]]}}}, r"Optuna stores no lists"),
        (
            {"params": {"training.lr": {"float": [0.1, 1], "when": {"training.schedule": "step"}}}},
            r"not a categorical parameter above it",
        ),
        ({"params": {"tracking.experiment": {"choice": ["a", "b"]}}}, r"cannot be searched"),
        (
            {"params": {"training.lr": {"float": [0.1, 1]}}, "sampler": "tpe"},
            r"unknown top-level key\(s\) \['sampler'\]",
        ),
        (
            {"params": {"training.lr": {"float": [0.1, 1]}}, "pruner": {"patience": 3}},
            r"pruner: unknown setting",
        ),
        (
            {"params": {"training.lrr": {"float": [0.1, 1]}}},
            r"training.lrr=0.1: invalid config: unknown key 'training.lrr' \(did you mean 'lr'\?\)",
        ),
        (
            {"params": {"data.crop_size": {"int": [16, 64]}}},
            r"data.crop_size=16: invalid config: data.crop_size: Input should be greater than or equal to 32",
        ),
    ],
)
def test_a_bad_space_file_is_one_line_naming_the_file_and_key(tmp_path, data, message) -> None:
    path = _space_file(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path, load_experiment("unet_tiny", directory=REPO / "experiments"))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_kit_tune_with_a_bad_space_prints_one_line_and_writes_nothing(project_dir) -> None:
    bad = _space_file(project_dir, {"params": {"training.lr": {"float": [0.1, 1], "log": "yes"}}})
    result = CliRunner().invoke(app, ["tune", "--exp", "unet_tiny", "--space", str(bad), "--trials", "2"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "log must be true or false" in result.output
    assert not (project_dir / "mlruns").exists()
    missing = CliRunner().invoke(app, ["tune", "--exp", "unet_tiny", "--space", "nope.yaml", "--trials", "2"])
    assert missing.exit_code == 1 and "search space file nope.yaml does not exist" in missing.output


def test_the_median_pruner_stops_a_trial_whose_intermediate_values_lag() -> None:
    """A constructed objective: two folds of three epochs each report val mAP through the train stage's
    epoch hook (EpochReporter); the third trial lags from its second epoch on."""
    curves = [
        [0.20, 0.40, 0.50, 0.30, 0.45, 0.55],
        [0.25, 0.42, 0.52, 0.28, 0.47, 0.57],
        [0.22, 0.05, 0.06, 0.30, 0.40, 0.50],  # lags at step 1
        [0.30, 0.50, 0.60, 0.35, 0.50, 0.60],
    ]
    reporters = []

    def objective(trial: optuna.Trial) -> float:
        curve = curves[trial.number]
        reporter = EpochReporter(trial, epochs_per_fold=3)
        reporters.append(reporter)
        try:
            for position, fold in enumerate((2, 0)):  # folds are lined up by the order they train in
                for epoch in range(3):
                    reporter(fold, {"train_loss": 1.0}, epoch)  # an epoch without validation reports nothing
                    reporter(fold, {"val_map": curve[position * 3 + epoch]}, epoch)
        except TrialStopped as stopped:
            raise optuna.TrialPruned(str(stopped)) from None
        return curve[-1]

    study = optuna.create_study(direction="maximize", pruner=make_pruner(PrunerSpec(True, 2, 1, 1)))
    study.optimize(objective, n_trials=4)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    lagging = study.trials[2]
    assert lagging.intermediate_values == {0: 0.22, 1: 0.05} and reporters[2].pruned_at == 1
    assert study.trials[3].intermediate_values == dict(enumerate(curves[3]))  # both folds, steps 0–5
    never = optuna.create_study(direction="maximize", pruner=make_pruner(PrunerSpec(enabled=False)))
    never.optimize(objective, n_trials=3)  # the same curves with pruning off: all complete
    assert [t.state.name for t in never.trials] == ["COMPLETE"] * 3


class _Watched:
    """A study whose `stop()` (allowed only inside `optimize`) is recorded instead."""

    def __init__(self, study: optuna.Study) -> None:
        self.study, self.stopped = study, False

    def get_trials(self, **kwargs):
        return self.study.get_trials(**kwargs)

    def stop(self) -> None:
        self.stopped = True


def test_a_worker_stops_when_the_study_is_full_or_its_time_is_spent() -> None:
    study = optuna.create_study(direction="maximize")
    for state in ("COMPLETE", "COMPLETE", "PRUNED", "FAIL"):
        value = 0.1 if state == "COMPLETE" else None
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState[state], value=value))
    running = study.ask()  # another worker's trial
    assert trials_left(study, 5) == 1 and trials_left(study, 4) == 0 and trials_left(study, None) is None
    watched = _Watched(study)
    StopWhen(n_trials=5, deadline=None)(watched, study.trials[0])
    assert not watched.stopped  # 2 complete + 1 pruned + 1 running: one more to start
    StopWhen(n_trials=4, deadline=None)(watched, study.trials[0])
    assert watched.stopped  # the running trial makes the fourth: no new one
    study.tell(running, 0.2)
    now = [0.0]
    timed, watched = StopWhen(n_trials=None, deadline=100.0, clock=lambda: now[0]), _Watched(study)
    now[0] = 40.0  # one trial took 40: the next would end at 80
    timed(watched, study.trials[0])
    assert not watched.stopped
    now[0] = 70.0  # two took 35 on average: the next would end at 105, past the deadline
    timed(watched, study.trials[0])
    assert watched.stopped


def test_the_study_lives_beside_the_tracking_store(tmp_path) -> None:
    assert default_storage("sqlite:////srv/p/mlruns/mlflow.db") == "sqlite:////srv/p/mlruns/optuna.db"
    pg = "postgresql://kit:secret@db:5432/mlflow"
    assert default_storage(pg) == pg  # the same database; the study gets its own schema
    assert default_storage("http://tracking:5000", cwd=tmp_path) == str(tmp_path / "optuna.journal")
    assert redacted(pg) == "postgresql://kit:***@db:5432/mlflow"
    assert redacted("sqlite:////srv/p/mlruns/optuna.db") == "sqlite:////srv/p/mlruns/optuna.db"


def test_the_tuned_experiment_file_inherits_and_sets_the_winners_values(tmp_path) -> None:
    text = tuned_experiment_yaml(
        "unet_tiny",
        {"training.lr": 0.0123, "data.crop_size": 96, "model.params.encoder_depth": 4},
        ["study s, trial 3"],
    )
    assert text.startswith("# study s, trial 3\nbase: unet_tiny\n")
    assert yaml.safe_load(text) == {
        "base": "unet_tiny",
        "data": {"crop_size": 96},
        "model": {"params": {"encoder_depth": 4}},
        "training": {"lr": 0.0123},
    }
    path = tmp_path / "tuned.yaml"
    path.write_text(text)
    cfg = load_experiment(path, directory=REPO / "experiments")
    base = load_experiment("unet_tiny", directory=REPO / "experiments")
    expected = base.to_dict()
    expected.update(name="tuned")
    expected["training"]["lr"], expected["data"]["crop_size"] = 0.0123, 96
    expected["model"]["params"]["encoder_depth"] = 4
    assert cfg == config_from_dict(expected) and cfg != base


def test_the_shipped_spaces_fit_their_experiments() -> None:
    for name in ("unet_lite0", "maskrcnn_lite0"):
        space = load_space(
            REPO / "experiments" / "spaces" / f"{name}.yaml",
            load_experiment(name, directory=REPO / "experiments"),
        )
        assert len(space.params) >= 4 and space.pruner.enabled
