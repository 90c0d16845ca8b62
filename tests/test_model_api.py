"""A trained model used anywhere: `kit.Segmenter` from checkpoint files gives exactly `kit predict`'s label
images, `kit.load_segmenter` takes runs, experiments, folders and model URIs, the MLflow Model registers and
predicts in a fresh process, exported TorchScript/ONNX match PyTorch, and bad sources are one-line
errors.

Every equality below compares label images that hold nuclei: the session's model is trained long enough
to find them (`helpers.SESSION_OVERRIDES`), and `_nonempty` says so before each comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_trained, inside_project, predicted_labels
from typer.testing import CliRunner

import kit
from kit.cli import app
from kit.errors import ConfigError, KitError, RunNotFoundError

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
    from kit.tracking.schema import get_run

    return predicted_labels(get_run(run_id))[1]


def _test_images() -> dict[str, np.ndarray]:
    from kit.data.dataset import NucleiDataset

    dataset = NucleiDataset("data/synthetic")
    return {i: dataset.load(i).image for i in dataset.ids("test")}


def _nonempty(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`labels` after checking the comparison is worth making: every image holds predicted nuclei."""
    assert labels and all(lab.max() > 0 for lab in labels.values()), {
        i: int(lab.max()) for i, lab in labels.items()
    }
    return labels


def test_segmenter_from_checkpoint_files_gives_kit_predicts_labels(in_project) -> None:
    from kit.tracking.schema import find_train_run, fold_models, tuned_postprocess

    _, cfg, _trained, test = in_project
    train = find_train_run(cfg.mlflow_experiment)
    tuned = tuned_postprocess(train)
    assert tuned is not None and tuned["n_images"] == 8  # predict --oof tuned the watershed
    files = [f.checkpoint for f in fold_models(train)]
    model = kit.Segmenter.from_checkpoints(files, thresholds=tuned["params"])
    expected = _nonempty(_predicted_labels(test.run_id))
    for image_id, image in _test_images().items():
        np.testing.assert_array_equal(model.predict(image), expected[image_id])
    # Without the tuned thresholds the same models give other labels: the thresholds reach the watershed.
    untuned = kit.Segmenter.from_checkpoints(files)
    assert untuned.thresholds != model.thresholds
    assert any(not np.array_equal(untuned.predict(image), expected[i]) for i, image in _test_images().items())


def test_load_segmenter_from_run_experiment_folder_and_uri_agree(in_project, tmp_path, monkeypatch) -> None:
    import tempfile

    root, cfg, trained, test = in_project
    expected = _nonempty(_predicted_labels(test.run_id))
    images = _test_images()
    scratch = tmp_path / "tmp"  # the temporary folder, watched: loading must leave no copy behind
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    by_run = kit.load_segmenter(trained.parent_run_id)
    by_experiment = kit.load_segmenter(cfg.name)
    folder = by_run.save(tmp_path / "model")
    by_folder = kit.load_segmenter(folder)
    from kit.hub import newest_model_uri
    from kit.tracking.schema import fold_models, get_run

    by_uri = kit.load_segmenter(newest_model_uri(get_run(trained.parent_run_id)))
    assert list(scratch.iterdir()) == []  # MLflow's downloads copied every checkpoint here, never removed
    checkpoints = [f.checkpoint for f in fold_models(get_run(trained.parent_run_id))]
    assert len(checkpoints) == 2 and all(c.is_relative_to(root / "mlruns") for c in checkpoints)
    for model in (by_run, by_experiment, by_folder, by_uri):
        assert isinstance(model, kit.SegmentationModel)
        for image_id, image in images.items():
            np.testing.assert_array_equal(model.predict(image), expected[image_id])
    stored = json.loads((folder / "thresholds.json").read_text())
    assert stored == {"kind": "watershed", "values": by_run.thresholds.model_dump(mode="json")}


