"""The one image normalisation that feeds every model.

Training (`kit.data.torch_dataset`) and inference both call `normalize_image` and nothing else, so a
model always sees the same input distribution whatever the stored dtype (uint8, uint16, float) or the
number of channels (grey, RGB, RGBA) of an image.
"""

from __future__ import annotations

import numpy as np


def normalize_image(
    image: np.ndarray,
    channels: int = 3,
    low: float = 1.0,
    high: float = 99.8,
    *,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Model input for `image`: uint8 H×W×`channels`.

    Steps: drop the alpha channel (of RGBA or grey+alpha); convert grey to `channels` by repeating it,
    or RGB to grey by the channel mean when `channels` is 1; then stretch intensities linearly so that
    the `low` and `high` percentiles of this image (over all its channels together, which keeps colour
    balance) map to 0 and 255, clipping outside. A constant image maps to 0. `intensity_range` (lo, hi)
    replaces the percentiles, e.g. those of the whole image when this is one block of it
    (`kit.scale.intensity_range` computes them block by block).
    """
    img = model_values(image, channels)
    lo, hi = np.percentile(img, [low, high]) if intensity_range is None else intensity_range
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.clip((img - lo) * scale, 0.0, 255.0)
    out = (out + 0.5).astype(np.uint8)
    if out.shape[2] != channels:
        out = np.repeat(out, channels, axis=2)
    return out


def model_values(image: np.ndarray, channels: int = 3) -> np.ndarray:
    """The float32 H×W×(1 or 3) intensities whose percentiles `normalize_image` stretches: alpha dropped,
    RGB averaged to grey when `channels` is 1."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[:, :, :-1]
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"expected an H×W, H×W×1, H×W×3 or H×W×4 image, got shape {np.shape(image)}")
    img = img.astype(np.float32)
    if channels == 1 and img.shape[2] == 3:
        img = img.mean(axis=2, keepdims=True)
    return img


def image_to_tensor(image: np.ndarray):
    """A normalised uint8 H×W×C image as the network input: float32 torch tensor (C, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
