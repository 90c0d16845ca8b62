"""Evaluate and submit stages: a predict run scored against the truth (same numbers as
`kit.metrics.evaluate`, plots, an evaluate run), a valid submission CSV that decodes to the predicted
label images, and one-line CLI errors when a run is missing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import REPO_ROOT, copy_project, inside_project, predicted_labels
from typer.testing import CliRunner

from kit import tracking
from kit.config import load_experiment
from kit.data.dataset import NucleiDataset
from kit.metrics import evaluate
from kit.stages.evaluate import evaluate_experiment
from kit.stages.submit import submit_experiment
from kit.submission import check_submission, read_submission_labels
from kit.tracking.schema import get_run

# Low thresholds so that the barely trained models still produce instances to score and encode.
PREDICT_OVERRIDES = ["postprocess.seed_threshold=0.2", "postprocess.min_size=4"]


@pytest.fixture(scope="module")
def predicted(trained_project, tmp_path_factory):
    """A copy of the session's trained unet_tiny project with an out-of-fold and a test predict run:
    (folder, oof, test)."""
    from kit.stages.predict import predict_experiment

    root = copy_project(trained_project.root, tmp_path_factory.mktemp("evaluate") / "project")
    with inside_project(root):
        cfg = load_experiment("unet_tiny", PREDICT_OVERRIDES)
        oof = predict_experiment(cfg, oof=True, progress=False)
        test = predict_experiment(cfg, split="test", progress=False)
    return root, oof, test


@pytest.fixture
def cfg(predicted, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(predicted[0])
    return load_experiment("unet_tiny")


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N by first pixel in column-major order (the numbering of a decoded CSV)."""
    flat = labels.T.ravel()
    ids, first = np.unique(flat, return_index=True)
    order = ids[ids > 0][np.argsort(first[ids > 0])]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[order] = np.arange(1, order.size + 1)
    return lut[labels]


def test_evaluate_oof_equals_metrics_evaluate_and_is_logged(cfg, predicted, tmp_path) -> None:
    outcome = evaluate_experiment(cfg, kind="oof", out=tmp_path / "report", n_bootstrap=100)
    assert outcome.predict_run_id == predicted[1].run_id
    _, labels = predicted_labels(get_run(predicted[1].run_id))
    dataset = NucleiDataset(cfg.data.root)
    expected = evaluate(((i, dataset.load(i).labels, labels[i]) for i in sorted(labels)), n_bootstrap=100)
    assert outcome.evaluation.summary == expected.summary
    assert outcome.evaluation.summary["n_images"] == 8 and outcome.evaluation.summary["n_pred"] > 0
    report = tmp_path / "report"
    for name in ("summary.json", "per_image.csv", "ap_vs_iou.png", "errors.png"):
        assert (report / name).is_file()
    assert len(list((report / "overlays").glob("*.png"))) == 4
    assert json.loads((report / "summary.json").read_text())["map"] == expected.summary["map"]

    run = get_run(outcome.run_id)
    assert (
        run.data.tags["kit.role"] == "evaluate" and run.data.tags["kit.predict_run_id"] == predicted[1].run_id
    )
    assert run.data.metrics["map"] == pytest.approx(expected.summary["map"])
    assert run.data.metrics["ap_0.50"] == pytest.approx(expected.summary["ap_per_threshold"]["0.50"])
    artifacts = {a.path for a in tracking.configure().MlflowClient().list_artifacts(outcome.run_id, "report")}
    assert {"report/ap_vs_iou.png", "report/per_image.csv", "report/overlays"} <= artifacts


def test_evaluate_compare_via_cli_draws_one_curve_per_experiment(cfg, predicted, tmp_path) -> None:
    from kit.cli import app
    from kit.tracking.schema import find_train_run, fold_models

    # A second, different model: fold 0's checkpoint alone with the config's (untuned) thresholds,
    # predicted with --model into the MLflow experiment "predictions", which experiment fold0 reads.
    checkpoint = fold_models(find_train_run("unet_tiny"))[0].checkpoint
    result = CliRunner().invoke(
        app, ["predict", "--model", str(checkpoint), "--data", "data/synthetic", "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    text = (
        REPO_ROOT / "experiments" / "unet_tiny.yaml"
    ).read_text() + "tracking:\n  experiment: predictions\n"
    (predicted[0] / "experiments" / "fold0.yaml").write_text(text)
    result = CliRunner().invoke(
        app, ["evaluate", "--exp", "unet_tiny", "--kind", "test", "--compare", "fold0"]
    )
    assert result.exit_code == 0, result.output
    assert "DSB mAP" in result.output and "comparison (test)" in result.output
    out = predicted[0] / "outputs" / "evaluate" / "unet_tiny-test"
    table = pd.read_csv(out / "compare.csv")
    assert list(table["experiment"]) == ["unet_tiny", "fold0"]
    # Each row is what `kit evaluate` of that experiment alone gives, and the two models differ.
    for name, row in zip(["unet_tiny", "fold0"], table.itertuples(), strict=True):
        alone = evaluate_experiment(
            load_experiment(name), kind="test", out=tmp_path / name, n_bootstrap=0, track=False
        )
        assert row.map == pytest.approx(alone.evaluation.summary["map"])
        assert row.images == 4
    assert table["map"].iloc[0] != pytest.approx(table["map"].iloc[1])
    assert (out / "compare_ap_vs_iou.png").is_file()


def test_submit_writes_a_valid_csv_that_decodes_to_the_predictions(cfg, predicted) -> None:
    outcome = submit_experiment(cfg, "tiny_test")
    assert outcome.path.resolve() == (predicted[0] / "submissions" / "tiny_test.csv").resolve()
    assert outcome.predict_run_id == predicted[2].run_id
    dataset = NucleiDataset(cfg.data.root)
    sizes = {i: dataset.load(i).labels.shape for i in dataset.ids("test")}
    frame = check_submission(outcome.path, sizes, sizes.keys())
    assert len(frame) == outcome.n_rows and outcome.n_images == len(sizes) == 4
    _, labels = predicted_labels(get_run(predicted[2].run_id))
    decoded = read_submission_labels(outcome.path, sizes)
    assert sum(int(lab.max()) for lab in labels.values()) > 0
    for image_id, lab in labels.items():
        np.testing.assert_array_equal(decoded[image_id], _canonical(lab))

    run = get_run(outcome.run_id)
    assert (
        run.data.tags["kit.role"] == "submit" and run.data.tags["kit.predict_run_id"] == predicted[2].run_id
    )
    assert [
        a.path for a in tracking.configure().MlflowClient().list_artifacts(outcome.run_id, "submission")
    ] == ["submission/tiny_test.csv"]


def test_submit_cli_prints_path_and_rows(cfg) -> None:
    from kit.cli import app

    result = CliRunner().invoke(app, ["submit", "--exp", "unet_tiny", "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert "submissions/cli.csv" in result.output and "rows for 4 images" in result.output


CLI_ERRORS = (
    (["predict", "--exp", "no_such_exp"], "unknown experiment 'no_such_exp'"),
    (["predict", "--exp", "unet_tiny", "--oof"], "experiment 'unet_tiny' has no finished train run"),
    (
        ["evaluate", "--exp", "unet_tiny"],
        "has no finished predict run of kind oof; run `kit predict --exp unet_tiny --oof`",
    ),
    (["submit", "--exp", "unet_tiny", "--name", "x"], "has no finished predict run of kind test/input"),
)


def test_cli_errors_are_one_line(project) -> None:
    from kit.cli import app

    for args, message in CLI_ERRORS:  # one project (an empty MLflow store) for all
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, args
        assert message in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, (
            result.output
        )
