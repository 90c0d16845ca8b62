"""Concurrent writers: two `kit train` processes started at once on a fresh project share one SQLite store
(the first use creates it, see `kit.tracking.store._prepare_sqlite_store`); both finish and every run and
metric arrives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST_OVERRIDES, REPO_ROOT, install_dataset

pytestmark = pytest.mark.slow


def test_two_trainings_at_once_on_a_fresh_store(tmp_path: Path, synthetic_src: Path, monkeypatch) -> None:
    shutil.copytree(REPO_ROOT / "experiments", tmp_path / "experiments")
    install_dataset(synthetic_src, tmp_path)
    assert not (tmp_path / "mlruns").exists()  # the two processes race to create the store
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    overrides = [*FAST_OVERRIDES, "training.max_steps_per_epoch=1", "tracking.log_model=false"]
    args = [
        sys.executable,
        "-m",
        "kit",
        "train",
        "--exp",
        "unet_tiny",
        "--folds",
        "0",
        *(x for o in overrides for x in ("--set", o)),
    ]
    procs = [
        subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert not any("database is locked" in o for o in outputs)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from kit import tracking

    parents = tracking.find_runs("unet_tiny", tags={"kit.role": "train"}, status=None)
    folds = tracking.find_runs("unet_tiny", tags={"kit.role": "train-fold"}, status=None)
    assert [r.info.status for r in parents] == ["FINISHED"] * 2
    assert [r.info.status for r in folds] == ["FINISHED"] * 2
    assert {r.data.tags["kit.parent_run_id"] for r in folds} == {r.info.run_id for r in parents}
    client = tracking.configure().MlflowClient()
    for fold in folds:  # 2 epochs each: every metric of every epoch arrived
        for key in ("train_loss", "val_map", "epoch_time"):
            assert sorted(m.step for m in client.get_metric_history(fold.info.run_id, key)) == [0, 1], key
