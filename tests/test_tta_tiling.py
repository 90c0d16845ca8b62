"""D4 transforms, TTA averaging, tiled prediction and logits → probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kit.errors import ConfigError
from kit.inference import (
    TRANSFORMS,
    d4_forward,
    d4_inverse,
    model_predictor,
    predict_tiled,
    predict_tta,
    probabilities,
)
from kit.models import create_model

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("k", range(8))
def test_d4_round_trip_is_exact_on_non_square_arrays(k: int) -> None:
    x = RNG.random((2, 3, 5, 7))
    y = d4_forward(x, k)
    assert y.shape == ((2, 3, 7, 5) if k in (1, 3, 5, 7) else x.shape)
    assert np.array_equal(d4_inverse(y, k), x)
    t = torch.from_numpy(x)
    assert torch.equal(d4_inverse(d4_forward(t, k), k), t)
    assert np.array_equal(d4_forward(t, k).numpy(), y)  # numpy and torch agree


def test_d4_elements_are_as_documented_and_distinct() -> None:
    x = RNG.random((6, 6))
    assert np.array_equal(d4_forward(x, 2), x[::-1, ::-1])
    assert np.array_equal(d4_forward(x, 4), x[:, ::-1])
    assert np.array_equal(d4_forward(x, 6), x[::-1, :])
    assert np.array_equal(d4_forward(x, 7), x.T)
    assert len({d4_forward(x, k).tobytes() for k in range(8)}) == 8
    assert {d4_forward(x, k).tobytes() for k in TRANSFORMS["flips"]} == {
        x.tobytes(),
        x[:, ::-1].tobytes(),
        x[::-1].tobytes(),
        x[::-1, ::-1].tobytes(),
    }
    with pytest.raises(ValueError, match=r"0\.\.7"):
        d4_forward(x, 8)


@pytest.mark.parametrize("mode", list(TRANSFORMS))
def test_tta_with_identity_returns_the_input(mode: str) -> None:
    image = torch.rand(1, 3, 33, 47)
    out = predict_tta(lambda x: x, image, mode=mode)
    torch.testing.assert_close(out, image)
    assert out.data_ptr() != image.data_ptr()


def test_tta_with_a_per_pixel_function_equals_no_tta() -> None:
    image = torch.randn(1, 3, 20, 31)
    plain = predict_tta(torch.sigmoid, image, mode="none")
    torch.testing.assert_close(predict_tta(torch.sigmoid, image, mode="d4"), plain)
    torch.testing.assert_close(predict_tta(torch.sigmoid, image, mode="flips"), plain)


def test_tta_scales_resize_back_to_the_exact_size() -> None:
    image = torch.full((1, 2, 37, 51), 0.25)
    image[:, 1] = 0.75
    seen: list[tuple[int, int]] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return x

    out = predict_tta(record, image, mode="d4", scales=(0.5, 1.0, 1.5))
    assert out.shape == image.shape
    torch.testing.assert_close(out, image)
    assert (18, 26) in seen and (26, 18) in seen and (56, 76) in seen and len(seen) == 24


def test_tta_rejects_unknown_mode_and_bad_scales() -> None:
    image = torch.rand(1, 1, 8, 8)
    with pytest.raises(ConfigError, match="d4"):
        predict_tta(torch.sigmoid, image, mode="d8")
    with pytest.raises(ConfigError, match="positive"):
        predict_tta(torch.sigmoid, image, scales=(0.0,))


def small_conv_net() -> nn.Module:
    """Three 3×3 convs: receptive field 7 px, far smaller than the tile overlap."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 3, 3, padding=1),
    ).eval()


@pytest.mark.parametrize("multiple", [1, 32])
def test_tiled_equals_whole_image_prediction(multiple: int) -> None:
    net = small_conv_net()
    channels = ("body", "border", "background")
    shapes: list[tuple[int, ...]] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return probabilities(net(x), channels)

    image = torch.rand(1, 3, 301, 517)
    whole = predict_tiled(predict, image, tile=1024, multiple=multiple)
    assert len(shapes) == 1
    if multiple == 1:
        torch.testing.assert_close(whole, predict(image), rtol=0, atol=0)
    shapes.clear()
    tiled = predict_tiled(predict, image, tile=128, overlap=32, multiple=multiple, batch_size=3)
    assert tiled.shape == (1, 3, 301, 517)
    assert sum(s[0] for s in shapes) > 1 and all(s[2:] == (128, 128) for s in shapes)
    assert (tiled - whole).abs().max().item() < 1e-4


def test_small_image_is_predicted_whole_after_padding() -> None:
    calls: list[tuple[int, ...]] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x[:, :2]

    image = torch.rand(1, 3, 50, 70)
    out = predict_tiled(predict, image, tile=512, multiple=32)
    assert calls == [(1, 3, 64, 96)]
    torch.testing.assert_close(out, image[:, :2])


def test_padding_larger_than_the_image_falls_back_to_replicate() -> None:
    image = torch.rand(1, 1, 5, 7)
    out = predict_tiled(lambda x: x, image, tile=64, overlap=16, multiple=32)
    torch.testing.assert_close(out, image)


def test_tiling_rejects_overlap_not_smaller_than_tile() -> None:
    with pytest.raises(ConfigError, match="overlap"):
        predict_tiled(lambda x: x, torch.rand(1, 1, 300, 300), tile=64, overlap=64)


def test_probabilities_softmax_group_and_sigmoid_mask() -> None:
    logits = torch.randn(2, 4, 5, 6)
    probs = probabilities(logits, ("body", "border", "background", "mask"))
    torch.testing.assert_close(probs[:, :3].sum(1), torch.ones(2, 5, 6))
    torch.testing.assert_close(probs[:, 3], torch.sigmoid(logits[:, 3]))
    bce = probabilities(logits, ("body", "border", "background", "mask"), activation="sigmoid")
    torch.testing.assert_close(bce, torch.sigmoid(logits))


def test_probabilities_rejects_bad_mode_and_channels() -> None:
    logits = torch.randn(1, 2, 4, 4)
    with pytest.raises(ConfigError, match="softmax"):
        probabilities(logits, ("body", "border"), activation="argmax")
    with pytest.raises(ConfigError, match="at least two"):
        probabilities(logits, ("body", "mask"))
    with pytest.raises(ConfigError, match="3 names"):
        probabilities(logits, ("body", "border", "background"))


def test_model_predictor_with_tiling_and_tta_on_an_odd_image() -> None:
    model = create_model("unet", encoder="test_resnet", decoder_channels=(8,) * 5, in_channels=1).eval()
    predict = model_predictor(model)
    multiple = model.kit_cfg["output_stride"]
    image = torch.rand(1, 1, 45, 70)
    probs = predict_tta(
        lambda x: predict_tiled(predict, x, tile=64, overlap=16, multiple=multiple), image, mode="flips"
    )
    assert probs.shape == (1, 3, 45, 70)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 45, 70))
