"""`deepcell`: DeepCell's 31×31 patch classifier (Van Valen et al. 2016; seeds 000 and 003) in its
fully-convolutional form.

The patch network classifies the centre pixel of a 31×31 patch with convolutions, two 2×2 max-poolings
and dense layers. Its fully-convolutional form (the "d-regularly sparse kernels" DeepCell's authors used
to speed it up) computes the same function for every pixel of an image in one pass: no down-sampling,
each pooling keeps stride 1 and doubles the dilation of every layer after it, and the dense layers
become 1×1 convolutions. Layers (kernel, dilation): conv 4 d1, max-pool 2 d1, conv 3 d2,
conv 3 d2, max-pool 2 d2, conv 3 d4, conv 3 d4, then 1×1 "dense" layers: a receptive field of exactly
1 + Σ (k − 1)·d = 31 pixels. Every convolution is followed by batch normalisation and a ReLU.

It is trained like a U-Net on kit's three-class targets (body, touching border, background) with the
existing trainer: a crop's loss is the patch classifier's loss over every pixel of the crop. It keeps the
full resolution through every layer, which is what makes it slow on large images (benchmarks/bench_families.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kit.errors import ConfigError
from kit.models.activation import Activation, check_activation
from kit.models.registry import register_model
from kit.models.weights_folder import WeightsSource

LAYERS: tuple[tuple[str, int, int], ...] = (
    ("conv", 4, 1),
    ("pool", 2, 1),
    ("conv", 3, 2),
    ("conv", 3, 2),
    ("pool", 2, 2),
    ("conv", 3, 4),
    ("conv", 3, 4),
)
"""(kind, kernel, dilation) of the layers before the dense head."""


def receptive_field(layers: Sequence[tuple[str, int, int]] = LAYERS) -> int:
    """The side of the square of input pixels one output pixel depends on: 1 + Σ (kernel − 1)·dilation."""
    return 1 + sum((k - 1) * d for _, k, d in layers)


def _same_padding(kernel: int, dilation: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that keeps the size of a stride-1 window (the extra pixel of an
    even window goes after)."""
    total = (kernel - 1) * dilation
    return (total // 2, total - total // 2) * 2


class _DilatedPool(nn.Module):
    """Max over a k×k window with dilation d and stride 1, edge-replicated so the output keeps the input's
    size."""

    def __init__(self, kernel: int, dilation: int) -> None:
        super().__init__()
        self.kernel, self.dilation = kernel, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _same_padding(self.kernel, self.dilation), mode="replicate")
        return F.max_pool2d(x, self.kernel, stride=1, dilation=self.dilation)


def _conv(channels: int, out: int, kernel: int, dilation: int) -> list[nn.Module]:
    """A size-keeping convolution (zero padding; explicit for an even kernel)."""
    left, right, _, _ = _same_padding(kernel, dilation)
    if left == right:
        return [nn.Conv2d(channels, out, kernel, padding=left, dilation=dilation, bias=False)]
    return [
        nn.ZeroPad2d(_same_padding(kernel, dilation)),
        nn.Conv2d(channels, out, kernel, dilation=dilation, bias=False),
    ]


class DeepCellFCN(nn.Module):
    """See the module docstring: (N, in_channels, H, W) in [0, 1] → logits (N, len(channels), H, W)."""

    def __init__(self, in_channels: int, n_classes: int, widths: Sequence[int], dense: int) -> None:
        super().__init__()
        convs = [layer for layer in LAYERS if layer[0] == "conv"]
        if len(widths) != len(convs):
            raise ConfigError(
                f"deepcell: widths needs {len(convs)} entries (one per conv), got {list(widths)}"
            )
        blocks: list[nn.Module] = []
        width_of = iter(widths)
        channels = in_channels
        for kind, kernel, dilation in LAYERS:
            if kind == "pool":
                blocks.append(_DilatedPool(kernel, dilation))
                continue
            out = next(width_of)
            blocks += [
                *_conv(channels, out, kernel, dilation),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        blocks += [
            nn.Conv2d(channels, dense, 1, bias=False),
            nn.BatchNorm2d(dense),
            nn.ReLU(inplace=True),
            nn.Conv2d(dense, n_classes, 1),
        ]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model
def deepcell(
    in_channels: int = 1,
    channels: Sequence[str] = ("body", "border", "background"),
    widths: Sequence[int] = (32, 64, 64, 64, 64),
    dense: int = 128,
    activation: Activation = "softmax",
) -> DeepCellFCN:
    """DeepCell's 31×31 network in fully-convolutional form (module docstring): `widths` are the five
    convolutions' channels, `dense` the width of the 1×1 dense layer, `channels` the output maps."""
    channels = tuple(channels)
    check_activation(activation, channels)
    model = DeepCellFCN(in_channels, len(channels), widths, dense)
    model.kit_cfg = {
        "arch": "deepcell",
        "in_channels": in_channels,
        "channels": channels,
        "activation": activation,
        "output_stride": 1,
        "receptive_field": receptive_field(),
        "weights": WeightsSource("random", "deepcell"),
    }
    return model
