"""Model registry contract: every registered model builds, runs, checkpoints; errors name the fix.

The per-pixel output checks run over the semantic models; instance models (Mask R-CNN) return detections,
checked in tests/test_maskrcnn.py. Every model, whatever its task, must pass `test_every_model_...`; models
fitted outside torch (`kit.models.fitted`) are fitted on one small image first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from kit.errors import ConfigError, KitError
from kit.models import TASKS, create_model, list_models, load_checkpoint, model_arguments, save_checkpoint
from kit.models.fitted import FittedModule
from kit.models.unet import load_encoder_weights

TINY_ENCODER = "test_resnet"  # timm's test model: ~0.4 M parameters, strides 2..32
# Per registered model: arguments that make it tiny. A new model must add its entry here.
TINY_KWARGS: dict[str, dict[str, object]] = {
    "unet": {"encoder": TINY_ENCODER, "decoder_channels": (16, 16, 16, 16, 16)},
    "fpn": {"encoder": TINY_ENCODER, "decoder_channels": (32, 32)},
    "maskrcnn": {"encoder": TINY_ENCODER, "fpn_channels": 16, "box_head_size": 32},
    "deepcell": {"widths": (4, 4, 4, 4, 4), "dense": 8},
    "classical": {"sigmas": (1.0,), "methods": ("otsu",)},
    "pixel_forest": {"sigmas": (1.0,), "samples_per_class": 50, "rounds": 3},
}
THREE = ("body", "border", "background")
FOUR = (*THREE, "mask")
WITH_ENCODER = [n for n in list_models() if "encoder" in model_arguments(n)]
"""Models on a timm/torchvision encoder (output stride 32 on `TINY_ENCODER`)."""
WITH_CHANNELS = [n for n in list_models(task="semantic") if "channels" in model_arguments(n)]
"""Semantic models whose output channels are chosen (the others' are fixed by the family)."""


def tiny(name: str, **kwargs: object) -> torch.nn.Module:
    assert name in TINY_KWARGS, f"add tiny test kwargs for registered model {name!r} to TINY_KWARGS"
    model = create_model(name, **{**TINY_KWARGS[name], **kwargs}).eval()
    if isinstance(model, FittedModule) and not model.is_fitted:
        labels = np.zeros((48, 48), dtype=np.int32)
        labels[8:20, 8:20], labels[20:32, 14:26], labels[34:44, 30:42] = 1, 2, 3
        image = np.where(labels > 0, 200, 30).astype(np.uint8)
        model.fit(
            [(np.repeat(image[..., None], model.kit_cfg["in_channels"], axis=2), labels)],
            evaluate=lambda m: {},
        )
    return model


def test_registry_lists_the_unet_family() -> None:
    assert {"unet", "fpn"} <= set(list_models())
    assert list_models("f*") == ["fpn"]


@pytest.mark.parametrize("name", list_models())
def test_every_model_declares_its_contract_and_checkpoints(name: str, tmp_path: Path) -> None:
    model = tiny(name, in_channels=1)
    cfg = model.kit_cfg
    assert cfg["task"] in TASKS and cfg["model_name"] == name
    assert cfg["in_channels"] == 1 and cfg["channels"] and cfg["output_stride"] >= 1
    if name in WITH_ENCODER:
        assert cfg["encoder"] == TINY_ENCODER and cfg["output_stride"] == 32
    loaded, _, _ = load_checkpoint(save_checkpoint(tmp_path / "model.pt", model, {}, {}))
    assert loaded.kit_cfg["task"] == cfg["task"]
    for key, value in model.state_dict().items():
        other = loaded.state_dict()[key]  # tensors, or a fitted model's extra state (plain values)
        assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value, key
    if cfg["task"] == "semantic":
        x = torch.rand(1, 1, 64, 64)
        with torch.no_grad():
            out = model(x)
            assert out.shape == (1, len(cfg["channels"]), 64, 64) and torch.equal(loaded(x), out)


@pytest.mark.parametrize("name", WITH_CHANNELS)
@pytest.mark.parametrize("channels", [THREE, FOUR])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shape_and_kit_cfg(name: str, channels: tuple[str, ...], in_channels: int) -> None:
    model = tiny(name, channels=channels, in_channels=in_channels)
    with torch.no_grad():
        out = model(torch.rand(1, in_channels, 64, 64))
    assert out.shape == (1, len(channels), 64, 64)
    cfg = model.kit_cfg
    assert cfg["arch"] == name
    assert cfg["channels"] == channels
    assert cfg["in_channels"] == in_channels
    assert cfg["model_name"] == name
    if name in WITH_ENCODER:
        assert cfg["output_stride"] == 32 and cfg["encoder"] == TINY_ENCODER


def test_none_kwargs_mean_builder_default_and_tu_prefix_is_accepted() -> None:
    model = create_model("unet", encoder=f"tu-{TINY_ENCODER}", in_channels=None, encoder_depth=None)
    assert model.kit_cfg["in_channels"] == 3
    assert model.kit_cfg["encoder"] == TINY_ENCODER
    assert "in_channels" not in model.kit_cfg["model_kwargs"]


@pytest.mark.parametrize("name", [n for n in WITH_CHANNELS if n in WITH_ENCODER])
@pytest.mark.parametrize("depth", [3, 4])
def test_shallow_encoder_sets_output_stride_and_keeps_the_size(name: str, depth: int) -> None:
    kwargs = {"decoder_channels": (16,) * depth} if name == "unet" else {}
    model = tiny(name, encoder_depth=depth, **kwargs)
    stride = model.kit_cfg["output_stride"]
    assert stride == 2**depth
    with torch.no_grad():
        assert model(torch.rand(1, 3, 3 * stride, 5 * stride)).shape == (1, 3, 3 * stride, 5 * stride)


def test_unknown_model_lists_known_and_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'unett' \(did you mean 'unet'\?\).*fpn"):
        create_model("unett")


def test_unknown_encoder_suggests_a_timm_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown encoder 'resnet3'.*did you mean"):
        create_model("unet", encoder="resnet3")


def test_unknown_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="encodr"):
        create_model("unet", encodr=TINY_ENCODER)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("unet", {"decoder_channels": (16, 16)}),
        ("fpn", {"decoder_channels": (16,)}),
        ("fpn", {"encoder_depth": 2}),
    ],
)
def test_bad_decoder_settings_are_config_errors(name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=name):
        create_model(name, encoder=TINY_ENCODER, **kwargs)


