"""A trained model used anywhere: `kit.Segmenter` from checkpoint files gives exactly `kit predict`'s label
images, `kit.load_segmenter` takes runs, experiments and model URIs, the MLflow Model registers and
predicts in a fresh process, exported TorchScript/ONNX match PyTorch, and bad sources are one-line
errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_trained, inside_project
from typer.testing import CliRunner

import kit
from kit.cli import app
from kit.errors import KitError, RunNotFoundError
from kit.stages.pyfunc import split_batch

runner = CliRunner()


@pytest.fixture(scope="module")
def predicted(trained_project, tmp_path_factory):
    """The session's trained 2-fold unet_tiny (a copy), its tuned OOF predictions and its test
    predictions: (project folder, config, train outcome, test predict outcome)."""
    from kit.stages.predict import predict_experiment

    copy = copy_trained(trained_project, tmp_path_factory.mktemp("model-api") / "project")
    with inside_project(copy.root):
        predict_experiment(copy.config, oof=True, progress=False)
        test = predict_experiment(copy.config, split="test", progress=False)
    return copy.root, copy.config, copy.outcome, test


@pytest.fixture
def in_project(predicted, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(predicted[0])
    return predicted


def _predicted_labels(run_id: str) -> dict[str, np.ndarray]:
    from kit.stages.predict import load_predicted_labels
    from kit.tracking.schema import get_run

    return load_predicted_labels(get_run(run_id))[1]


def _test_images() -> dict[str, np.ndarray]:
    from kit.data.dataset import NucleiDataset

    dataset = NucleiDataset("data/synthetic")
    return {i: dataset.load(i).image for i in dataset.ids("test")}


def test_segmenter_from_checkpoint_files_gives_kit_predicts_labels(in_project) -> None:
    from kit.stages.predict import tuned_postprocess
    from kit.tracking.schema import find_train_run, fold_models

    _, cfg, _trained, test = in_project
    train = find_train_run(cfg.mlflow_experiment)
    tuned = tuned_postprocess(train)
    assert tuned is not None and tuned["n_images"] == 8  # predict --oof tuned the watershed
    files = [f.checkpoint for f in fold_models(train)]
    model = kit.Segmenter.from_checkpoints(files, postprocess=tuned["params"])
    expected = _predicted_labels(test.run_id)
    for image_id, image in _test_images().items():
        np.testing.assert_array_equal(model.predict(image), expected[image_id])


def test_load_segmenter_from_run_experiment_folder_and_uri_agree(in_project, tmp_path) -> None:
    _, cfg, trained, test = in_project
    expected = _predicted_labels(test.run_id)
    image_id, image = next(iter(_test_images().items()))
    by_run = kit.load_segmenter(trained.parent_run_id)
    by_experiment = kit.load_segmenter(cfg.name)
    folder = by_run.save(tmp_path / "model")
    by_folder = kit.load_segmenter(folder)
    from kit.stages.model import newest_model_uri
    from kit.tracking.schema import get_run

    uri = newest_model_uri(get_run(trained.parent_run_id))
    by_uri = kit.load_segmenter(uri)
    for model in (by_run, by_experiment, by_folder, by_uri):
        np.testing.assert_array_equal(model.predict(image), expected[image_id])
    seg = by_run.predict(image, details=True)
    table = seg.instances()
    assert list(table.columns) == ["label", "area", "mean_prob", "score"]
    assert table["area"].sum() == np.count_nonzero(seg.labels) and len(table) == seg.labels.max()
    assert seg.probs.shape == (3, *image.shape[:2]) and seg.channels == ("body", "border", "background")
    batch = by_run.predict([image, image])
    assert len(batch) == 2 and np.array_equal(batch[1], expected[image_id])
    assert json.loads((folder / "kit_model.json").read_text())["postprocess"] == by_run.postprocess


@pytest.mark.slow
def test_register_and_load_the_pyfunc_model_in_a_fresh_process(in_project, tmp_path) -> None:
    root, cfg, _trained, test = in_project
    result = runner.invoke(app, ["register", "--exp", cfg.name, "--name", "tiny-nuclei"])
    assert result.exit_code == 0, result.output
    assert "models:/tiny-nuclei/1" in result.output
    image_id, image = next(iter(_test_images().items()))
    np.save(tmp_path / "image.npy", image)
    script = f"""
