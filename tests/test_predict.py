"""Predict stage: out-of-fold predictions never use a model that trained on the image, a split is averaged
over the fold models, any folder of images of any size is predicted, and everything is read back from MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import copy_trained, predicted_labels
from typer.testing import CliRunner

from kit import tracking
from kit.config import load_experiment
from kit.data.dataset import NucleiDataset
from kit.errors import ConfigError, DataError
from kit.fileio import write_png
from kit.inference.artifacts import read_index, read_labels, read_probs
from kit.stages.predict import predict_experiment
from kit.tracking.schema import find_predict_run, get_run, run_folder


@pytest.fixture(scope="module")
def trained(trained_project, tmp_path_factory):
    """A copy of the session's trained unet_tiny project, for this module's predict runs: (folder, outcome)."""
    copy = copy_trained(trained_project, tmp_path_factory.mktemp("predict") / "project")
    return copy.root, copy.outcome


@pytest.fixture
def cfg(trained, monkeypatch):
    """The unet_tiny config, working inside the trained project (its MLflow store)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(trained[0])
    return load_experiment("unet_tiny")


def test_oof_predicts_each_train_image_once_with_a_model_that_never_saw_it(cfg, trained) -> None:
    from kit.training.data import fold_ids

    outcome = predict_experiment(cfg, oof=True, progress=False)
    # Everything below is read back from MLflow, not from the outcome.
    run = get_run(outcome.run_id)
    assert run.data.tags["kit.role"] == "predict" and run.data.tags["kit.predict_kind"] == "oof"
    assert run.data.tags["kit.train_run_id"] == trained[1].parent_run_id
    index = read_index(run_folder(run))
    dataset = NucleiDataset(cfg.data.root)
    annotated_train = sorted(i for i in dataset.ids("train") if dataset.mask_paths(i) is not None)
    assert sorted(index["image_id"]) == annotated_train
    assert index["image_id"].is_unique
    mlflow = tracking.configure()
    for row in index.itertuples(index=False):
        assert ";" not in row.model_runs, "an out-of-fold image is predicted by exactly one model"
        fold_run = mlflow.get_run(row.model_runs)
        assert fold_run.data.tags["kit.parent_run_id"] == run.data.tags["kit.train_run_id"]
        fold = int(fold_run.data.tags["kit.fold"])
        assert row.folds == str(fold)
        trained_on, _ = fold_ids(dataset, fold)
        assert row.image_id not in trained_on
        val_ids = mlflow.artifacts.load_text(f"{fold_run.info.artifact_uri}/val_ids.txt").split()
        assert row.image_id in val_ids


def test_test_split_averages_all_fold_models(cfg, trained) -> None:
    from kit.inference.predictor import Predictor
    from kit.models import load_checkpoint

    outcome = predict_experiment(cfg, split="test", progress=False)
    assert outcome.kind == "test"
    run = find_predict_run(cfg.mlflow_experiment, "test")
    assert run.info.run_id == outcome.run_id
    assert run.data.params["tta"] == "none" and run.data.params["split"] == "test"
    root = run_folder(run)
    index = read_index(root)
    dataset = NucleiDataset(cfg.data.root)
    assert index["image_id"].tolist() == dataset.ids("test")
    fold_runs = sorted(f.run_id for f in trained[1].folds)
    for row in index.itertuples(index=False):
        assert sorted(row.model_runs.split(";")) == fold_runs and row.folds == "0;1"
        assert read_labels(root / row.labels).shape == (row.height, row.width)
        assert (root / row.probs).is_file()
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {f"labels/{i}.png" for i in index["image_id"]} <= files
    assert {f"probs/{i}.npz" for i in index["image_id"]} <= files
    assert {"predictions.csv", "instances.csv", "config.yaml", "postprocess.json"} <= files

    # The stored maps are the mean of the two fold models (float16 precision).
    first = index.iloc[0]
    probs, channels = read_probs(root / first["probs"])
    models = []
    for fold_run in fold_runs:
        path = tracking.configure().artifacts.download_artifacts(
            run_id=fold_run, artifact_path="checkpoints/best.pt"
        )
        models.append(load_checkpoint(path)[0])
    from kit.data.normalize import normalize_image

    image = normalize_image(dataset.load(first["image_id"]).image, cfg.data.channels)
    singles = [
        Predictor([m], tile=cfg.inference.tile, overlap=cfg.inference.overlap).predict_probs(image)
        for m in models
    ]
    assert channels == tuple(models[0].kit_cfg["channels"])
    np.testing.assert_allclose(probs, (singles[0] + singles[1]) / 2, atol=2e-3)