@pytest.mark.parametrize("name", WITH_CHANNELS)
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = tiny(name, channels=FOUR, in_channels=1)
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, {"lr": 1e-3}, {"epoch": 7})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind

    loaded, config, extra = load_checkpoint(path)
    assert (config, extra) == ({"lr": 1e-3}, {"epoch": 7})
    assert loaded.kit_cfg["channels"] == FOUR
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_load_checkpoint_missing_or_corrupt_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(KitError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(KitError, match=r"bad\.pt"):
        load_checkpoint(bad)


def test_missing_pretrained_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.pth"):
        create_model("unet", encoder=TINY_ENCODER, pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_file_loads_encoder_and_adapts_first_conv(tmp_path: Path) -> None:
    source = timm.create_model(TINY_ENCODER)  # a classifier: its head keys are unexpected
    torch.save({"state_dict": source.state_dict()}, tmp_path / "enc.pth")
    model = create_model("unet", encoder=TINY_ENCODER, in_channels=1, pretrained=str(tmp_path / "enc.pth"))
    encoder = model.encoder.model
    assert torch.equal(encoder.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    # One input channel: timm's adaptation sums the RGB filters.
    assert torch.allclose(encoder.conv1[0].weight, source.conv1[0].weight.sum(dim=1, keepdim=True))

    report = load_encoder_weights(model, tmp_path / "enc.pth")
    assert report["missing"] == report["mismatched"] == 0
    assert report["unexpected"] == 2  # fc.weight, fc.bias


def test_pretrained_file_can_be_a_kit_checkpoint(tmp_path: Path) -> None:
    trained = tiny("fpn")
    path = save_checkpoint(tmp_path / "fpn.pt", trained, {}, {})
    model = create_model("unet", encoder=TINY_ENCODER, pretrained=str(path))
    for key, value in trained.encoder.model.state_dict().items():
        assert torch.equal(model.encoder.model.state_dict()[key], value), key
