"""Model registry: builders filed by name, one factory that reads them (timm's `_registry` idiom).

A builder is a function returning an `nn.Module` that carries a `kit_cfg` dict (arch, channels,
in_channels, output_stride, ...). `register_model` files it under its function name and wraps it so
the built model also records `model_name` and the arguments it was built with (`model_kwargs`): that is
what a checkpoint needs to rebuild it.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from kit.errors import ConfigError

Builder = Callable[..., nn.Module]

_builders: dict[str, Builder] = {}


def register_model(fn: Builder) -> Builder:
    """Register `fn` under its function name; the wrapped builder records how each model was built."""
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
        return model

    _builders[name] = build
    return build


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style `pattern`."""
    return sorted(n for n in _builders if fnmatch.fnmatchcase(n, pattern))


def closest_match_hint(name: str, known: list[str]) -> str:
    """ " (did you mean 'x'?)" for the closest name in `known`, or "" when nothing is close."""
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model `name`; kwargs set to None fall back to the builder's default.

    Raises `ConfigError` for an unknown name (listing the known ones) or an argument the builder
    does not take.
    """
    if name not in _builders:
        known = list_models()
        raise ConfigError(
            f"unknown model {name!r}{closest_match_hint(name, known)}; known models: {', '.join(known)}"
        )
    builder = _builders[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    signature = inspect.signature(builder)
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        raise ConfigError(
            f"model {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(signature.parameters)}"
        )
    return builder(**kwargs)
