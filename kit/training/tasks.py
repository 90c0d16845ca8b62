"""What the training loop does differently per model task: batching, the loss of a batch, validation loss.

- semantic (U-Net, FPN): logits against body/border targets with `SegmentationLoss` (`TrainingCrops`);
- instance (Mask R-CNN): the model computes its own losses from boxes, labels and masks
  (`InstanceCrops`); the total is their sum and each part is logged as `train_<part>`. It has no
  validation loss: torchvision computes detection losses only in train mode, where BatchNorm would move
  its running statistics on validation data. Its epochs are ranked by validation mAP alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from kit.config import ExperimentConfig
from kit.models.precision import ComputeMode
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


class SemanticTask:
    """Per-pixel logits (N, K, H, W) against `TrainingCrops` targets; the network runs in `compute`'s
    precision and memory format, the loss in float32."""

    collate: Callable | None = None

    def __init__(self, cfg: ExperimentConfig, compute: ComputeMode) -> None:
        self.device, self.compute = compute.device, compute
        self.loss_fn = build_loss(cfg).to(self.device)

    def loss(self, net: nn.Module, batch: Batch) -> LossStep:
        """(scalar loss, parts to log) of a training batch."""
        image = self.compute.input(batch["image"])
        targets = batch["targets"].to(self.device, non_blocking=True)
        weights = batch["weights"].to(self.device) if self.loss_fn.use_pixel_weights else None
        with self.compute.autocast():
            logits = net(image)
        return self.loss_fn(logits.float(), targets, weights), {}

    def val_loss(self, model: nn.Module, val_set: TrainingCrops) -> float | None:
        """Mean loss over the validation crops, one at a time (model in eval mode)."""
        losses = []
        for i in range(len(val_set)):
            item = val_set[i]
            with self.compute.autocast():
                logits = model(self.compute.input(item["image"][None]))
            weights = item["weights"][None].to(self.device) if self.loss_fn.use_pixel_weights else None
            losses.append(self.loss_fn(logits.float(), item["targets"][None].to(self.device), weights).item())
        return float(np.mean(losses))


class InstanceTask:
    """torchvision detection losses from `InstanceCrops` targets (see the module docstring)."""

    collate: Callable | None = staticmethod(collate_instances)

    def __init__(self, compute: ComputeMode) -> None:
        self.device, self.compute = compute.device, compute

    def loss(self, net: nn.Module, batch: Batch) -> LossStep:
        """(sum of the model's losses, each loss by name) of a training batch."""
        images = [image.to(self.device, non_blocking=True) for image in batch["image"]]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in batch["target"]]
        with self.compute.autocast():
            parts = net(images, targets)
        total = torch.stack([v.float() for v in parts.values()]).sum()
        return total, {name: v.item() for name, v in parts.items()}

    def val_loss(self, model: nn.Module, val_set: object) -> float | None:
        return None


def training_task(
    model: nn.Module, cfg: ExperimentConfig, compute: ComputeMode
) -> SemanticTask | InstanceTask:
    """The task strategy of `model` (its `kit_cfg["task"]`)."""
    if model_task(model) == "instance":
        return InstanceTask(compute)
    return SemanticTask(cfg, compute)
