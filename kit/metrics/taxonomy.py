"""Error taxonomy of Caicedo et al. 2019 (docs/references.md): missed objects by size, extras, merges, splits.

All counts are read off an `IoUMatrix` of one image, with strict `>` at every threshold:
- missed: truth objects with no prediction at IoU > 0.7, binned by truth area in pixels into
  tiny (0, 250], small (250, 625], normal (625, 900], large (900, inf);
- extra: predictions with no truth at IoU > 0.7;
- merge: a prediction overlapping more than one truth object with IoU > 0.1 (under-segmentation);
- split: a truth object overlapped by more than one prediction with IoU > 0.1 (over-segmentation).
"""

from __future__ import annotations

import numpy as np

from kit.metrics.overlap import IoUMatrix

SIZE_BINS: tuple[str, ...] = ("tiny", "small", "normal", "large")
# Upper edges (inclusive) of all bins but the last, in pixels.
SIZE_BIN_EDGES: tuple[int, ...] = (250, 625, 900)
MISSED_THRESHOLD = 0.7
OVERLAP_THRESHOLD = 0.1


def size_bin_index(areas: np.ndarray) -> np.ndarray:
    """Index into `SIZE_BINS` for each area (pixels): tiny (0,250], small (250,625], normal (625,900], large."""
    return np.searchsorted(np.asarray(SIZE_BIN_EDGES), np.asarray(areas), side="left")


def count_by_size(areas: np.ndarray) -> np.ndarray:
    """Number of objects in each of the `SIZE_BINS` (int64 [4]) for the given object areas."""
    return np.bincount(size_bin_index(areas), minlength=len(SIZE_BINS))


def missed_by_size(m: IoUMatrix, threshold: float = MISSED_THRESHOLD) -> np.ndarray:
    """Truth objects with no prediction at IoU > threshold, counted per size bin (int64 [4])."""
    truth_matched, _ = m.matched(threshold)
    return count_by_size(m.truth_areas[~truth_matched])


def count_extra(m: IoUMatrix, threshold: float = MISSED_THRESHOLD) -> int:
    """Predictions with no truth object at IoU > threshold."""
    _, pred_matched = m.matched(threshold)
    return int(np.count_nonzero(~pred_matched))


def count_merges(m: IoUMatrix, threshold: float = OVERLAP_THRESHOLD) -> int:
    """Predictions overlapping more than one truth object with IoU > threshold (under-segmentation)."""
    return int(np.count_nonzero((m.iou > threshold).sum(axis=0) > 1))


def count_splits(m: IoUMatrix, threshold: float = OVERLAP_THRESHOLD) -> int:
    """Truth objects overlapped by more than one prediction with IoU > threshold (over-segmentation)."""
    return int(np.count_nonzero((m.iou > threshold).sum(axis=1) > 1))
