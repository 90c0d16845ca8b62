"""Pictures people look at: display conversion, contour overlays, figure saving (PNG, atomic)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kit.fileio import atomic_path, write_png


def display_rgb(image: np.ndarray, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Convert any image (H×W or H×W×C, any dtype) to H×W×3 uint8 for display.

    Intensities are stretched between the `low` and `high` percentiles per image, so 16-bit and dim
    fluorescence images are visible. Alpha and channels beyond the third are dropped.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        img = img[:, :, :3]
    img = img.astype(np.float32)
    lo, hi = np.percentile(img, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    out = (out * 255.0 + 0.5).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    if out.shape[2] == 2:
        out = np.concatenate([out, np.zeros_like(out[:, :, :1])], axis=2)
    return out


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Boolean H×W map of the inner boundary pixels of every instance of a label image."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(np.asarray(labels), mode="inner")


def contour_overlay(
    image: np.ndarray, labels: np.ndarray, color: tuple[int, int, int] = (255, 255, 0)
) -> np.ndarray:
    """Return `image` as H×W×3 uint8 with the contours of every instance in `labels` drawn in `color`."""
    rgb = display_rgb(image)
    rgb[label_boundaries(labels)] = color
    return rgb


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an H×W×3 uint8 picture as PNG (atomic)."""
    return write_png(path, rgb)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)
