"""`kit demo`: the whole journey (data → two base models → OOF/test predictions → ensemble → submission
→ score) wired end to end, with tiny models on the synthetic data."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from kit.workflows.demo import DemoStep, run_demo


@pytest.mark.slow
def test_demo_runs_the_whole_journey_and_its_submission_scores_like_the_ensemble(project_dir) -> None:
    stages: list[str] = []
    tiny = (
        "training.epochs=1",
        "data.samples_per_epoch=8",
        "training.max_steps_per_epoch=2",
        "tracking.log_model=false",
    )
    steps = (
        DemoStep("unet_tiny", share=0.5, folds=(0,), overrides=tiny),
        DemoStep("maskrcnn_tiny", share=0.5, folds=(0,), overrides=tiny),
    )
    result = run_demo(synthetic=True, minutes=2, steps=steps, announce=stages.append, progress=False)

    assert [s.split(" ")[0] for s in stages] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    table = result.table.set_index("model")
    assert list(table.index[:3]) == ["unet_tiny", "maskrcnn_tiny", "ensemble"]
    # The submission holds exactly the ensemble's test predictions: scoring it gives the same mAP.
    assert table.loc[f"submission {result.submission.name}", "test mAP"] == pytest.approx(
        table.loc["ensemble", "test mAP"]
    )
    assert all(0.0 <= table.loc[m, "test mAP"] <= 1.0 for m in ("unet_tiny", "maskrcnn_tiny", "ensemble"))
    assert math.isfinite(table.loc["ensemble, estimated without truth", "test mAP"])
    assert result.submission.resolve() == project_dir / "submissions" / "demo_ensemble.csv"
    assert result.submission.read_text().startswith("ImageId,EncodedPixels")
    assert {"train unet_tiny", "train maskrcnn_tiny", "ensemble"} <= set(result.runs)
    note = table.loc["ensemble, estimated without truth", "95% CI"]
    # how many test images lie outside what the estimate was calibrated on, or that none do
    assert re.fullmatch(r"\d+ image\(s\) out of calibration|all images within calibration", note), note


def test_demo_shares_the_minutes_between_models_and_folds(project_dir) -> None:
    step = DemoStep("unet_tiny", share=0.6, folds=(0, 1), overrides=("training.val_every=7",))
    cfg = step.config(Path("data/x"), 1, minutes=20, seed=3)
    assert cfg.training.max_minutes == pytest.approx(6.0)  # 20 min × 0.6 over 2 folds
    assert cfg.training.folds == [0, 1]
    assert cfg.training.seed == 3
    assert cfg.training.early_stopping_patience is None
    assert cfg.training.val_every == 7  # the step's own overrides come last
