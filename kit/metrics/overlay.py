"""TP/FP/FN contour overlay of one image: what people read at a glance (Vuola et al. 2019, Figs 5.1, 5.3)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kit.metrics.overlap import iou_matrix
from kit.visualize import display_rgb, label_boundaries, save_png

TP_COLOR = (0, 255, 0)
FP_COLOR = (255, 0, 0)
FN_COLOR = (0, 0, 255)


def _keep(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """`labels` with every object not in `ids` set to background."""
    return np.where(np.isin(labels, ids), labels, 0)


def tp_fp_fn_overlay(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """H×W×3 uint8 picture of `image` with matched predictions (TP) outlined green, unmatched predictions
    (FP) red and unmatched truth objects (FN) blue.

    `image` is grey (H×W) or colour (H×W×C), any dtype; `truth` and `pred` are H×W label images
    (0 = background). A match is IoU > `iou_threshold` (strict), which must lie in [0.5, 1) so matches
    are one-to-one. Where contours touch, TP is drawn over FP over FN.
    """
    if not 0.5 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must lie in [0.5, 1), got {iou_threshold}")
    m = iou_matrix(truth, pred)
    rgb = display_rgb(image)
    if rgb.shape[:2] != np.shape(truth):
        raise ValueError(f"image and label images must share H×W, got {rgb.shape[:2]} and {np.shape(truth)}")
    truth_matched, pred_matched = m.matched(iou_threshold)
    layers = (
        (truth, m.truth_ids[~truth_matched], FN_COLOR),
        (pred, m.pred_ids[~pred_matched], FP_COLOR),
        (pred, m.pred_ids[pred_matched], TP_COLOR),
    )
    for labels, ids, color in layers:
        if ids.size:
            rgb[label_boundaries(_keep(np.asarray(labels), ids))] = color
    return rgb


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    iou_threshold: float = 0.5,
) -> Path:
    """Write `tp_fp_fn_overlay(image, truth, pred, iou_threshold)` as a PNG (atomic) and return its path."""
    return save_png(path, tp_fp_fn_overlay(image, truth, pred, iou_threshold))
