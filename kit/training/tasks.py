"""What the training loop does differently per model task: batching, the loss of a batch, validation loss.

- semantic (U-Net, FPN): logits against body/border targets with `SegmentationLoss` (`TrainingCrops`);
- instance (Mask R-CNN): the model computes its own losses from boxes, labels and masks
  (`InstanceCrops`); the total is their sum and each part is logged as `train_<part>`. It has no
  validation loss: torchvision computes detection losses only in train mode, where BatchNorm would move
  its running statistics on validation data. Its epochs are ranked by validation mAP alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from kit.config import ExperimentConfig
from kit.models.registry import model_task
from kit.training.data import TrainingCrops, collate_instances
from kit.training.losses import SegmentationLoss

Batch = dict
LossStep = tuple[torch.Tensor, dict[str, float]]


def build_loss(cfg: ExperimentConfig) -> SegmentationLoss:
    """The loss of `cfg.training.loss` for `cfg.targets`."""
    loss = cfg.training.loss
    return SegmentationLoss(
        loss.mode,
        ce_weight=loss.ce_weight,
        dice_weight=loss.dice_weight,
        dice_channels=loss.dice_channels,
        channel_weights=loss.channel_weights,
        use_pixel_weights=cfg.targets.border_weight != 1.0,
        include_mask=cfg.targets.include_mask,
    )


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    return (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and device.type == "cuda"
        else contextlib.nullcontext()
    )


class SemanticTask:
    """Per-pixel logits (N, K, H, W) against `TrainingCrops` targets."""

    collate: Callable | None = None

    def __init__(self, cfg: ExperimentConfig, device: torch.device, amp: bool, channels_last: bool) -> None:
        self.loss_fn = build_loss(cfg).to(device)
        self.device, self.amp = device, amp
        self.channels_last = channels_last and device.type == "cuda"

    def loss(self, net: nn.Module, batch: Batch) -> LossStep:
        """(scalar loss, parts to log) of a training batch."""
        image = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        targets = batch["targets"].to(self.device, non_blocking=True)
        weights = batch["weights"].to(self.device) if self.loss_fn.use_pixel_weights else None
        with _autocast(self.device, self.amp):
            logits = net(image)
        return self.loss_fn(logits.float(), targets, weights), {}

    def val_loss(self, model: nn.Module, val_set: TrainingCrops) -> float | None:
        """Mean loss over the validation crops, one at a time (model in eval mode)."""
        losses = []
        for i in range(len(val_set)):
            item = val_set[i]
            logits = model(item["image"][None].to(self.device))
            weights = item["weights"][None].to(self.device) if self.loss_fn.use_pixel_weights else None
            losses.append(self.loss_fn(logits.float(), item["targets"][None].to(self.device), weights).item())
        return float(np.mean(losses))


class InstanceTask:
    """torchvision detection losses from `InstanceCrops` targets (see the module docstring)."""

    collate: Callable | None = staticmethod(collate_instances)

    def __init__(self, device: torch.device, amp: bool) -> None:
        self.device, self.amp = device, amp

    def loss(self, net: nn.Module, batch: Batch) -> LossStep:
        """(sum of the model's losses, each loss by name) of a training batch."""
        images = [image.to(self.device, non_blocking=True) for image in batch["image"]]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in batch["target"]]
        with _autocast(self.device, self.amp):
            parts = net(images, targets)
        total = torch.stack([v.float() for v in parts.values()]).sum()
        return total, {name: v.item() for name, v in parts.items()}

    def val_loss(self, model: nn.Module, val_set: object) -> float | None:
        return None


def training_task(
    model: nn.Module, cfg: ExperimentConfig, device: torch.device, amp: bool
) -> SemanticTask | InstanceTask:
    """The task strategy of `model` (its `kit_cfg["task"]`)."""
    if model_task(model) == "instance":
        return InstanceTask(device, amp)
    return SemanticTask(cfg, device, amp, cfg.training.channels_last)
