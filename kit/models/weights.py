"""Local weight files → a module: read a state_dict-like file, load the tensors whose name and shape match.

Used for `pretrained: <path>` in model configs: a timm classifier state_dict, a torchvision model file,
or a kit checkpoint, matched by parameter name (optionally through aliases) and shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from timm.models import adapt_input_conv, load_state_dict
from torch import nn

from kit.errors import ConfigError

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (.pth/.bin/.safetensors, a bare state_dict or one wrapped under
    "state_dict"/"model", e.g. a kit checkpoint); ConfigError naming the file if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained weights not found: {path}")
    try:
        return load_state_dict(str(path), use_ema=False)
    except Exception as e:
        raise ConfigError(f"cannot read pretrained weights {path}: {e}") from e


def load_matching(
    module: nn.Module,
    source: dict[str, torch.Tensor],
    *,
    in_channels: int,
    origin: str,
    aliases: Callable[[str], Iterable[str]] = lambda key: (key,),
) -> dict[str, int]:
    """Load into `module` (strict=False) every tensor of `source` whose name and shape fit.

    `aliases(key)` lists the source names to try for a target key, first match wins. Convolutions over 3
    input channels are adapted to `in_channels` as timm does (RGB filters summed for 1 channel). Returns
    {"loaded", "missing", "unexpected", "mismatched"}; ConfigError naming `origin` when nothing matched.
    """
    target = module.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    mismatched = 0
    for key, param in target.items():
        src_key = next((k for k in aliases(key) if k in source), None)
        if src_key is None:
            continue
        used.add(src_key)
        value = source[src_key]
        rgb_stem = in_channels != 3 and value.ndim == 4 and value.shape[1] == 3
        if rgb_stem and value[:, :1].shape == param[:, :1].shape:
            value = adapt_input_conv(in_channels, value)
        if value.shape != param.shape:
            mismatched += 1
            continue
        loaded[key] = value
    if not loaded:
        raise ConfigError(
            f"no tensor in {origin} matches the model: file keys look like {list(source)[:3]}, "
            f"model keys like {list(target)[:3]}"
        )
    module.load_state_dict(loaded, strict=False)
    report = {
        "loaded": len(loaded),
        "missing": len(target) - len(loaded),
        "unexpected": len(set(source) - used),
        "mismatched": mismatched,
    }
    log.info("weights from %s: %s", origin, report)
    return report
