"""The 2018 Data Science Bowl score (mAP over IoU thresholds 0.50..0.95) for one image.

For truth objects G and predicted objects P of one image and each threshold t in `THRESHOLDS`:
a (g, p) pair is a hit when IoU(g, p) > t (strictly greater; StarDist and Cellpose use >=).
Objects do not overlap and t >= 0.5, so each object has at most one hit and no assignment is needed:
TP(t) = number of pairs with IoU > t, FP(t) = n_pred - TP(t), FN(t) = n_true - TP(t), and
precision(t) = TP / (TP + FP + FN). The image score is the mean of precision(t) over the 10 thresholds.
The dataset score is the mean of image scores (macro), see `kit.metrics.evaluation`.

Empty policy (0/0 counts as perfect, anything else with nothing to match is zero):
- no truth and no prediction: 1.0 at every threshold;
- truth empty, predictions present: 0.0;
- predictions empty, truth present: 0.0.
"""

from __future__ import annotations

import numpy as np

from kit.metrics.overlap import iou_matrix

THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.50, 0.951, 0.05), 2))


def hits_at(iou: np.ndarray, thresholds: float | np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Number of (truth, pred) pairs with IoU > t (strict) for each threshold t (int64, shape of thresholds).

    `iou` is an IoU matrix [n_true, n_pred] of non-overlapping objects; for t >= 0.5 the count is TP(t).
    """
    t = np.asarray(thresholds, dtype=np.float64)
    if t.size and (t.min() < 0.5 or t.max() >= 1.0):
        raise ValueError(f"IoU thresholds must lie in [0.5, 1) for one-to-one matching, got {t.tolist()}")
    iou = np.asarray(iou, dtype=np.float64)
    # Only pairs above 0.5 can be hits; sort them once and count with a binary search per threshold.
    candidates = np.sort(iou[iou > 0.5])
    return candidates.size - np.searchsorted(candidates, t, side="right")


def _precision(tp: np.ndarray, n_true: int, n_pred: int) -> np.ndarray:
    """TP / (TP + FP + FN) with TP + FP + FN = n_true + n_pred - TP; 1.0 when both images are empty."""
    if n_true + n_pred == 0:
        return np.ones(np.shape(tp))
    return tp / (n_true + n_pred - tp)


def precision_at(iou: np.ndarray, threshold: float) -> float:
    """DSB precision TP / (TP + FP + FN) at one threshold (hit: IoU > threshold, strict).

    `iou` is an IoU matrix [n_true, n_pred]; `threshold` must lie in [0.5, 1).
    An empty matrix with no rows and no columns scores 1.0 (see the module's empty policy).
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.ndim != 2:
        raise ValueError(f"iou must be a 2-D matrix [n_true, n_pred], got shape {iou.shape}")
    n_true, n_pred = iou.shape
    return float(_precision(hits_at(iou, threshold), n_true, n_pred))


def dsb_precisions(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """DSB precision at each of the 10 `THRESHOLDS` for one pair of H×W label images (float64 [10])."""
    return precisions_of_iou(iou_matrix(truth, pred).iou)


def precisions_of_iou(iou: np.ndarray) -> np.ndarray:
    """DSB precision at each of the 10 `THRESHOLDS` from an IoU matrix [n_true, n_pred] (its shape
    counts the objects: keep rows and columns of unmatched objects)."""
    n_true, n_pred = np.shape(iou)
    return _precision(hits_at(iou, THRESHOLDS), n_true, n_pred)


def dsb_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """DSB score of one image: mean over `THRESHOLDS` of TP / (TP + FP + FN), hits at IoU > t (strict).

    `truth` and `pred` are H×W integer label images (0 = background, ids need not be sequential).
    Both empty scores 1.0; exactly one empty scores 0.0. Raises ValueError on bad shapes or dtypes.
    """
    return float(dsb_precisions(truth, pred).mean())
