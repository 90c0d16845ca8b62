"""Nucleus layouts for learned style transfer: the generator's condition image and new label images.

- `condition_image`: what the pix2pix generator sees for a label image, three channels in [0, 1]:
  foreground, instance boundaries (so touching nuclei stay apart), and each nucleus's distance to its
  own edge divided by its maximum (1 at the centre), which lets the generator shade nuclei.
- `LayoutSampler`: new label images from existing ones. Groups of touching nuclei (connected
  foreground components that do not touch the image edge) are cut out whole, then drawn with
  replacement (copy-paste), turned by a random dihedral transform (flips, 90° rotations) and placed at
  random free positions (rearranged), until the layout covers about as much area as a source image.
  Groups never touch each other; touching nuclei inside a group keep their shared boundary. Groups may
  hang over the layout's edge, like nuclei cut by a real image's edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from kit.errors import DataError

_EIGHT = np.ones((3, 3), dtype=bool)


def condition_image(labels: np.ndarray) -> np.ndarray:
    """float32 H×W×3 in [0, 1] for an H×W label image: (foreground, boundaries, normalised distance)."""
    labels = np.asarray(labels)
    foreground = labels > 0
    boundaries = find_boundaries(labels, mode="inner") & foreground
    distance = ndi.distance_transform_edt(foreground & ~boundaries) + foreground
    peak = np.zeros(int(labels.max()) + 1, dtype=np.float64)
    if peak.size > 1:
        peak[1:] = ndi.maximum(distance, labels, index=np.arange(1, peak.size))
    peak[peak == 0] = 1.0
    normalised = np.where(foreground, distance / peak[labels], 0.0)
    return np.stack([foreground, boundaries, normalised], axis=-1).astype(np.float32)


def nucleus_groups(labels: np.ndarray) -> list[np.ndarray]:
    """Label patches (bounding-box crops, other groups zeroed) of each group of touching nuclei that does
    not touch the image edge."""
    labels = np.asarray(labels)
    components, _ = ndi.label(labels > 0, structure=_EIGHT)
    height, width = labels.shape
    groups = []
    for index, box in enumerate(ndi.find_objects(components), start=1):
        rows, cols = box
        if rows.start == 0 or cols.start == 0 or rows.stop == height or cols.stop == width:
            continue
        groups.append(np.where(components[box] == index, labels[box], 0).astype(np.int32))
    return groups


def dihedral(patch: np.ndarray, element: int) -> np.ndarray:
    """One of the 8 flips/rotations of `patch` (element 0..7; 0 is the identity)."""
    out = np.rot90(patch, element % 4)
    return np.ascontiguousarray(out[:, ::-1] if element >= 4 else out)


class LayoutSampler:
    """New label images from the nucleus groups of `label_images` (see module doc).

    `margin` px of background separate placed groups; pieces under `min_area` px left by the layout's
    edge are dropped. Raises `DataError` when no image holds a group clear of its edge.
    """

    def __init__(self, label_images: Sequence[np.ndarray], *, margin: int = 2, min_area: int = 10) -> None:
        self.groups = [group for labels in label_images for group in nucleus_groups(labels)]
        if not self.groups:
            raise DataError("no whole nucleus (one clear of the image edge) in the layout source images")
        self.coverages = [float(np.mean(np.asarray(labels) > 0)) for labels in label_images]
        self.margin = margin
        self.min_area = min_area

    def sample(self, size: tuple[int, int], rng: np.random.Generator, max_failures: int = 50) -> np.ndarray:
        """An int32 label image of `size` (H, W), ids 1..N; its coverage is a source image's, ×0.8–1.2."""
        height, width = size
        target = self.coverages[int(rng.integers(len(self.coverages)))] * rng.uniform(0.8, 1.2)
        pad = max(max(group.shape) for group in self.groups) + self.margin
        canvas = np.zeros((height + 2 * pad, width + 2 * pad), dtype=np.int32)
        covered, next_id, failures = 0, 1, 0
        while covered < target * height * width and failures < max_failures:
            group = dihedral(self.groups[int(rng.integers(len(self.groups)))], int(rng.integers(8)))
            h, w = group.shape
            top = int(rng.integers(pad - h // 2, pad + height - h // 2))
            left = int(rng.integers(pad - w // 2, pad + width - w // 2))
            window = canvas[
                top - self.margin : top + h + self.margin, left - self.margin : left + w + self.margin
            ]
            keepout = np.pad(group > 0, self.margin)
            if self.margin:  # scipy repeats a dilation with iterations=0 until nothing changes
                keepout = ndi.binary_dilation(keepout, _EIGHT, iterations=self.margin)
            if (window[keepout] > 0).any():
                failures += 1
                continue
            ids = np.unique(group[group > 0])
            lut = np.zeros(int(group.max()) + 1, dtype=np.int32)
            lut[ids] = np.arange(next_id, next_id + len(ids), dtype=np.int32)
            region = canvas[top : top + h, left : left + w]
            region[group > 0] = lut[group[group > 0]]
            next_id += len(ids)
            covered = int((canvas[pad : pad + height, pad : pad + width] > 0).sum())
            failures = 0
        return _drop_small(canvas[pad : pad + height, pad : pad + width], self.min_area)


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Renumber ids 1..N after removing nuclei under `min_area` px."""
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    lut = np.zeros(areas.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]