def test_details_batches_and_per_call_thresholds(in_project) -> None:
    _, _cfg, trained, test = in_project
    expected = _nonempty(_predicted_labels(test.run_id))
    model = kit.load_segmenter(trained.parent_run_id)
    (image_id, image), (other_id, other) = list(_test_images().items())[:2]
    seg = model.predict(image, details=True)
    table = seg.instances()
    assert list(table.columns) == ["label", "area", "mean_prob", "score"]
    assert table["area"].sum() == np.count_nonzero(seg.labels) and len(table) == seg.labels.max() > 0
    assert seg.probs.shape == (3, *image.shape[:2]) and seg.channels == ("body", "border", "background")
    batch = model.predict([image, other])
    assert isinstance(batch, list) and len(batch) == 2
    np.testing.assert_array_equal(batch[1], expected[other_id])
    stacked = model.predict(np.stack([image, image]))
    assert stacked.shape == (2, *image.shape[:2])
    np.testing.assert_array_equal(stacked[0], expected[image_id])
    # A per-call override changes this call only and is validated before any image is touched.
    strict = model.predict(image, thresholds={"seed_threshold": 0.99, "mask_threshold": 0.99})
    assert strict.max() < expected[image_id].max()
    np.testing.assert_array_equal(model.predict(image), expected[image_id])
    with pytest.raises(
        ConfigError, match="unknown key 'seed_treshold' \\(did you mean 'seed_threshold'\\?\\)"
    ):
        model.predict(image, thresholds={"seed_treshold": 0.6})
    with pytest.raises(ConfigError, match="mask_threshold"):
        model.predict(image, thresholds={"mask_threshold": 1.5})
    with pytest.raises(KitError, match="got an array of shape \\(1, 2, 3, 4, 5\\)"):
        model.predict(np.zeros((1, 2, 3, 4, 5)))


def test_the_activation_is_recorded_on_the_model_not_read_from_training(in_project, tmp_path) -> None:
    from kit.models.checkpoint import load_checkpoint, save_checkpoint

    _, _cfg, trained, _ = in_project
    model = kit.load_segmenter(trained.parent_run_id)
    assert all(m.kit_cfg["activation"] == "softmax" for m in model.models)
    # A checkpoint whose stored training config claims another loss mode still predicts with the
    # activation its model recorded.
    network = model.models[0]
    config = model.config.to_dict()
    config["training"]["loss"]["mode"] = "bce"
    save_checkpoint(tmp_path / "relabelled.pt", network, config)
    reloaded, _, _ = load_checkpoint(tmp_path / "relabelled.pt")
    assert reloaded.kit_cfg["activation"] == "softmax"
    image = next(iter(_test_images().values()))
    a = kit.Segmenter([network], model.config).predict(image, details=True).probs
    b = kit.Segmenter.from_checkpoints(tmp_path / "relabelled.pt").predict(image, details=True).probs
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-5)  # softmax over body/border/background


def test_a_checkpoint_older_than_recorded_activations_takes_it_from_its_loss_mode(
    in_project, tmp_path
) -> None:
    import torch

    from kit.models.checkpoint import load_checkpoint

    _, _cfg, trained, _ = in_project
    model = kit.load_segmenter(trained.parent_run_id)
    path = tmp_path / "old.pt"
    payload = {
        "format": "kit-checkpoint-1",
        "state_dict": model.models[0].state_dict(),
        "model_name": "unet",
        "model_kwargs": {
            k: v
            for k, v in model.models[0].kit_cfg["model_kwargs"].items()
            if k not in ("activation", "pretrained")
        },
        "config": {**model.config.to_dict(), "training": {"loss": {"mode": "bce"}}},
        "extra": {},
    }
    torch.save(payload, path)
    old, _, _ = load_checkpoint(path)
    assert old.kit_cfg["activation"] == "sigmoid"


