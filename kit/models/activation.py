"""How a semantic model's logits become probabilities: its activation, recorded on the model.

A semantic network (U-Net, FPN) outputs logits (N, K, H, W) for the channels named in
`kit_cfg["channels"]`, and `kit_cfg["activation"]` says how they become probabilities:

- "softmax": softmax over the exclusive channels of `SOFTMAX_GROUP` present (at least two), sigmoid for
  every other channel (e.g. "mask");
- "sigmoid": an independent sigmoid per channel;
- "none": the model outputs probabilities already (the families fitted outside torch, `kit.models.fitted`).

The training loss decides it when the model is built (`activation_for_loss`); inference reads it from the
model, never from the training config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch

from kit.errors import ConfigError

Activation = Literal["softmax", "sigmoid", "none"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
SOFTMAX_GROUP = ("body", "border", "background")
_LOSS_ACTIVATION = {"softmax": "softmax", "bce": "sigmoid"}


def activation_for_loss(loss_mode: str) -> Activation:
    """The activation of a model trained with loss mode `loss_mode` ("softmax" → "softmax", "bce" →
    "sigmoid")."""
    try:
        return _LOSS_ACTIVATION[loss_mode]  # type: ignore[return-value]
    except KeyError:
        raise ConfigError(
            f"unknown loss mode {loss_mode!r}; choose one of {', '.join(_LOSS_ACTIVATION)}"
        ) from None


def check_activation(activation: str, channels: Sequence[str]) -> None:
    """ConfigError unless `activation` is known and fits `channels` (softmax needs two of SOFTMAX_GROUP)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if activation == "softmax" and sum(name in SOFTMAX_GROUP for name in channels) < 2:
        raise ConfigError(f"softmax needs at least two of {SOFTMAX_GROUP} in channels, got {tuple(channels)}")


def probabilities(logits: torch.Tensor, channels: Sequence[str], activation: str = "softmax") -> torch.Tensor:
    """Logits (N, K, H, W) → float32 probabilities (N, K, H, W) under `activation` (module docstring)."""
    check_activation(activation, channels)
    if logits.shape[1] != len(channels):
        raise ConfigError(f"logits have {logits.shape[1]} channels but {len(channels)} names: {channels}")
    logits = logits.float()
    if activation == "none":
        return logits
    probs = torch.sigmoid(logits)
    if activation == "softmax":
        group = [i for i, name in enumerate(channels) if name in SOFTMAX_GROUP]
        probs[:, group] = torch.softmax(logits[:, group], dim=1)
    return probs


def model_activation(model: torch.nn.Module) -> Activation:
    """The activation recorded on a semantic model (`kit_cfg["activation"]`)."""
    return model.kit_cfg["activation"]
