"""Model registry: builders filed by name, one factory that reads them (timm's `_registry` idiom).

A builder is a function returning an `nn.Module` that carries a `kit_cfg` dict (arch, channels,
in_channels, output_stride, ...). `register_model` files it under its function name and wraps it so
the built model also records `model_name`, the arguments it was built with (`model_kwargs`: what a
checkpoint needs to rebuild it) and its `task`:

- "semantic": `model(x)` maps a float32 (N, C, H, W) batch to per-pixel logits (N, K, H, W) named by
  `kit_cfg["channels"]` (U-Net, FPN);
- "instance": torchvision detection style, `model(images)` returns one dict of detections per image and
  `model(images, targets)` in train mode a dict of losses (Mask R-CNN).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from kit.errors import ConfigError

if TYPE_CHECKING:
    from kit.config import ExperimentConfig

Builder = Callable[..., nn.Module]
Task = Literal["semantic", "instance"]
TASKS: tuple[Task, ...] = ("semantic", "instance")

_builders: dict[str, Builder] = {}
_tasks: dict[str, Task] = {}


def register_model(fn: Builder | None = None, *, task: Task = "semantic") -> Any:
    """Register `fn` under its function name (`@register_model` or `@register_model(task="instance")`);
    the wrapped builder records how each model was built and its task in `kit_cfg`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if fn is None:
        return functools.partial(register_model, task=task)
    name = fn.__name__
    if name in _builders:
        warnings.warn(f"model {name!r} registered twice; the later builder wins", stacklevel=2)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> nn.Module:
        model = fn(*args, **kwargs)
        cfg = getattr(model, "kit_cfg", None)
        if cfg is None:
            cfg = model.kit_cfg = {}
        cfg["model_name"] = name
        cfg["model_kwargs"] = dict(signature.bind(*args, **kwargs).arguments)
        cfg["task"] = task
        return model

    _builders[name] = build
    _tasks[name] = task
    return build


def list_models(pattern: str = "*", task: Task | None = None) -> list[str]:
    """Sorted names of registered models matching a shell-style `pattern` (and `task`, when given)."""
    return sorted(
        n for n in _builders if fnmatch.fnmatchcase(n, pattern) and (task is None or _tasks[n] == task)
    )


def model_task(model: nn.Module) -> Task:
    """The task of a model built by a registered builder ("semantic" or "instance")."""
    return model.kit_cfg["task"]


def model_device(model: nn.Module) -> torch.device:
    """The device a model's parameters (or, for a model fitted outside torch, its buffers) live on; the
    CPU for a model that has neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def task_of(name: str) -> Task:
    """The task of registered model `name` (ConfigError if unknown), known before building it."""
    _builder(name)
    return _tasks[name]


def closest_match_hint(name: str, known: list[str]) -> str:
    """ " (did you mean 'x'?)" for the closest name in `known`, or "" when nothing is close."""
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model `name`; kwargs set to None fall back to the builder's default.

    Raises `ConfigError` for an unknown name (listing the known ones) or an argument the builder
    does not take.
    """
    builder = _builder(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    signature = inspect.signature(builder)
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        raise ConfigError(
            f"model {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(signature.parameters)}"
        )
    return builder(**kwargs)


def build_model(cfg: ExperimentConfig) -> nn.Module:
    """The experiment's model from the registry, freshly initialised: the encoder, its weights, the input
    channels, the output channels of `cfg.targets` and the activation of `cfg.training.loss` go to the
    builders that take them (families without an encoder, such as `classical`, take neither), then
    `cfg.model.params`."""
    from kit.models.activation import activation_for_loss
    from kit.targets import target_channels

    takes = model_arguments(cfg.model.name)
    kwargs: dict[str, Any] = {"in_channels": cfg.data.channels}
    if "encoder" in takes:
        kwargs.update(encoder=cfg.model.encoder, pretrained=cfg.model.pretrained)
    if "channels" in takes:
        kwargs["channels"] = target_channels(cfg.targets.include_mask)
    if "activation" in takes:
        kwargs["activation"] = activation_for_loss(cfg.training.loss.mode)
    return create_model(cfg.model.name, **kwargs, **cfg.model.params)


def model_arguments(name: str) -> tuple[str, ...]:
    """The argument names the builder of registered model `name` takes (ConfigError if unknown)."""
    return tuple(inspect.signature(_builder(name)).parameters)


def _builder(name: str) -> Builder:
    if name not in _builders:
        known = list_models()
        raise ConfigError(
            f"unknown model {name!r}{closest_match_hint(name, known)}; known models: {', '.join(known)}"
        )
    return _builders[name]
