"""Whole-image prediction at any size: padding to the network stride, overlapping tiles, blending.

Large images are cut into overlapping tiles whose predictions are blended with Gaussian weights
(Sadanandan et al. 2017: centre pixels, which saw the most context, dominate; no seams). A tile's pixels within
`overlap // 4` of an edge shared with another tile get zero weight, so their truncated context never
leaks into the result while the neighbouring tile covers them.

Tiles start at multiples of the network stride. A strided network is shift-equivariant only for shifts
by its stride, so a tile starting elsewhere sees the image on another sampling grid and predicts it
slightly differently: measured with a tiny U-Net, the same image shifted by 16 px (tiles off the grid)
kept only 16 % of its nuclei pixel-identical (DSB mAP of one against the other 0.93), and 83 % (0.99)
with the tiles on the grid. Block-wise prediction (`kit.scale`) relies on this to agree with
whole-image prediction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kit.errors import ConfigError
from kit.models.activation import model_activation, probabilities
from kit.models.precision import ComputeMode
from kit.models.registry import model_device

PredictFn = Callable[[torch.Tensor], torch.Tensor]


def model_predictor(model: nn.Module, compute: ComputeMode | None = None) -> PredictFn:
    """A `predict_fn` for `predict_tiled` / `predict_tta`: moves each batch to the model's device (in
    `compute`'s memory format), runs the model under `compute`'s autocast (default: float32) and returns
    float32 probabilities for `model.kit_cfg["channels"]` under the model's own activation. Put the model
    in eval mode first."""
    compute = compute or ComputeMode(model_device(model), "fp32", channels_last=False)
    channels, activation = model.kit_cfg["channels"], model_activation(model)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with compute.autocast():
            logits = model(compute.input(x))
        return probabilities(logits, channels, activation)

    return predict


def _ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_end(x: torch.Tensor, dim: int, amount: int) -> torch.Tensor:
    """Pad `amount` pixels after the end of spatial `dim` (-2 or -1): reflect, or replicate when
    reflection would run past the image."""
    if amount == 0:
        return x
    pad = (0, amount, 0, 0) if dim == -1 else (0, 0, 0, amount)
    return F.pad(x, pad, mode="reflect" if amount < x.shape[dim] else "replicate")


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Evenly spaced tile starts covering `length`, consecutive tiles sharing at least `overlap`; with
    `multiple` > 1 (`length` and `tile` multiples of it) every start is rounded to a multiple of it, the
    tiles still overlapping by more than twice their zero-weight margin (`overlap // 4`)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    while True:
        starts = [round(i * (length - tile) / (n - 1) / multiple) * multiple for i in range(n)]
        if multiple == 1 or max(b - a for a, b in itertools.pairwise(starts)) <= tile - 2 * (overlap // 4):
            return starts
        n += 1  # rounding left too little overlap: one more tile


def _weights_1d(tile: int, start: int, length: int, margin: int) -> torch.Tensor:
    """Gaussian profile (sigma = tile / 8) of one tile along one axis, zero within `margin` of an
    edge that another tile covers."""
    i = torch.arange(tile, dtype=torch.float32)
    w = torch.exp(-0.5 * ((i - (tile - 1) / 2) / (tile / 8)) ** 2)
    if margin:
        if start > 0:
            w[:margin] = 0
        if start + tile < length:
            w[-margin:] = 0
    return w


@torch.no_grad()
def predict_tiled(
    predict_fn: PredictFn,
    image: torch.Tensor,
    *,
    tile: int = 512,
    overlap: int = 64,
    multiple: int = 32,
    batch_size: int = 4,
) -> torch.Tensor:
    """Predict probabilities for an image of any size.

    `image`: float32 (N, C, H, W). It is padded at the bottom/right to a multiple of `multiple` (the
    network stride, `model.kit_cfg["output_stride"]`); a padded image no larger than `tile` is predicted
    whole, a larger one in overlapping `tile`² tiles (`tile` rounded down to the multiple, `batch_size`
    tiles per call) blended with Gaussian weights. `predict_fn` maps (B, C, h, w) to probabilities
    (B, K, h, w). Returns float32 (N, K, H, W) on the device `predict_fn` returns.
    """
    if multiple < 1 or tile < 1 or batch_size < 1 or overlap < 0:
        raise ConfigError(
            f"tiling needs multiple, tile, batch_size >= 1 and overlap >= 0; got multiple={multiple}, "
            f"tile={tile}, batch_size={batch_size}, overlap={overlap}"
        )
    tile = max(multiple, tile // multiple * multiple)
    if overlap >= tile:
        raise ConfigError(f"tile overlap {overlap} must be smaller than the tile ({tile})")
    n, _, h, w = image.shape
    hp, wp = _ceil_to(h, multiple), _ceil_to(w, multiple)
    padded = _pad_end(_pad_end(image, -2, hp - h), -1, wp - w)
    th, tw = min(tile, hp), min(tile, wp)
    ys, xs = tile_starts(hp, th, overlap, multiple), tile_starts(wp, tw, overlap, multiple)
    if len(ys) == len(xs) == 1:
        return predict_fn(padded).float()[..., :h, :w]

    margin = overlap // 4
    wy = {y: _weights_1d(th, y, hp, margin) for y in ys}
    wx = {x: _weights_1d(tw, x, wp, margin) for x in xs}
    windows = [(y, x) for y in ys for x in xs]
    out = weight = None
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        probs = predict_fn(torch.cat([padded[..., y : y + th, x : x + tw] for y, x in group])).float()
        if out is None:
            out = probs.new_zeros((n, probs.shape[1], hp, wp))
            weight = probs.new_zeros((1, 1, hp, wp))
        for j, (y, x) in enumerate(group):
            wt = torch.outer(wy[y], wx[x]).to(probs.device)
            out[..., y : y + th, x : x + tw] += probs[j * n : (j + 1) * n] * wt
            weight[..., y : y + th, x : x + tw] += wt
    return (out / weight)[..., :h, :w]
