"""Label image → training targets: nucleus body, touching border, background (+ full mask, weights), and
the boxes and masks of Mask R-CNN (`instance_targets`).

The encoding follows the DSB2018 winners (topcoders): the network predicts three mutually exclusive
classes per pixel, and the *border* class marks only the thin seam where two nuclei touch (or almost
touch), so that post-processing can split touching instances by watershed from the carved bodies. An
isolated nucleus has no border at all. Some models also predict the full nucleus mask (no carving) to
grow instances back over the border.

All functions are pure numpy on an H×W integer label image (0 = background, ids ≥ 1, ids need not be
contiguous).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from kit.visualize import contour_overlay, save_figure

TARGET_CHANNELS: tuple[str, ...] = ("body", "border", "background")
"""Channel order of `make_targets` output; `MASK_CHANNEL` is appended with ``include_mask=True``."""

MASK_CHANNEL = "mask"


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an H×W integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative (0 = background)")
    return labels.astype(np.int64, copy=False)


def multi_label_pixels(labels: np.ndarray, radius: int) -> np.ndarray:
    """Bool H×W: pixels whose (2·radius+1)² square window holds more than one nonzero label.

    Windows are clipped at the image edge (outside counts as background).
    """
    labels = _check_labels(labels)
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    return _multi_label(labels, radius)


def _multi_label(labels: np.ndarray, radius: int) -> np.ndarray:
    size = 2 * radius + 1
    high = ndi.maximum_filter(labels, size=size, mode="constant", cval=0)
    # Background must not count as a label: lift it above every id before taking the minimum. (scipy
    # passes cval as a float, so the sentinel must stay small enough to round-trip exactly.)
    none = int(labels.max()) + 1
    low = ndi.minimum_filter(np.where(labels > 0, labels, none), size=size, mode="constant", cval=none)
    return (low != none) & (high != low)


def border_radius_map(
    labels: np.ndarray, *, min_radius: int = 1, max_radius: int = 3, size_scale: float = 20.0
) -> np.ndarray:
    """Int H×W map of the touching-border window radius to use at each pixel.

    A nucleus with equivalent diameter d = sqrt(4·area/π) gets
    ``radius = clip(ceil(d / size_scale), min_radius, max_radius)``; with the defaults, d ≤ 20 px → 1,
    d ≤ 40 px → 2, larger → 3 (topcoders used area < 300 → 1, < 2000 → 2, else 3). Nucleus pixels take
    their own nucleus's radius, background pixels that of the nearest nucleus.
    """
    labels = _check_labels(labels)
    if min_radius < 1 or max_radius < min_radius:
        raise ValueError(f"need 1 <= min_radius <= max_radius, got {min_radius}, {max_radius}")
    if size_scale <= 0:
        raise ValueError(f"size_scale must be > 0, got {size_scale}")
    if not labels.any():
        return np.full(labels.shape, min_radius, dtype=np.int64)
    if labels.max() > labels.size:  # sparse huge ids: compact them so bincount stays small
        labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    diameter = np.sqrt(4.0 * np.bincount(labels.ravel()) / np.pi)
    radius_of = np.clip(np.ceil(diameter / size_scale), min_radius, max_radius).astype(np.int64)
    background = labels == 0
    if background.any():
        _, (rows, cols) = ndi.distance_transform_edt(background, return_indices=True)
        labels = labels[rows, cols]
    return radius_of[labels]


def touching_border(
    labels: np.ndarray, *, min_radius: int = 1, max_radius: int = 3, size_scale: float = 20.0
) -> np.ndarray:
    """Bool H×W map of the separation border between touching nuclei.

    A pixel (nucleus or background) is border when its square window of the radius given by
    `border_radius_map` holds two or more different nonzero labels. The border therefore lies on both
    sides of a contact line and fills narrow background gaps (up to about 2·radius px) between nuclei;
    the outer edge of an isolated nucleus is never border.
    """
    labels = _check_labels(labels)
    radius = border_radius_map(labels, min_radius=min_radius, max_radius=max_radius, size_scale=size_scale)
    border = np.zeros(labels.shape, dtype=bool)
    for r in np.unique(radius):
        border |= _multi_label(labels, int(r)) & (radius == r)
    return border


def make_targets(
    labels: np.ndarray,
    *,
    include_mask: bool = False,
    min_radius: int = 1,
    max_radius: int = 3,
    size_scale: float = 20.0,
) -> np.ndarray:
    """Float32 (C, H, W) targets in `TARGET_CHANNELS` order (+ ``"mask"`` when `include_mask`).

    body = nucleus pixels minus border; border = `touching_border`; background = 1 − body − border.
    The three are mutually exclusive 0/1 maps summing to 1 per pixel. The optional mask channel is
    ``labels > 0`` without carving.
    """
    labels = _check_labels(labels)
    border = touching_border(labels, min_radius=min_radius, max_radius=max_radius, size_scale=size_scale)
    nucleus = labels > 0
    body = nucleus & ~border
    channels = [body, border, ~(body | border)]
    if include_mask:
        channels.append(nucleus)
    return np.stack(channels).astype(np.float32)


def target_channels(include_mask: bool = False) -> tuple[str, ...]:
    """Channel names of `make_targets` output."""
    return (*TARGET_CHANNELS, MASK_CHANNEL) if include_mask else TARGET_CHANNELS


def border_weight_map(
    labels: np.ndarray,
    *,
    w_border: float = 10.0,
    min_radius: int = 1,
    max_radius: int = 3,
    size_scale: float = 20.0,
) -> np.ndarray:
    """Float32 H×W per-pixel loss weights: `w_border` on touching-border pixels, 1 elsewhere.

    Caicedo et al. 2019 weighted their boundary class 10×.
    """
    border = touching_border(labels, min_radius=min_radius, max_radius=max_radius, size_scale=size_scale)
    return np.where(border, np.float32(w_border), np.float32(1.0))


def instance_targets(labels: np.ndarray, *, min_area: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Mask R-CNN targets of a label image: (boxes float32 (N, 4), masks uint8 (N, H, W)), in id order.

    A box is (x0, y0, x1, y1) through the centres of the instance's extreme pixels (torchvision's
    `masks_to_boxes` convention, the one its RoI-aligned mask targets assume). Instances under `min_area`
    pixels or one pixel wide or high (a zero-size box) are left out: slivers cut off at a crop edge.
    An image without instances gives shapes (0, 4) and (0, H, W).
    """
    labels = _check_labels(labels)
    foreground = labels > 0
    compact = np.zeros(labels.shape, dtype=np.int64)  # ids renumbered 1..n, so find_objects stays short
    compact[foreground] = np.unique(labels[foreground], return_inverse=True)[1] + 1
    areas = np.bincount(compact.ravel())
    boxes, keep = [], []
    for index, (rows, cols) in enumerate(ndi.find_objects(compact), start=1):
        if areas[index] < min_area or rows.stop - rows.start < 2 or cols.stop - cols.start < 2:
            continue
        boxes.append((cols.start, rows.start, cols.stop - 1, rows.stop - 1))
        keep.append(index)
    masks = compact[None] == np.asarray(keep, dtype=compact.dtype).reshape(-1, 1, 1)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), masks.astype(np.uint8)


def targets_preview(
    image: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray,
    path: str | os.PathLike,
    channel_names: Sequence[str] | None = None,
) -> Path:
    """Write a one-row PNG panel: image with instance contours, then each target channel.

    `targets` is the (C, H, W) output of `make_targets`; names default to its channel order.
    """
    from matplotlib.figure import Figure

    targets = np.asarray(targets)
    names = tuple(channel_names) if channel_names is not None else target_channels(targets.shape[0] == 4)
    if len(names) != targets.shape[0]:
        raise ValueError(f"{targets.shape[0]} target channels but {len(names)} names")
    fig = Figure(figsize=(3.0 * (1 + len(names)), 3.2))
    axes = fig.subplots(1, 1 + len(names), squeeze=False)[0]
    axes[0].imshow(contour_overlay(image, labels))
    axes[0].set_title(f"image ({np.count_nonzero(np.unique(labels))} nuclei)")
    for ax, name, channel in zip(axes[1:], names, targets, strict=True):
        ax.imshow(channel, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name)
    for ax in axes:
        ax.set_axis_off()
    return save_figure(fig, path)