def test_split_the_models_trained_on_is_refused(cfg) -> None:
    with pytest.raises(ConfigError, match="--oof"):
        predict_experiment(cfg, split="train", progress=False)


def _odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(0)
    write_png(folder / "grey_67x91.png", rng.integers(0, 255, (67, 91), dtype=np.uint8))
    write_png(folder / "rgb_130x45.png", rng.integers(0, 255, (130, 45, 3), dtype=np.uint8))
    write_png(folder / "deep_33x257.png", rng.integers(0, 4000, (33, 257), dtype=np.uint16))
    return {"grey_67x91": (67, 91), "rgb_130x45": (130, 45), "deep_33x257": (33, 257)}


def test_input_folder_of_plain_pngs_of_odd_sizes_via_cli(cfg, tmp_path) -> None:
    from kit.cli import app

    sizes = _odd_images(tmp_path / "pngs")
    result = CliRunner().invoke(
        app, ["predict", "--exp", "unet_tiny", "--input", str(tmp_path / "pngs"), "--tta", "d4"]
    )
    assert result.exit_code == 0, result.output
    assert "input: 3 image(s)" in result.output
    run = find_predict_run(cfg.mlflow_experiment, "input")
    assert run.data.params["tta"] == "d4"
    index, labels = predicted_labels(run)
    assert {i: lab.shape for i, lab in labels.items()} == sizes
    assert set(index["split"]) == {""} and index["source"].str.endswith(".png").all()


def test_a_predict_run_spans_its_work_and_its_experiment_is_for_model_training(cfg, tmp_path) -> None:
    """The MLflow UI shows a predict run's real duration (its run is opened only to record the work, so
    its start is dated back) and opens its experiment on the runs table."""
    import time

    sizes = _odd_images(tmp_path / "pngs")
    before = time.time()
    outcome = predict_experiment(cfg, input_dir=tmp_path / "pngs", tta="d4", progress=False)
    after = time.time()
    run = get_run(outcome.run_id)
    assert len(outcome.index) == len(sizes)
    start, end = run.info.start_time / 1000, run.info.end_time / 1000
    assert before - 1 <= start <= before + 5  # when the work began, not when it was recorded
    assert end - start >= outcome.index["seconds"].sum() and end <= after + 1
    experiment = tracking.configure().MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_input_folder_in_dsb_layout(cfg, tmp_path) -> None:
    rng = np.random.default_rng(1)
    for image_id, shape in (("a1", (50, 61)), ("b2", (70, 40, 3))):
        write_png(
            tmp_path / "dsb" / image_id / "images" / f"{image_id}.png",
            rng.integers(0, 255, shape, dtype=np.uint8),
        )
    outcome = predict_experiment(cfg, input_dir=tmp_path / "dsb", progress=False)
    assert outcome.index["image_id"].tolist() == ["a1", "b2"]
    assert outcome.index[["height", "width"]].values.tolist() == [[50, 61], [70, 40]]


def test_unreadable_input_image_and_empty_folder_are_named(cfg, tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png"):
        predict_experiment(cfg, input_dir=tmp_path / "in", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        predict_experiment(cfg, input_dir=tmp_path / "empty", progress=False)
