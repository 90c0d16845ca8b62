"""`kit tune` end to end on the tiny U-Net: a study of N trials is N child runs under one parent holding what
Optuna holds; re-running resumes; `--best --write` gives an experiment that loads and trains; `kit runs`
shows the study as one line, its trials when expanded; a pruned trial's runs end KILLED."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from helpers import empty_mlflow_store, inside_project, install_dataset, one_torch_thread, seed_mlflow_store
from typer.testing import CliRunner

from kit.cli import app

TRIAL_OVERRIDES = [
    "training.epochs=2",
    "data.crop_size=64",
    "data.samples_per_epoch=32",
    "training.max_steps_per_epoch=8",
]
"""unet_tiny trained 2 epochs × 8 steps: a few seconds per trial, enough to score above 0 out of fold."""
SPACE = {
    "params": {
        "training.lr": {"float": [0.008, 0.03], "log": True},
        "training.schedule": {"choice": ["cosine", "constant"]},
    },
    "pruner": "none",
}
N_TRIALS = 3


def _client():
    from kit import tracking

    return tracking.configure().MlflowClient()


def _runs(experiment_id: str, role: str, **tags: str) -> list:
    from kit import tracking
    from kit.tracking.schema import Tag

    return tracking.find_runs_in(experiment_id, tags={Tag.ROLE: role, **tags}, status=None)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, synthetic_src):
    """A project holding one finished 3-trial study of unet_tiny (`unet_tiny-tune`), and its outcome."""
    from kit.workflows.tune import tune_experiment

    root = tmp_path_factory.mktemp("tune")
    seed_mlflow_store(root, empty_mlflow_store(tmp_path_factory))
    install_dataset(synthetic_src, root)
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    with inside_project(root), one_torch_thread():
        outcome = tune_experiment(
            exp="unet_tiny", space="space.yaml", overrides=TRIAL_OVERRIDES, n_trials=N_TRIALS, progress=False
        )
    return root, outcome


@pytest.fixture
def in_tuned(tuned):
    with inside_project(tuned[0]):
        yield tuned


def test_a_study_of_n_trials_is_n_child_runs_under_one_parent_with_optunas_params_and_values(
    in_tuned,
) -> None:
    from kit.search.study import PARENT_ATTR, RUN_ATTR
    from kit.tracking.schema import Role, Tag

    root, outcome = in_tuned
    study = optuna.load_study(study_name="unet_tiny-tune", storage=f"sqlite:///{root}/mlruns/optuna.db")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * N_TRIALS and outcome.counts == {
        "COMPLETE": N_TRIALS
    }
    values = [t.value for t in trials]
    assert len({t.params["training.lr"] for t in trials}) == N_TRIALS and max(values) > 0  # not trivial
    experiment = _client().get_experiment_by_name("unet_tiny-tune")
    assert experiment.tags[Tag.STUDY] == "unet_tiny-tune"
    (parent,) = _runs(experiment.experiment_id, Role.STUDY)
    assert parent.info.run_id == outcome.parent_run_id == study.user_attrs[PARENT_ATTR]
    assert parent.info.status == "FINISHED" and parent.data.params["exp"] == "unet_tiny"
    children = _runs(experiment.experiment_id, Role.TRIAL)
    assert len(children) == N_TRIALS
    for trial in trials:
        (run,) = [r for r in children if r.data.tags[Tag.TRIAL] == str(trial.number)]
        assert run.info.run_id == trial.user_attrs[RUN_ATTR]
        assert run.data.tags["mlflow.parentRunId"] == run.data.tags[Tag.PARENT_RUN] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags[Tag.TRIAL_STATE] == "COMPLETE"
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        assert run.data.metrics["oof_map_tuned"] == pytest.approx(trial.value)
        (train,) = _runs(experiment.experiment_id, Role.TRAIN, **{Tag.PARENT_RUN: run.info.run_id})
        (fold,) = _runs(experiment.experiment_id, Role.TRAIN_FOLD, **{Tag.PARENT_RUN: train.info.run_id})
        (predicted,) = _runs(experiment.experiment_id, Role.PREDICT, **{Tag.PARENT_RUN: run.info.run_id})
        assert fold.data.tags[Tag.FOLD] == "0" and predicted.data.tags[Tag.PREDICT_KIND] == "oof"
        assert predicted.data.tags[Tag.TRAIN_RUN] == train.info.run_id
        assert predicted.data.metrics["oof_map_tuned"] == pytest.approx(trial.value)
        assert float(train.data.params["training.lr"]) == pytest.approx(trial.params["training.lr"])
    best = _client().get_metric_history(parent.info.run_id, "best_value")
    assert [m.step for m in best] == list(range(N_TRIALS))
    assert best[-1].value == pytest.approx(max(values)) == pytest.approx(outcome.best_value)
    artifacts = {a.path for a in _client().list_artifacts(parent.info.run_id)}
    plots = {a.path for a in _client().list_artifacts(parent.info.run_id, "plots")}
    assert {"space.yaml", "trials.csv"} <= artifacts
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png", "plots/study.html"} <= plots


def test_running_the_command_again_resumes_the_study_and_adds_nothing_when_it_is_full(in_tuned) -> None:
    _, outcome = in_tuned
    result = CliRunner().invoke(
        app,
        ["tune", "--exp", "unet_tiny", "--space", "space.yaml", "--trials", str(N_TRIALS)]
        + [arg for item in TRIAL_OVERRIDES for arg in ("--set", item)],
    )
    assert result.exit_code == 0, result.output
    assert f"{N_TRIALS} complete" in result.output and outcome.parent_run_id[:8] in result.output
    joined = CliRunner().invoke(app, ["tune", "--study", "unet_tiny-tune", "--trials", str(N_TRIALS)])
    assert joined.exit_code == 0 and outcome.parent_run_id[:8] in joined.output, joined.output
    other = CliRunner().invoke(
        app,
        ["tune", "--exp", "unet_tiny", "--space", "space.yaml", "--trials", "9", "--set", "training.lr=0.1"],
    )
    assert other.exit_code == 1
    assert (
        "already searches other settings (config: data.samples_per_epoch is 32 there, None here)"
        in other.output
    )
    from kit.tracking.schema import Role

    experiment = _client().get_experiment_by_name("unet_tiny-tune")
    assert len(_runs(experiment.experiment_id, Role.TRIAL)) == N_TRIALS
    assert len(_runs(experiment.experiment_id, Role.STUDY)) == 1


def test_best_write_gives_an_experiment_that_loads_and_trains(in_tuned, tmp_path) -> None:
    from kit.config import load_experiment
    from kit.tracking.schema import Role, find_role_runs

    root, outcome = in_tuned
    result = CliRunner().invoke(
        app, ["tune", "--best", "unet_tiny-tune", "--write", "experiments/unet_tiny_tuned.yaml"]
    )
    assert result.exit_code == 0, result.output
    path = root / "experiments" / "unet_tiny_tuned.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
        assert raw["base"] == "unet_tiny" and raw["training"]["lr"] == outcome.best_params["training.lr"]
        cfg = load_experiment("unet_tiny_tuned")
        assert cfg.name == "unet_tiny_tuned"
        assert cfg.training.lr == outcome.best_params["training.lr"]
        assert cfg.training.schedule == outcome.best_params["training.schedule"]
        assert (cfg.data.samples_per_epoch, cfg.training.epochs) == (32, 2)  # the study's --set values
        trained = CliRunner().invoke(
            app, ["train", "--exp", "unet_tiny_tuned", "--folds", "0", "--set", "tracking.log_model=false"]
        )
        assert trained.exit_code == 0, trained.output
        (run,) = find_role_runs("unet_tiny_tuned", Role.TRAIN)
        assert float(run.data.params["training.lr"]) == pytest.approx(outcome.best_params["training.lr"])
    finally:
        path.unlink(missing_ok=True)
    missing = CliRunner().invoke(
        app, ["tune", "--best", "no-such-study", "--write", str(tmp_path / "x.yaml")]
    )
    assert missing.exit_code == 1 and "no study 'no-such-study'" in missing.output
    assert "studies there: unet_tiny-tune" in missing.output and not (tmp_path / "x.yaml").exists()


def test_kit_runs_shows_the_study_as_one_line_and_its_trials_when_expanded(in_tuned) -> None:
    _, outcome = in_tuned
    listing = CliRunner().invoke(app, ["runs"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    study_lines = [line for line in listing.output.splitlines() if outcome.parent_run_id[:8] in line]
    assert len(study_lines) == 1 and f"{N_TRIALS} complete" in study_lines[0], listing.output
    assert f"{outcome.best_value:.4f}" in study_lines[0]
    trial_lines = [line for line in listing.output.splitlines() if "unet_tiny-tune" in line]
    assert trial_lines == study_lines  # the trials' train runs are not training runs of their own
    expanded = CliRunner().invoke(app, ["runs", "--exp", "unet_tiny-tune"], env={"COLUMNS": "200"})
    assert expanded.exit_code == 0, expanded.output
    rows = [line for line in expanded.output.splitlines() if "COMPLETE" in line]
    assert len(rows) == N_TRIALS and f"{outcome.best_value:.4f}" in expanded.output
    assert all("training.lr=" in row for row in rows)


def test_a_trial_the_pruner_stops_is_pruned_and_its_runs_end_killed(in_tuned, monkeypatch) -> None:
    """A pruner that stops every trial below 0.5 val mAP (as a median pruner stops a lagging one)."""
    import kit.workflows.tune as workflow
    from kit.search.study import RUN_ATTR
    from kit.tracking.schema import Role, Tag

    root, _ = in_tuned
    monkeypatch.setattr(workflow, "make_pruner", lambda spec: optuna.pruners.ThresholdPruner(lower=0.5))
    with one_torch_thread():
        outcome = workflow.tune_experiment(
            exp="unet_tiny",
            space="space.yaml",
            study="pruned",
            overrides=["training.epochs=2", "training.max_steps_per_epoch=1", "data.crop_size=64"],
            n_trials=1,
            progress=False,
        )
    assert outcome.counts == {"PRUNED": 1} and outcome.best_number is None
    study = optuna.load_study(study_name="pruned", storage=f"sqlite:///{root}/mlruns/optuna.db")
    (trial,) = study.get_trials()
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]  # stopped after epoch 1
    experiment_id = _client().get_experiment_by_name("pruned").experiment_id
    (run,) = _runs(experiment_id, Role.TRIAL)
    assert run.info.run_id == trial.user_attrs[RUN_ATTR]
    assert run.info.status == "KILLED" and run.data.tags[Tag.TRIAL_STATE] == "PRUNED"
    (train,) = _runs(experiment_id, Role.TRAIN, **{Tag.PARENT_RUN: run.info.run_id})
    (fold,) = _runs(experiment_id, Role.TRAIN_FOLD, **{Tag.PARENT_RUN: train.info.run_id})
    assert (train.info.status, fold.info.status) == ("KILLED", "KILLED")
    assert [m.step for m in _client().get_metric_history(fold.info.run_id, "val_map")] == [0]
    assert not _runs(experiment_id, Role.PREDICT)  # a pruned trial is never scored
    (parent,) = _runs(experiment_id, Role.STUDY)
    assert parent.data.metrics["trials_pruned"] == 1


def test_a_study_needs_a_space_or_an_existing_name(project_dir: Path) -> None:
    for args, message in (
        (["tune", "--exp", "unet_tiny"], "give --trials N"),
        (["tune", "--trials", "2"], "give --exp E --space SPACE.yaml to start a study, or --study NAME"),
        (["tune", "--exp", "unet_tiny", "--trials", "2"], "a new study needs --space SPACE.yaml"),
        (["tune", "--best", "s"], "--best NAME and --write FILE.yaml go together"),
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
