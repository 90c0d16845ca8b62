"""Checkpoints that rebuild their model from the registry, with no training code: kit's one format.

A checkpoint is a `torch.save`d dict: {"format", "state_dict", "model_name", "model_kwargs", "config",
"extra"}. It holds only tensors and plain Python values, so it loads with `weights_only=True`.

Segmentation models come from the registry (`kit.models.registry.create_model`), which rebuilds them. A
model built outside it, such as the pix2pix generator of `kit.style.pix2pix`, uses the same format: it
carries its own ``kit_cfg`` (``model_name``, ``model_kwargs``) and is loaded with its own ``create``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kit.errors import KitError
from kit.fileio import atomic_path
from kit.models.activation import activation_for_loss
from kit.models.registry import create_model, model_arguments

FORMAT = "kit-checkpoint-1"


def save_checkpoint(
    path: str | Path, model: nn.Module, config: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """Write `model`'s weights, how to rebuild it, the resolved `config` and `extra` to `path` atomically.

    `model` must come from a registered builder, or carry `kit_cfg["model_name"]` and
    `kit_cfg["model_kwargs"]` the way registered models do (see the module doc). `config` and
    `extra` must hold plain values (dict, list, tuple, str, int, float, bool, None, tensors).
    The encoder's `pretrained` argument is not stored: the weights are in the checkpoint.
    """
    path = Path(path)
    model = _unwrap(model)
    cfg = getattr(model, "kit_cfg", {})
    if "model_name" not in cfg:
        raise KitError(f"cannot checkpoint {type(model).__name__} to {path}: build it with create_model")
    model_kwargs = {k: v for k, v in cfg["model_kwargs"].items() if k != "pretrained"}
    payload = {
        "format": FORMAT,
        "state_dict": model.state_dict(),
        "model_name": cfg["model_name"],
        "model_kwargs": model_kwargs,
        "config": config,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    """The registered model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    create: Callable[..., nn.Module] = create_model,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Rebuild the model saved at `path` (in eval mode) and return (model, config, extra).

    `create(model_name, **model_kwargs)` rebuilds the model: the registry's `create_model` unless the
    checkpoint holds a model built outside the registry. Raises `KitError` naming the file when it is
    missing, unreadable or not a kit checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise KitError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise KitError(f"cannot read checkpoint {path}: not a kit checkpoint ({reason})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise KitError(f"{path} is not a kit checkpoint (expected format {FORMAT!r})")
    kwargs = payload["model_kwargs"]
    if create is create_model:
        kwargs = _migrated_kwargs(payload["model_name"], kwargs, payload.get("config") or {})
    model = create(payload["model_name"], **kwargs)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise KitError(f"checkpoint {path} does not fit model {payload['model_name']!r}: {e}") from e
    model.to(map_location).eval()
    return model, payload["config"], payload["extra"]


def _migrated_kwargs(name: str, kwargs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Builder arguments of a checkpoint written before semantic models recorded their activation: the
    activation then follows from the loss mode of the config stored beside the weights."""
    if "activation" in kwargs or "activation" not in model_arguments(name):
        return kwargs
    mode = ((config.get("training") or {}).get("loss") or {}).get("mode", "softmax")
    return {**kwargs, "activation": activation_for_loss(mode)}
