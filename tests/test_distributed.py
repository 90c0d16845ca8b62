"""torchrun: two CPU processes (gloo) train one fold with DistributedDataParallel; only rank 0 logs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import FAST_OVERRIDES, free_port, write_tiny_synthetic


@pytest.mark.slow
def test_torchrun_two_processes_log_one_parent_and_one_fold_run(project_dir) -> None:
    write_tiny_synthetic(project_dir / "data" / "synthetic")
    overrides = [arg for o in FAST_OVERRIDES for arg in ("--set", o)]
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": port}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        "-m",
        "kit",
        "train",
        "--exp",
        "unet_tiny",
        "--folds",
        "0",
        *overrides,
    ]
    done = subprocess.run(cmd, cwd=project_dir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val mAP" in done.stdout

    from kit import tracking

    client = tracking.configure().MlflowClient()
    parents = tracking.find_runs("unet_tiny", tags={"kit.role": "train"})
    folds = tracking.find_runs("unet_tiny", tags={"kit.role": "train-fold"})
    assert len(parents) == 1 and len(folds) == 1
    history = client.get_metric_history(folds[0].info.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1]
