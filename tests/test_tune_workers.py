"""`kit tune` with several workers (slow: separate processes, a PostgreSQL server, SIGKILL): two processes
on one SQLite study run every trial once and lose no run; on PostgreSQL the study keeps to its own schema
of a database that holds MLflow's tables, and a second worker joins it; a killed worker's trial
becomes FAIL with its MLflow runs FAILED and is run again when the study resumes; a trial whose Optuna
heartbeat stopped (a worker lost on another machine) is failed the same way."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import (
    REPO_ROOT,
    empty_mlflow_store,
    inside_project,
    install_dataset,
    one_torch_thread,
    postgres_bin,
    postgres_server,
    seed_mlflow_store,
)

pytestmark = pytest.mark.slow

FAST = ["training.epochs=2", "training.max_steps_per_epoch=1", "data.crop_size=64"]
"""unet_tiny at one step per epoch: these tests check bookkeeping, not scores."""
SPACE = {"params": {"training.lr": {"float": [1.0e-3, 1.0e-2], "log": True}}, "pruner": "none"}


def _project(root: Path, tmp_path_factory, synthetic_src: Path) -> Path:
    seed_mlflow_store(root, empty_mlflow_store(tmp_path_factory))
    install_dataset(synthetic_src, root)
    shutil.copytree(REPO_ROOT / "experiments", root / "experiments")
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return root


def _tune_args(*extra: str) -> list[str]:
    sets = [arg for item in FAST for arg in ("--set", item)]
    return ["tune", "--exp", "unet_tiny", "--space", "space.yaml", "--study", "shared", *sets, *extra]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _client():
    from kit import tracking

    return tracking.configure().MlflowClient()


def _runs(experiment: str, **tags: str) -> list:
    from kit import tracking

    return tracking.find_runs(experiment, tags=tags, status=None)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of this module's own on 127.0.0.1 (`helpers.postgres_server`), as the URL of
    its `postgres` database; skipped when the server binaries are not installed."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package `postgresql`; .ci/run installs it)")
    with postgres_server(bin_dir) as url:
        yield url


# -- tests ----------------------------------------------------------------------------------------------


def test_two_workers_on_one_sqlite_study_run_each_trial_once_and_lose_no_run(
    tmp_path, tmp_path_factory, synthetic_src
) -> None:
    from kit.search.study import RUN_ATTR
    from kit.tracking.schema import Role, Tag

    project = _project(tmp_path / "project", tmp_path_factory, synthetic_src)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "kit", *_tune_args("--trials", "4")],
            cwd=project,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    with inside_project(project):
        study = optuna.load_study(study_name="shared", storage=f"sqlite:///{project}/mlruns/optuna.db")
        trials = study.get_trials()
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        assert 4 <= len(complete) <= 5 and len(complete) == len(trials)  # at most one extra in a race
        run_ids = [t.user_attrs[RUN_ATTR] for t in trials]
        assert len(set(run_ids)) == len(trials)  # no trial run twice
        runs = _runs("shared", **{Tag.ROLE: Role.TRIAL})
        assert sorted(r.info.run_id for r in runs) == sorted(run_ids)  # no run lost, none extra
        (parent,) = _runs("shared", **{Tag.ROLE: Role.STUDY})
        assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
        assert all(r.info.status == "FINISHED" for r in _runs("shared"))  # nothing left RUNNING
        by_worker = {r.data.tags["kit.pid"] for r in runs}
        assert by_worker == {str(w.pid) for w in workers}  # both worked on the study


def test_a_study_on_postgresql_keeps_to_its_own_schema_beside_mlflows_tables(
    postgres_url, tmp_path, tmp_path_factory, synthetic_src
) -> None:
    """A team's database: MLflow's tables (here its `alembic_version`, the table both keep) in the public
    schema, the study in schema `optuna`; a second worker joins by name."""
    import sqlalchemy

    from kit.search.study import RUN_ATTR
    from kit.tracking.schema import Role, Tag
    from kit.workflows.tune import tune_experiment

    engine = sqlalchemy.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:  # as MLflow 3.17 leaves it
        connection.execute(
            sqlalchemy.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        )
        connection.execute(sqlalchemy.text("INSERT INTO alembic_version VALUES ('v3.2.0.a')"))
    project = _project(tmp_path / "project", tmp_path_factory, synthetic_src)
    with inside_project(project), one_torch_thread():
        first = tune_experiment(
            exp="unet_tiny",
            space="space.yaml",
            study="team",
            overrides=FAST,
            n_trials=1,
            storage=postgres_url,
            progress=False,
        )
        joined = tune_experiment(study="team", n_trials=2, storage=postgres_url, progress=False)
        assert first.counts == {"COMPLETE": 1} and joined.counts == {"COMPLETE": 2}
        assert joined.parent_run_id == first.parent_run_id and joined.storage == postgres_url
        runs = _runs("team", **{Tag.ROLE: Role.TRIAL})
        assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {first.parent_run_id} and len(runs) == 2
    with engine.connect() as connection:
        tables = connection.execute(
            sqlalchemy.text(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name IN ('trials', 'alembic_version')"
            )
        ).all()
        assert sorted(tables) == [
            ("optuna", "alembic_version"),
            ("optuna", "trials"),
            ("public", "alembic_version"),
        ]
        public = connection.execute(
            sqlalchemy.text("SELECT version_num FROM public.alembic_version")
        ).scalar()
        assert public == "v3.2.0.a"  # MLflow's record untouched
        run_ids = connection.execute(
            sqlalchemy.text("SELECT value_json FROM optuna.trial_user_attributes WHERE key = :k"),
            {"k": RUN_ATTR},
        ).scalars()
        assert sorted(v.strip('"') for v in run_ids) == sorted(r.info.run_id for r in runs)
    engine.dispose()


def test_a_killed_worker_leaves_its_trial_failed_and_the_study_resumes(
    tmp_path, tmp_path_factory, synthetic_src
) -> None:
    from kit.search.study import RETRY_ATTR, RUN_ATTR
    from kit.tracking.schema import Role, Tag
    from kit.workflows.tune import tune_experiment

    project = _project(tmp_path / "project", tmp_path_factory, synthetic_src)
    harness = [
        sys.executable,
        str(REPO_ROOT / "tests" / "kill_harness.py"),
        "kit.stages.train:_FoldLogger.epoch",
    ]
    killed = subprocess.run(
        [*harness, "1", "--", *_tune_args("--trials", "2")],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    storage = f"sqlite:///{project}/mlruns/optuna.db"
    with inside_project(project):
        (dead,) = optuna.load_study(study_name="shared", storage=storage).get_trials()
        assert dead.state.name == "RUNNING"  # as the kill left it
        (dead_run,) = _runs("shared", **{Tag.ROLE: Role.TRIAL})
        assert dead_run.info.status == "RUNNING"
        with one_torch_thread():
            outcome = tune_experiment(study="shared", n_trials=1, progress=False)
        trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
        assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
        assert outcome.counts == {"FAIL": 1, "COMPLETE": 1}
        retry = trials[1]
        assert retry.params == dead.params and retry.user_attrs[RETRY_ATTR] == 0  # the same values again
        runs = {r.info.run_id: r for r in _runs("shared")}
        assert runs[dead.user_attrs[RUN_ATTR]].info.status == "FAILED"
        assert runs[dead.user_attrs[RUN_ATTR]].data.tags[Tag.TRIAL_STATE] == "FAIL"
        assert runs[retry.user_attrs[RUN_ATTR]].data.tags[Tag.RETRY_OF] == "0"
        below = [r for r in runs.values() if r.data.tags.get(Tag.PARENT_RUN) == dead.user_attrs[RUN_ATTR]]
        (train,) = below
        (fold,) = [r for r in runs.values() if r.data.tags.get(Tag.PARENT_RUN) == train.info.run_id]
        assert (train.info.status, fold.info.status) == ("FAILED", "FAILED")  # none RUNNING forever
        assert [r for r in runs.values() if r.info.status == "RUNNING"] == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_whose_optuna_heartbeat_stopped_is_failed_and_queued_again(project) -> None:
    """A worker lost on another machine: its trial run looks alive to kit (this process's id), but its
    Optuna heartbeat stopped; the next worker's sweep fails it through the heartbeat."""
    from optuna.distributions import FloatDistribution

    from kit import tracking
    from kit.search.storage import open_storage
    from kit.search.study import RETRY_ATTR, RUN_ATTR
    from kit.tracking.schema import Role, Tag, role_tags
    from kit.tracking.store import liveness_tags
    from kit.workflows import tune as workflow

    client = _client()
    storage = open_storage(
        f"sqlite:///{project}/mlruns/optuna.db",
        heartbeat_interval=1,
        grace_period=3,
        on_stale=workflow._trial_died,
    )
    study = optuna.create_study(storage=storage, study_name="lost", direction="maximize")
    trial = study.ask({"training.lr": FloatDistribution(1e-3, 1e-2, log=True)})
    experiment_id = tracking.ensure_experiment("lost")
    run = client.create_run(
        experiment_id, tags={**role_tags(Role.TRIAL, **{Tag.TRIAL: "0"}), **liveness_tags()}
    )
    trial.set_user_attr(RUN_ATTR, run.info.run_id)
    storage.record_heartbeat(trial._trial_id)  # the worker's last beat
    workflow._fail_dead_trials(study)
    assert study.get_trials()[0].state.name == "RUNNING"  # within its grace period: left alone
    time.sleep(4)
    workflow._fail_dead_trials(study)
    first, queued = study.get_trials()
    assert first.state.name == "FAIL" and queued.state.name == "WAITING"
    assert queued.params == first.params and queued.user_attrs == {RETRY_ATTR: 0}
    failed = client.get_run(run.info.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags[Tag.TRIAL_STATE] == "FAIL"
