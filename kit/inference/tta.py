"""Test-time augmentation: the 8 dihedral transforms (D4) and multi-scale averaging of probabilities.

Dihedral element k = r + 4·f (k = 0..7) acts on the last two axes (…, H, W): rotate r × 90°
counter-clockwise (as `np.rot90`), then, if f = 1, flip left-right. So k = 0 identity, 1 rot90,
2 rot180 (= both flips), 3 rot270, 4 left-right flip, 5 anti-transpose, 6 up-down flip, 7 transpose.
Odd r and k = 5, 7 swap H and W.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from kit.config import TTA_MODES
from kit.errors import ConfigError

Array = TypeVar("Array", np.ndarray, torch.Tensor)

TRANSFORMS: dict[str, tuple[int, ...]] = {
    "none": (0,),
    "flips": (0, 4, 6, 2),
    "d4": tuple(range(8)),
}
"""The dihedral transforms (`d4_forward` indices) of each mode of `kit.config.TTA_MODES`."""
assert tuple(TRANSFORMS) == TTA_MODES


def check_tta(mode: str) -> None:
    """ConfigError unless `mode` is one of `TTA_MODES`."""
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")


def _rot90(x: Array, r: int) -> Array:
    if isinstance(x, torch.Tensor):
        return torch.rot90(x, r, dims=(-2, -1))
    return np.rot90(x, r, axes=(-2, -1))


def _fliplr(x: Array) -> Array:
    if isinstance(x, torch.Tensor):
        return torch.flip(x, dims=(-1,))
    return np.flip(x, axis=-1)


def _check_k(k: int) -> None:
    if k not in range(8):
        raise ValueError(f"dihedral element k must be in 0..7, got {k}")


def d4_forward(x: Array, k: int) -> Array:
    """Apply dihedral element `k` to the last two axes of `x` (…, H, W); numpy views where possible."""
    _check_k(k)
    y = _rot90(x, k % 4)
    return _fliplr(y) if k >= 4 else y


def d4_inverse(x: Array, k: int) -> Array:
    """Undo `d4_forward(·, k)` exactly: `d4_inverse(d4_forward(x, k), k) == x`."""
    _check_k(k)
    if k >= 4:
        x = _fliplr(x)
    return _rot90(x, -(k % 4))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to `size`, antialiased when shrinking."""
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


@torch.no_grad()
def predict_tta(
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    mode: str = "none",
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Average `predict_fn` over the dihedral transforms of `mode` × `scales`.

    `image`: float32 (N, C, H, W); `predict_fn` maps (N, C, h, w) to probabilities (N, K, h, w) for any
    h, w (wrap a model with `predict_tiled` to handle padding). Each prediction is resized back to the
    exact transformed size, inverse-transformed and averaged. Returns float32 (N, K, H, W).
    """
    check_tta(mode)
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError(f"TTA scales must be positive, got {tuple(scales)}")
    total: torch.Tensor | None = None
    for k in TRANSFORMS[mode]:
        x = d4_forward(image, k)
        size = (x.shape[-2], x.shape[-1])
        for scale in scales:
            scaled_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            probs = predict_fn(x if scaled_size == size else _resize(x, scaled_size))
            if probs.shape[-2:] != size:
                probs = _resize(probs, size)
            probs = d4_inverse(probs, k)
            # Copy on the first term: predict_fn may return (a view of) its input.
            total = probs.to(torch.float32, copy=True) if total is None else total.add_(probs)
    assert total is not None
    return total / (len(TRANSFORMS[mode]) * len(scales))
