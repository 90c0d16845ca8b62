"""Segmentation losses on logits (N, C, H, W) against `kit.targets.make_targets` targets (N, C, H, W).

Channels are ``body, border, background`` (+ ``mask``). Two modes:

- ``"softmax"``: body/border/background are one exclusive class per pixel (topcoders): cross-entropy
  over those three logits, plus BCE-with-logits on the ``mask`` channel when present. Dice uses softmax
  probabilities (sigmoid for ``mask``).
- ``"bce"``: every channel is an independent sigmoid; BCE-with-logits per channel. Dice uses sigmoid
  probabilities.

Total = ``ce_weight · CE/BCE + dice_weight · Dice``. Channel weights are rescaled to mean 1, so the
default (equal weights) gives plain cross-entropy in softmax mode and the plain mean BCE over channels
in bce mode; Dice is their weighted mean over `dice_channels`. Optional per-pixel weights (N, H, W),
e.g. `kit.targets.border_weight_map`, scale the CE/BCE term only and are normalised by their sum, so
the loss scale stays comparable. Losses are computed in float32 whatever the logits' dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kit.targets import MASK_CHANNEL, TARGET_CHANNELS

TOPCODERS_CHANNEL_WEIGHTS: dict[str, float] = {"body": 0.5, "border": 0.3, "background": 0.2}
"""Per-channel weights of the DSB2018 winners (mask, if used, needs its own entry)."""


def soft_dice_loss(
    probs: torch.Tensor, targets: torch.Tensor, channels: Sequence[int], eps: float = 1.0
) -> torch.Tensor:
    """Per-channel soft Dice loss ``1 − (2·Σpt + eps) / (Σp + Σt + eps)``, shape (len(channels),).

    `probs` and `targets` are (N, C, H, W) floats in [0, 1]; sums run over the whole batch and image
    (batch Dice), so a channel that is empty in one image (often the border) does not dominate.
    """
    index = torch.as_tensor(list(channels), dtype=torch.long, device=probs.device)
    p = probs.index_select(1, index).transpose(0, 1).flatten(1)
    t = targets.index_select(1, index).transpose(0, 1).flatten(1).to(p.dtype)
    return 1.0 - (2.0 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


class SegmentationLoss(nn.Module):
    """CE/BCE + soft Dice on body/border targets (see module doc).

    Args:
        mode: ``"softmax"`` (exclusive body/border/background) or ``"bce"`` (independent sigmoids).
        ce_weight, dice_weight: weights of the CE/BCE and Dice terms.
        dice_channels: channel names that get a Dice term.
        channel_weights: weight per channel name (e.g. `TOPCODERS_CHANNEL_WEIGHTS`), naming every
            channel in use; ``None`` weights all channels equally. Rescaled to mean 1 (module doc).
        use_pixel_weights: require per-pixel weights (N, H, W) in `forward` and apply them to CE/BCE.
        include_mask: targets carry the 4th ``mask`` channel (``make_targets(include_mask=True)``).
        eps: Dice smoothing.
    """

    def __init__(
        self,
        mode: Literal["softmax", "bce"] = "softmax",
        *,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        dice_channels: Sequence[str] = ("body", "border"),
        channel_weights: Mapping[str, float] | None = None,
        use_pixel_weights: bool = False,
        include_mask: bool = False,
        eps: float = 1.0,
    ):
        super().__init__()
        if mode not in ("softmax", "bce"):
            raise ValueError(f"mode must be 'softmax' or 'bce', got {mode!r}")
        self.channels: tuple[str, ...] = (*TARGET_CHANNELS, MASK_CHANNEL) if include_mask else TARGET_CHANNELS
        unknown = [name for name in dice_channels if name not in self.channels]
        if unknown:
            raise ValueError(f"dice_channels {unknown} not among the target channels {self.channels}")
        if channel_weights is None:
            channel_weights = dict.fromkeys(self.channels, 1.0)
        if (
            set(channel_weights) != set(self.channels)
            or any(w < 0 for w in channel_weights.values())
            or sum(channel_weights.values()) <= 0
        ):
            raise ValueError(
                f"channel_weights must give a non-negative weight (not all 0) to each of {self.channels}, "
                f"got {dict(channel_weights)}"
            )
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(
                f"need non-negative ce_weight, dice_weight, not both 0: {ce_weight}, {dice_weight}"
            )
        self.mode = mode
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.dice_channels = tuple(dice_channels)
        self.use_pixel_weights = use_pixel_weights
        self.eps = eps
        weight = torch.tensor([float(channel_weights[name]) for name in self.channels])
        self.register_buffer("channel_weight", weight * len(weight) / weight.sum(), persistent=False)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scalar loss for logits and targets (N, C, H, W) and optional pixel weights (N, H, W)."""
        return self.components(logits, targets, weights)["total"]

    def components(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """All loss parts as scalars: ``total``, ``ce`` (or ``bce``), ``dice`` and ``dice_<channel>``.

        Use ``parts["total"]`` for backward and the detached rest for logging.
        """
        self._check(logits, targets, weights)
        logits = logits.float()
        targets = targets.float()
        pixel_ce = self._pixel_ce(logits, targets)  # (N, H, W)
        if weights is None:
            ce = pixel_ce.mean()
        else:
            weights = weights.float()
            ce = (weights * pixel_ce).sum() / weights.sum().clamp_min(1e-12)
        parts = {"bce" if self.mode == "bce" else "ce": ce}
        total = self.ce_weight * ce
        if self.dice_channels:
            index = [self.channels.index(name) for name in self.dice_channels]
            per_channel = soft_dice_loss(self._probs(logits), targets, index, self.eps)
            dice_weight = self.channel_weight[index]
            dice = (per_channel * dice_weight).sum() / dice_weight.sum().clamp_min(1e-12)
            parts["dice"] = dice
            parts.update(
                {f"dice_{name}": value for name, value in zip(self.dice_channels, per_channel, strict=True)}
            )
            total = total + self.dice_weight * dice
        parts["total"] = total
        return parts

    def _pixel_ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = self.channel_weight
        if self.mode == "bce":
            bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            return torch.einsum("nchw,c->nhw", bce, weight) / len(weight)
        classes = len(TARGET_CHANNELS)
        log_probs = F.log_softmax(logits[:, :classes], dim=1)
        pixel = -torch.einsum("nchw,c->nhw", targets[:, :classes] * log_probs, weight[:classes])
        if logits.shape[1] > classes:
            mask_bce = F.binary_cross_entropy_with_logits(
                logits[:, classes], targets[:, classes], reduction="none"
            )
            pixel = pixel + weight[classes] * mask_bce
        return pixel

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.mode == "bce":
            return torch.sigmoid(logits)
        classes = len(TARGET_CHANNELS)
        return torch.cat(
            [torch.softmax(logits[:, :classes], dim=1), torch.sigmoid(logits[:, classes:])], dim=1
        )

    def _check(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> None:
        expected = len(self.channels)
        if logits.ndim != 4 or logits.shape[1] != expected:
            raise ValueError(
                f"logits must be (N, {expected}, H, W) for channels {self.channels}, got {tuple(logits.shape)}"
            )
        if targets.shape != logits.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}")
        if self.use_pixel_weights and weights is None:
            raise ValueError("use_pixel_weights=True but no pixel weights were passed")
        if not self.use_pixel_weights and weights is not None:
            raise ValueError("pixel weights were passed but use_pixel_weights=False")
        if weights is not None and weights.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"weights must be (N, H, W) = {(logits.shape[0], *logits.shape[2:])}, got {tuple(weights.shape)}"
            )
