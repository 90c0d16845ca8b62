"""Optimisers and learning-rate schedules (warm-up then cosine / step / constant), stepped per batch.

Parameter groups come from timm (`param_groups_weight_decay`: no decay on biases and norm weights). The
schedule is kit's own: timm's schedulers count steps or epochs, while `training.max_minutes` needs a
cosine that follows a wall-clock budget, so the decay here follows whichever of the step budget and the
time budget is further along.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kit.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD (momentum 0.9, Nesterov); no weight decay on biases and norm weights."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ConfigError(f"unknown optimizer '{name}'; choose {', '.join(OPTIMIZERS)}")


def lr_factor(
    step: int,
    total_steps: int,
    *,
    schedule: str,
    warmup_steps: int = 0,
    step_size: int = 1,
    gamma: float = 0.1,
    min_factor: float = 0.01,
    time_fraction: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based).

    Linear warm-up over `warmup_steps`, then `cosine` decay to `min_factor` at `total_steps` or when
    `time_fraction` (the share of a wall-clock budget spent) reaches 1, whichever comes first; `step`
    decay by `gamma` every `step_size` steps; or `constant`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    after = step - warmup_steps
    if schedule == "step":
        return gamma ** (after // max(step_size, 1))
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(after / span, time_fraction), 1.0)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown schedule '{schedule}'; choose {', '.join(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    schedule: str,
    warmup_steps: int,
    step_size: int,
    gamma: float,
    time_fraction: Callable[[], float] = lambda: 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following `lr_factor`; `time_fraction()` is read at every step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            total_steps,
            schedule=schedule,
            warmup_steps=warmup_steps,
            step_size=step_size,
            gamma=gamma,
            time_fraction=time_fraction(),
        ),
    )
