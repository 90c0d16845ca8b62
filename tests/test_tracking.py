"""Tracking: the default store, standard tags, run status, finding runs, dataset inputs. Tests that write
runs use `project` (a copy of an empty store: creating one runs all of MLflow's migrations)."""

from __future__ import annotations

import subprocess

import pytest

from kit import tracking
from kit.errors import RunNotFoundError


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_default_store_is_sqlite_under_mlruns(project_dir):
    assert tracking.tracking_uri() == f"sqlite:///{project_dir / 'mlruns' / 'mlflow.db'}"


def test_env_overrides_store(project_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking.tracking_uri() == "sqlite:///elsewhere.db"


def test_run_carries_standard_tags_and_diff_when_dirty(project):
    _git(project, "init", "-q")
    (project / "a.txt").write_text("one\n")
    _git(project, "add", "a.txt")
    _git(project, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    (project / "a.txt").write_text("two\n")
    with tracking.start_run("exp_a", "train", run_name="r", tags={"kit.fold": "1"}) as run:
        run_id = run.info.run_id
    mlflow = tracking.configure()
    got = mlflow.get_run(run_id)
    tags = got.data.tags
    assert got.info.status == "FINISHED"
    assert tags["kit.experiment"] == "exp_a" and tags["kit.command"] == "train" and tags["kit.fold"] == "1"
    assert len(tags["kit.git_commit"]) == 40 and tags["kit.git_dirty"] == "true"
    import torch

    device = f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    assert tags["kit.device"] == device and "kit.pkg.mlflow" in tags
    diff = mlflow.artifacts.load_text(f"{got.info.artifact_uri}/git_diff.patch")
    assert "+two" in diff
    assert str(project / "mlruns") in got.info.artifact_uri


def test_failed_run_is_marked_failed(project):
    with pytest.raises(RuntimeError), tracking.start_run("exp_b", "train") as run:
        run_id = run.info.run_id
        raise RuntimeError("boom")
    assert tracking.configure().get_run(run_id).info.status == "FAILED"


def test_find_and_latest_runs_by_tags(project):
    run_ids = []
    for fold in ("0", "1", "0"):
        with tracking.start_run("exp_c", "train", tags={"kit.fold": fold}) as run:
            run_ids.append(run.info.run_id)
    last = run_ids[2]
    assert len(tracking.find_runs("exp_c", tags={"kit.fold": "0"})) == 2
    assert tracking.latest_run("exp_c", tags={"kit.fold": "0"}).info.run_id == last
    with pytest.raises(RunNotFoundError, match=r"kit\.fold=7"):
        tracking.latest_run("exp_c", tags={"kit.fold": "7"})
    assert tracking.find_runs("no_such_experiment") == []


def test_dataset_input_is_versioned_by_manifest_digest(project):
    manifest = project / "manifest.csv"
    manifest.write_text("id,split\na,train\n")
    with tracking.start_run("exp_d", "data import") as run:
        digest = tracking.log_dataset(manifest, name="tiny", context="import")
        run_id = run.info.run_id
    got = tracking.configure().get_run(run_id)
    assert got.data.tags["kit.dataset_digest"] == digest
    assert got.inputs.dataset_inputs[0].dataset.name == "tiny"
    assert got.inputs.dataset_inputs[0].dataset.digest == digest[:16]