import sys, numpy as np, mlflow
model = mlflow.pyfunc.load_model("models:/tiny-nuclei/1")
image = np.load({str(tmp_path / "image.npy")!r})
labels = model.predict(image)
batch = model.predict(np.stack([image, image]))
np.save({str(tmp_path / "labels.npy")!r}, labels)
assert batch.shape == (2, *labels.shape) and (batch[0] == labels).all()
print("training code imported:", any(m.startswith("kit.training") or m.startswith("kit.stages.train") for m in sys.modules))
"""
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "training code imported: False" in out.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), _predicted_labels(test.run_id)[image_id])


def test_predict_with_a_model_uri_on_a_folder(in_project, tmp_path) -> None:
    from kit.fileio import write_png
    from kit.stages.model import newest_model_uri
    from kit.tracking.schema import get_run

    _, _cfg, trained, test = in_project
    images = _test_images()
    folder = tmp_path / "input"
    for image_id, image in images.items():
        write_png(folder / f"{image_id}.png", image)
    uri = newest_model_uri(get_run(trained.parent_run_id))
    result = runner.invoke(app, ["predict", "--model", uri, "--input", str(folder)])
    assert result.exit_code == 0, result.output
    from kit.stages.predict import load_predicted_labels
    from kit.tracking.schema import find_predict_run

    run = find_predict_run("predictions", "input")
    assert run.data.tags["kit.model_source"] == uri
    _, labels = load_predicted_labels(run)
    expected = _predicted_labels(test.run_id)
    for image_id in images:
        np.testing.assert_array_equal(labels[image_id], expected[image_id])


@pytest.mark.slow
def test_export_torchscript_and_onnx_match_pytorch(in_project, tmp_path) -> None:
    _, cfg, trained, _ = in_project
    fold_run = trained.folds[0].run_id  # one fold model: the ONNX export takes ~15 s per network
    out = tmp_path / "export"
    args = ["export", "--exp", cfg.name, "--run", fold_run, "--out", str(out), "--data", "data/synthetic"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "export.json").read_text())
    files = {(r["format"], r["fold_model"]): r for r in info["files"]}
    assert set(files) == {("torchscript", 0), ("onnx", 0)}
    assert all(r["max_abs_diff"] < 1e-4 for r in files.values()), info["files"]
    assert "watershed" in info["not_included"]
    # Dynamic height and width: the exported network takes a size it was not traced at.
    from kit.inference.export import run_onnx, run_torchscript

    x = np.random.default_rng(0).random((1, 3, 96, 160), dtype=np.float32)
    a = run_torchscript(tmp_path / "export" / "model0.pt", x)
    b = run_onnx(tmp_path / "export" / "model0.onnx", x)
    assert a.shape == b.shape == (1, 3, 96, 160)  # body, border, background
    assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("models:/no-such-model/1", "cannot load model models:/no-such-model/1"),
        ("0123456789abcdef0123456789abcdef", "no run 0123456789abcdef0123456789abcdef"),
        ("no_such_experiment", "experiment 'no_such_experiment' has no finished train run"),
        ("missing/best.pt", "no model at missing/best.pt"),
    ],
)
def test_bad_model_sources_are_one_line_errors(in_project, source, message) -> None:
    with pytest.raises((KitError, RunNotFoundError), match=message.replace("(", r"\(")):
        kit.load_segmenter(source)


def test_a_file_that_is_not_a_checkpoint_is_named(in_project, tmp_path) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(KitError, match=f"cannot read checkpoint {bad}"):
        kit.load_segmenter(bad)
    result = runner.invoke(app, ["predict", "--model", "models:/nope/1", "--input", str(tmp_path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "models:/nope/1" in result.output


def test_pyfunc_input_is_an_image_or_a_batch() -> None:
    grey, rgb = np.zeros((5, 7), np.uint16), np.zeros((5, 7, 3), np.uint8)
    assert split_batch(grey) == ([grey], False)
    assert split_batch(rgb)[1] is False and split_batch(rgb)[0][0].shape == (5, 7, 3)
    images, batch = split_batch(np.zeros((2, 5, 7), np.float32))
    assert batch and [i.shape for i in images] == [(5, 7), (5, 7)]
    ragged = np.empty(2, dtype=object)
    ragged[:] = [grey, np.zeros((3, 3), np.uint16)]
    images, batch = split_batch(ragged)
    assert batch and [i.shape for i in images] == [(5, 7), (3, 3)]
    with pytest.raises(ValueError, match="expected an image"):
        split_batch(np.zeros((1, 2, 3, 4, 5)))


def test_public_names_are_importable_lazily() -> None:
    assert kit.Segmenter.__name__ == "Segmenter"
    assert callable(kit.load_segmenter)
    with pytest.raises(AttributeError):
        kit.no_such_name  # noqa: B018
    assert Path(kit.__file__).name == "__init__.py"
