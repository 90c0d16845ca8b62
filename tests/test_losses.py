"""Losses: zero for perfect logits, gradients, overfitting a tiny net, weights, shape checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kit.targets import border_weight_map, make_targets
from kit.training.losses import TOPCODERS_CHANNEL_WEIGHTS, SegmentationLoss, soft_dice_loss


def scene() -> np.ndarray:
    labels = np.zeros((32, 32), np.int32)
    labels[4:14, 4:14] = 1
    labels[4:14, 14:24] = 2
    labels[20:28, 6:16] = 3
    return labels


def batch(include_mask: bool = False) -> torch.Tensor:
    return torch.from_numpy(make_targets(scene(), include_mask=include_mask))[None].repeat(2, 1, 1, 1)


CONFIGS = [
    {"mode": "softmax"},
    {"mode": "softmax", "include_mask": True},
    {"mode": "bce"},
    {"mode": "bce", "include_mask": True, "dice_channels": ("body", "border", "mask")},
    {"mode": "softmax", "channel_weights": TOPCODERS_CHANNEL_WEIGHTS},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_perfect_logits_give_zero_loss(config: dict) -> None:
    targets = batch(config.get("include_mask", False))
    parts = SegmentationLoss(**config).components((targets * 2 - 1) * 30, targets)
    assert float(parts["total"]) < 1e-4
    assert {"total", "dice", "dice_body", "dice_border"} <= set(parts)
    assert ("ce" in parts) == (config["mode"] == "softmax")


@pytest.mark.parametrize("config", CONFIGS)
def test_gradients_flow(config: dict) -> None:
    targets = batch(config.get("include_mask", False))
    logits = torch.randn(targets.shape, requires_grad=True)
    loss = SegmentationLoss(**config)(logits, targets)
    assert loss.ndim == 0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["softmax", "bce"])
def test_tiny_net_overfits_one_target(mode: str) -> None:
    torch.manual_seed(0)
    labels = scene()
    image = torch.from_numpy((labels * 60 % 256).astype(np.float32) / 255.0)[
        None, None
    ]  # one intensity per nucleus
    targets = torch.from_numpy(make_targets(labels))[None]
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 3, 1),
    )
    criterion = SegmentationLoss(mode)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        optimiser.zero_grad()
        loss = criterion(net(image), targets)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_pixel_weights_scale_the_border_term() -> None:
    targets = batch()
    weights = torch.from_numpy(border_weight_map(scene()))[None].repeat(2, 1, 1)
    logits = torch.zeros_like(targets)
    logits[:, 0] = 5.0  # predicts body everywhere: wrong on border and background
    plain = SegmentationLoss(dice_weight=0.0).components(logits, targets)["ce"]
    ones = SegmentationLoss(dice_weight=0.0, use_pixel_weights=True).components(
        logits, targets, torch.ones(2, 32, 32)
    )
    weighted = SegmentationLoss(dice_weight=0.0, use_pixel_weights=True).components(logits, targets, weights)
    torch.testing.assert_close(ones["ce"], plain)
    assert float(weighted["ce"]) != pytest.approx(float(plain))


def test_soft_dice_values() -> None:
    t = batch()
    assert soft_dice_loss(t, t, [0, 1, 2]).abs().max() < 1e-6
    disjoint = soft_dice_loss(1 - t, t, [0, 1])
    assert (disjoint > 0.99).all() and disjoint.shape == (2,)


def test_half_precision_logits_give_a_float32_loss() -> None:
    targets = batch()
    assert SegmentationLoss()(torch.randn(targets.shape).half(), targets).dtype == torch.float32


def test_shape_and_config_errors() -> None:
    targets = batch()
    loss = SegmentationLoss()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        loss(torch.zeros(2, 4, 32, 32), torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match="targets shape"):
        loss(torch.zeros_like(targets), targets[:, :, :16])
    with pytest.raises(ValueError, match="use_pixel_weights=False"):
        loss(torch.zeros_like(targets), targets, torch.ones(2, 32, 32))
    with pytest.raises(ValueError, match="no pixel weights"):
        SegmentationLoss(use_pixel_weights=True)(torch.zeros_like(targets), targets)
    with pytest.raises(ValueError, match=r"weights must be \(N, H, W\)"):
        SegmentationLoss(use_pixel_weights=True)(torch.zeros_like(targets), targets, torch.ones(2, 1, 32, 32))
    with pytest.raises(ValueError, match="mode"):
        SegmentationLoss("dice")
    with pytest.raises(ValueError, match="dice_channels"):
        SegmentationLoss(dice_channels=("mask",))
    with pytest.raises(ValueError, match="channel_weights"):
        SegmentationLoss(include_mask=True, channel_weights=TOPCODERS_CHANNEL_WEIGHTS)
