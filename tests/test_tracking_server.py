"""A team's tracking server: `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), reached only
over HTTP through MLFLOW_TRACKING_URI, takes every run and artifact of train → predict --oof → predict
test → ensemble → submit; nothing lands in a local mlruns/; the server (a process group started like
`kit ui` starts its own) leaves nothing behind when stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO_ROOT, free_port, install_dataset
from typer.testing import CliRunner

from kit.cli import app

pytestmark = pytest.mark.slow

TINY = [
    "training.epochs=1",
    "training.max_steps_per_epoch=1",
    "data.crop_size=64",
    "tracking.log_model=false",
]
SEEDS = ["postprocess.seed_threshold=0.2", "postprocess.min_size=4"]  # untrained models still find nuclei
ENSEMBLE = [
    "ensemble.bases=[unet_tiny]",
    "ensemble.split_thresholds=[0.3]",
    "ensemble.n_bags=1",
    "ensemble.n_folds=2",
    "ensemble.lightgbm.num_boost_round=5",
    "ensemble.lightgbm.min_data_in_leaf=3",
    "data.root=data/synthetic",
    "tracking.log_model=false",
]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` run by `kit.tracking.server.serve` in a child process: (url, backend folder)."""
    folder = tmp_path_factory.mktemp("tracking-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        "server",
        f"sqlite:///{folder / 'db.sqlite'}",
        "127.0.0.1",
        port,
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--serve-artifacts",
        "--workers",
        "1",
    ]
    script = f"import sys; from kit.tracking.server import mlflow_command, serve; sys.exit(serve(mlflow_command(*{cmd!r})))"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _healthy(url):
            assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the tracking server did not start"
            time.sleep(0.5)
        yield url, folder, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        log.close()


def kit(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"kit {' '.join(args)}\n{result.output}\n{result.exception!r}"
    return result.stdout


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def test_the_whole_journey_through_a_tracking_server(server, tmp_path, synthetic_src, monkeypatch) -> None:
    url, folder, proc = server
    shutil.copytree(REPO_ROOT / "experiments", tmp_path / "experiments")
    install_dataset(synthetic_src, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    cache, scratch = tmp_path / "artifact-cache", tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("KIT_ARTIFACTS_CACHE", str(cache))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # watched: no checkpoint copy may stay there

    kit("train", "--exp", "unet_tiny", "--folds", "0", *sets(TINY))
    kit("predict", "--exp", "unet_tiny", "--oof", *sets(SEEDS))
    kit("predict", "--exp", "unet_tiny", "--split", "test", *sets(SEEDS))
    kit("ensemble", "--exp", "ensemble", *sets(ENSEMBLE))
    out = kit("submit", "--exp", "ensemble", "--name", "team", *sets(ENSEMBLE))
    assert "submissions/team.csv" in out

    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store
    # the fold's checkpoint, loaded by 3 predictions and the submission, was fetched once into the cache
    assert len(list(cache.rglob("best.pt"))) == 1 and not list(scratch.rglob("best.pt"))
    from kit import tracking

    client = tracking.configure().MlflowClient()
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert {"unet_tiny", "ensemble"} <= experiments.keys()
    runs = client.search_runs(list(experiments.values()), max_results=1000)
    roles = sorted(r.data.tags.get("kit.role", "") for r in runs)
    assert roles == sorted(["train", "train-fold", *["predict"] * 4, "ensemble", "submit"])
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:  # every artifact went through the server's proxy into its artifact folder
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        assert client.list_artifacts(run.info.run_id), (run.data.tags["kit.role"], run.info.run_id)

    stored = folder / "artifacts"
    assert len(list(stored.rglob("checkpoints/best.pt"))) == 1
    assert len(list(stored.rglob("predictions.csv"))) == 4
    (submit,) = [r for r in runs if r.data.tags["kit.role"] == "submit"]
    (uploaded,) = stored.rglob(f"{submit.info.run_id}/artifacts/submission/team.csv")
    assert uploaded.read_bytes() == (tmp_path / "submissions" / "team.csv").read_bytes()
    (ensemble,) = [r for r in runs if r.data.tags["kit.role"] == "ensemble"]
    downloaded = client.download_artifacts(ensemble.info.run_id, "model/model.json", str(tmp_path / "dl"))
    assert json.loads(Path(downloaded).read_text())["features"]  # the IoU model, back over HTTP

    # stopped as `kit ui` is (SIGTERM to kit), the server's whole process tree goes
    (leader,) = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat") if _parent(p) == proc.pid]
    assert _group_members(leader)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert _group_members(leader) == []
    assert not _healthy(url)


def _parent(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1
