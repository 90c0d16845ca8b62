"""Overlap of two label images: the contingency matrix and the IoU matrix built from it.

Label convention: an integer H×W image, 0 = background, every other value is one object. Ids need not
be sequential ({1, 2, 17} is fine) and objects never overlap (one id per pixel).

How it works: the ids present in each image are mapped to compact indices 0..n (0 = background) through
a lookup table, then one pass over the pixels counts every (truth, prediction) index pair. Nothing loops
over objects, so the cost is O(H·W) whatever the number of nuclei. `label_overlap_reference` is the plain
version (one boolean mask per object pair) kept beside it for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

# A dense id -> index lookup table is used while the largest id stays below this many per pixel (or
# 65536); beyond that (ids like hashes) the table would waste memory, so ids are compacted by sorting.
_MAX_LUT_IDS_PER_PIXEL = 4
_MIN_LUT_SIZE = 1 << 16


def check_label_image(labels: np.ndarray, name: str) -> np.ndarray:
    """Return `labels` as an array after checking it is a 2-D, non-negative integer label image.

    Raises ValueError naming the argument (`name`) and what is wrong with it.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label image (H×W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        hint = " (a binary mask? label it with skimage.measure.label)" if arr.dtype == bool else ""
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}{hint}")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{name} has negative labels (min {arr.min()}); 0 is background, objects are > 0")
    if not arr.dtype.isnative:  # e.g. big-endian TIFF data; the compiled kernels need native byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def label_overlap(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency matrix of two label images of the same H×W shape.

    Returns `(counts, truth_ids, pred_ids)`: `counts[i, j]` is the number of pixels labelled
    `truth_ids[i]` in `truth` and `pred_ids[j]` in `pred`, int64 of shape [n_true + 1, n_pred + 1].
    Row and column 0 are background: `truth_ids[0] == pred_ids[0] == 0` always (all-zero counts if the
    image has no background), followed by the object ids in increasing order.

    Raises ValueError if either input is not a 2-D non-negative integer array or the shapes differ.
    """
    truth = check_label_image(truth, "truth")
    pred = check_label_image(pred, "pred")
    if truth.shape != pred.shape:
        raise ValueError(f"truth and pred must have the same shape, got {truth.shape} and {pred.shape}")
    t_flat, p_flat = truth.ravel(), pred.ravel()
    t_lut, truth_ids, t_flat = _compact(t_flat)
    p_lut, pred_ids, p_flat = _compact(p_flat)
    counts = _overlap_kernel(t_flat, p_flat, t_lut, p_lut, truth_ids.size, pred_ids.size)
    return counts, truth_ids, pred_ids


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup table id -> compact index (0 = background), the ids (0 first), and the pixels to index with."""
    max_id = int(flat.max()) if flat.size else 0
    if max_id < max(_MAX_LUT_IDS_PER_PIXEL * flat.size, _MIN_LUT_SIZE):
        present = _presence(flat, max_id + 1)
        present[0] = True
        ids = np.flatnonzero(present)
        lut = np.zeros(max_id + 1, dtype=np.int32)
        lut[ids] = np.arange(ids.size, dtype=np.int32)
        return lut, ids.astype(flat.dtype), flat
    ids, inverse = np.unique(np.concatenate([np.zeros(1, flat.dtype), flat]), return_inverse=True)
    return np.arange(ids.size, dtype=np.int32), ids, inverse[1:]


@numba.njit(cache=True, nogil=True)
def _presence(flat, n):
    present = np.zeros(n, dtype=np.bool_)
    for i in range(flat.size):
        present[flat[i]] = True
    return present


@numba.njit(cache=True, nogil=True)
def _overlap_kernel(t_flat, p_flat, t_lut, p_lut, n_t, n_p):
    counts = np.zeros((n_t, n_p), dtype=np.int64)
    for i in range(t_flat.size):
        counts[t_lut[t_flat[i]], p_lut[p_flat[i]]] += 1
    return counts


def label_overlap_reference(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slow, obvious `label_overlap` (one boolean mask per pair of ids), kept to test the fast one."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    truth_ids = np.union1d(np.zeros(1, truth.dtype), truth)
    pred_ids = np.union1d(np.zeros(1, pred.dtype), pred)
    counts = np.zeros((truth_ids.size, pred_ids.size), dtype=np.int64)
    for i, t in enumerate(truth_ids):
        for j, p in enumerate(pred_ids):
            counts[i, j] = np.count_nonzero((truth == t) & (pred == p))
    return counts, truth_ids, pred_ids


@dataclass(frozen=True, eq=False)
class IoUMatrix:
    """IoU of every (truth object, predicted object) pair; background excluded.

    Row i is `truth_ids[i]`, column j is `pred_ids[j]` (ids in increasing order, no 0).

    Attributes:
        iou: float64 [n_true, n_pred], |g ∩ p| / |g ∪ p|.
        intersection: int64 [n_true, n_pred] pixel counts |g ∩ p|.
        truth_ids, pred_ids: the object ids, [n_true] and [n_pred].
        truth_areas, pred_areas: int64 object areas in pixels, [n_true] and [n_pred].
    """

    iou: np.ndarray
    intersection: np.ndarray
    truth_ids: np.ndarray
    pred_ids: np.ndarray
    truth_areas: np.ndarray
    pred_areas: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.truth_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    def matched(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks `(truth_matched [n_true], pred_matched [n_pred])`: some partner has IoU > threshold.

        Strict `>` as in the DSB score. For threshold >= 0.5 a match is one-to-one.
        """
        hits = self.iou > threshold
        return hits.any(axis=1), hits.any(axis=0)


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> IoUMatrix:
    """IoU matrix of two label images of the same H×W shape (0 = background, ids need not be sequential).

    Raises ValueError if either input is not a 2-D non-negative integer array or the shapes differ.
    """
    counts, truth_ids, pred_ids = label_overlap(truth, pred)
    intersection = counts[1:, 1:]
    truth_areas = counts[1:, :].sum(axis=1)
    pred_areas = counts[:, 1:].sum(axis=0)
    union = truth_areas[:, None] + pred_areas[None, :] - intersection
    # Every listed id covers at least one pixel, so union >= 1 everywhere.
    iou = intersection / union
    return IoUMatrix(
        iou=iou,
        intersection=intersection,
        truth_ids=truth_ids[1:],
        pred_ids=pred_ids[1:],
        truth_areas=truth_areas,
        pred_areas=pred_areas,
    )