@pytest.mark.slow
def test_register_and_load_the_pyfunc_model_in_a_fresh_process(in_project, tmp_path) -> None:
    root, cfg, _trained, test = in_project
    result = runner.invoke(app, ["register", "--exp", cfg.name, "--name", "tiny-nuclei"])
    assert result.exit_code == 0, result.output
    assert "models:/tiny-nuclei/1" in result.output
    expected = _nonempty(_predicted_labels(test.run_id))
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
    assert "cloudpickle" not in out.stderr.lower() and "type hint" not in out.stderr.lower(), out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected[image_id])


@pytest.mark.slow
def test_mlflow_models_serve_answers_each_documented_json_form(in_project, tmp_path) -> None:
    """`mlflow models serve --env-manager local` on 127.0.0.1: one image and a batch as nested lists,
    base64 PNG files as a list and as a table column, all give the Segmenter's labels; a wrong shape is a
    400 saying what was expected."""
    import base64
    import signal
    import time
    import urllib.error
    import urllib.request

    import cv2
    from helpers import free_port

    from kit.hub import newest_model_uri
    from kit.tracking.schema import get_run

    root, _cfg, trained, _ = in_project
    uri = newest_model_uri(get_run(trained.parent_run_id))
    images = list(_test_images().values())  # grey and RGB
    same = [image for image in images if image.shape == images[0].shape]
    assert len(same) >= 2 and len({image.ndim for image in images}) == 2
    expected = [kit.load_segmenter(uri).predict(image) for image in images]
    _nonempty(dict(enumerate(expected)))
    port = free_port()
    bin_dir = Path(sys.executable).parent  # as in an activated venv: mlflow runs uvicorn from the PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    mlflow_cli = bin_dir / "mlflow"
    server = subprocess.Popen(
        [
            str(mlflow_cli),
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115 - closed with the process
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def post(body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the model server did not come up"
                time.sleep(0.5)
        status, out = post({"inputs": images[0].tolist()})
        assert status == 200, out
        np.testing.assert_array_equal(np.asarray(out["predictions"]), expected[0])
        status, out = post({"inputs": [image.tolist() for image in same]})
        assert status == 200, out
        same_expected = [
            e for e, image in zip(expected, images, strict=True) if image.shape == images[0].shape
        ]
        np.testing.assert_array_equal(np.asarray(out["predictions"]), np.stack(same_expected))
        files = [
            base64.b64encode(cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)[1]).decode()
            for image in images
        ]
        status, out = post({"inputs": files})
        assert status == 200, out
        np.testing.assert_array_equal(np.asarray(out["predictions"]), np.stack(expected))
        status, out = post({"dataframe_records": [{"image": f} for f in files]})
        assert status == 200, out
        np.testing.assert_array_equal(np.asarray(out["predictions"]), np.stack(expected))
        status, out = post({"inputs": [[[[[0, 1]]]]]})
        assert status == 400 and "expected an image" in out["message"], out
        status, out = post({"inputs": ["not base64!"]})
        assert status == 400 and "input 0 is not base64" in out["message"], out
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def test_logging_a_model_validates_its_serving_example_without_warnings(in_project, capfd) -> None:
    from kit.hub import log_train_model

    _, _cfg, trained, _ = in_project
    capfd.readouterr()
    log_train_model(trained.parent_run_id)
    err = capfd.readouterr().err.lower()
    assert "failed to validate" not in err and "cloudpickle" not in err and "type hint" not in err, err


def test_logged_models_are_named_after_experiment_and_role(in_project) -> None:
    import mlflow

    from kit.hub import newest_model_uri
    from kit.tracking.schema import get_run

    _, cfg, trained, _ = in_project
    uri = newest_model_uri(get_run(trained.parent_run_id))
    model = mlflow.get_logged_model(uri.removeprefix("models:/"))
    assert model.name == f"{cfg.name}-train"
    code = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri)) / "MLmodel"
    assert "pyfunc_model.py" in code.read_text()  # logged from code: no pickled python_model
    assert "python_model.pkl" not in {p.name for p in code.parent.rglob("*")}


def test_predict_with_a_model_uri_on_a_folder(in_project, tmp_path) -> None:
    import torch

    from kit.fileio import write_png
    from kit.hub import newest_model_uri
    from kit.models.precision import resolve_precision
    from kit.tracking.schema import find_predict_run, get_run

    _, _cfg, trained, test = in_project
    images = _test_images()
    folder = tmp_path / "input"
    for image_id, image in images.items():
        write_png(folder / f"{image_id}.png", image)
    uri = newest_model_uri(get_run(trained.parent_run_id))
    result = runner.invoke(app, ["predict", "--model", uri, "--input", str(folder)])
    assert result.exit_code == 0, result.output
    run = find_predict_run("predictions", "input")
    assert run.data.tags["kit.model_source"] == uri
    # the config's inference.precision (auto) as resolved on this CPU
    assert run.data.params["inference.precision_used"] == resolve_precision("auto", torch.device("cpu"))
    _, labels = predicted_labels(run)
    expected = _nonempty(_predicted_labels(test.run_id))
    for image_id in images:
        np.testing.assert_array_equal(labels[image_id], expected[image_id])


@pytest.mark.slow
def test_export_torchscript_and_onnx_match_pytorch_and_the_segmenter(in_project, tmp_path) -> None:
    import torch

    from kit.inference.export import network_input, run_onnx, run_torchscript
    from kit.inference.postprocess import instances_from_probs

    _, cfg, trained, _ = in_project
    fold_run = trained.folds[0].run_id  # one fold model: the ONNX export takes ~15 s per network
    out = tmp_path / "export"
    args = ["export", "--exp", cfg.name, "--run", fold_run, "--out", str(out), "--data", "data/synthetic"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "export.json").read_text())
    assert {(r["format"], r["fold_model"]) for r in info["files"]} == {("torchscript", 0), ("onnx", 0)}
    assert "watershed" in info["not_included"]
    # Parity computed here, not taken from export.json: the files against the PyTorch network, and the
    # files plus kit's watershed against the Segmenter's labels.
    loaded = kit.load_segmenter(fold_run, device="cpu")
    # the files are float32: compare with the Segmenter in float32 (`inference.precision` may be bf16)
    inference = loaded.config.inference.model_copy(update={"precision": "fp32"})
    config = loaded.config.model_copy(update={"inference": inference})
    segmenter = kit.Segmenter(loaded.models, config, device="cpu", thresholds=loaded.thresholds)
    network = segmenter.models[0]
    stride = network.kit_cfg["output_stride"]
    for image in _test_images().values():
        x = network_input(image, segmenter.in_channels, stride)
        with torch.no_grad():
            logits = network(torch.from_numpy(x))
        expected = torch.softmax(logits, dim=1).numpy()
        for run in (run_torchscript, run_onnx):
            probs = run(out / f"model0{'.pt' if run is run_torchscript else '.onnx'}", x)
            assert np.abs(probs - expected).max() < 1e-4
            h, w = image.shape[:2]
            labels = instances_from_probs(
                probs[0, :, :h, :w], ("body", "border", "background"), **segmenter.thresholds.model_dump()
            )
            reference = _nonempty({"image": segmenter.predict(image)})["image"]
            np.testing.assert_array_equal(labels, reference)
    # Dynamic height and width: the exported network takes a size it was not traced at.
    x = np.random.default_rng(0).random((1, 3, 96, 160), dtype=np.float32)
    a = run_torchscript(out / "model0.pt", x)
    b = run_onnx(out / "model0.onnx", x)
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


def test_public_names_are_importable_lazily() -> None:
    assert kit.Segmenter.__name__ == "Segmenter"
    assert issubclass(kit.Segmenter, kit.SegmentationModel)
    assert issubclass(kit.EnsembleSegmenter, kit.SegmentationModel)
    assert callable(kit.load_segmenter)
    with pytest.raises(AttributeError):
        kit.no_such_name  # noqa: B018
    assert Path(kit.__file__).name == "__init__.py"
