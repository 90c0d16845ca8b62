"""Choosing among overlapping candidates: greedy non-maximum suppression on predicted IoU (Vuola et al. 2019).

Per image, candidates are visited in decreasing predicted IoU. Visiting stops at the first one below
`threshold` (they are dropped). A candidate is suppressed when more than `nms_overlap` of its pixels
already belong to kept instances; otherwise it is kept as the next instance and takes its free pixels
(pixels already taken stay with the better-ranked instance). The output is therefore a non-overlapping
label image whatever the candidates.

Suppression measures the share of the candidate already taken rather than its IoU with one kept
instance: a merged candidate whose two halves were kept separately is suppressed even though its IoU
with each half is only about 0.5, and the output never needs a second overlap-resolution pass.

Because kept instances never lose pixels to later ones, the selection at threshold t is exactly the
selection at a lower threshold restricted to instances with predicted IoU >= t. `threshold_scores`
uses this to score a whole grid of thresholds from one selection.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from kit.metrics import THRESHOLDS, hits_at, iou_matrix

KEPT_COLUMNS: tuple[str, ...] = ("label", "candidate", "predicted_iou", "area")


def select_instances(
    layers: np.ndarray,
    table: pd.DataFrame,
    predicted: np.ndarray,
    *,
    threshold: float,
    nms_overlap: float = 0.3,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Greedy NMS over the candidates of one image (see the module docstring).

    `layers` (L, H, W) and `table` (columns `layer`, `label`) describe the candidates as in
    `kit.ensemble.candidates`; `predicted` their predicted IoUs, in table order. Returns the H×W int32
    label image (kept instances numbered 1..K in the order kept) and one row per kept instance
    (`KEPT_COLUMNS`: its new label, the candidate's row position in `table`, predicted IoU, area kept).
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    if len(predicted) != len(table):
        raise ValueError(f"{len(predicted)} predictions for {len(table)} candidates")
    out = np.zeros(layers.shape[1:], dtype=np.int32)
    kept: list[tuple[int, int, float, int]] = []
    order = np.argsort(-predicted, kind="stable")
    order = order[predicted[order] >= threshold]
    layer_of = table["layer"].to_numpy()
    label_of = table["label"].to_numpy()
    boxes = {layer: ndi.find_objects(layers[layer]) for layer in np.unique(layer_of[order])}
    for row in order:
        layer, label = int(layer_of[row]), int(label_of[row])
        box = boxes[layer][label - 1]
        mask = layers[layer][box] == label
        region = out[box]
        free = mask & (region == 0)
        area, n_free = int(mask.sum()), int(free.sum())
        if area - n_free > nms_overlap * area:
            continue
        region[free] = len(kept) + 1
        kept.append((len(kept) + 1, int(row), float(predicted[row]), n_free))
    frame = pd.DataFrame(kept, columns=list(KEPT_COLUMNS))
    return out, frame.astype(
        {"label": np.int64, "candidate": np.int64, "predicted_iou": np.float64, "area": np.int64}
    )


def restrict(labels: np.ndarray, kept: pd.DataFrame, threshold: float) -> tuple[np.ndarray, pd.DataFrame]:
    """The selection at a stricter `threshold`: instances of (`labels`, `kept`) with predicted IoU
    >= threshold, renumbered 1..K in their order."""
    keep = kept[kept["predicted_iou"] >= threshold].reset_index(drop=True)
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[keep["label"].to_numpy()] = np.arange(1, len(keep) + 1, dtype=np.int32)
    keep["label"] = np.arange(1, len(keep) + 1)
    return lut[labels], keep


def threshold_scores(
    truth: np.ndarray, labels: np.ndarray, kept: pd.DataFrame, grid: Sequence[float]
) -> np.ndarray:
    """DSB image score (float64 [len(grid)]) of the selection restricted to each threshold of `grid`.

    (`labels`, `kept`) must be a selection at a threshold <= min(grid). One IoU matrix serves every
    threshold: dropping instances does not change the others' pixels.
    """
    m = iou_matrix(truth, labels)
    score_of = np.zeros(int(labels.max(initial=0)) + 1)
    score_of[kept["label"].to_numpy()] = kept["predicted_iou"].to_numpy()
    column_score = score_of[m.pred_ids]
    scores = np.empty(len(grid))
    for i, t in enumerate(grid):
        iou = m.iou[:, column_score >= t]
        n_pred = iou.shape[1]
        if m.n_true + n_pred == 0:
            scores[i] = 1.0
            continue
        tp = hits_at(iou, THRESHOLDS)
        scores[i] = float(np.mean(tp / (m.n_true + n_pred - tp)))
    return scores


def best_threshold(grid: Sequence[float], mean_scores: np.ndarray, prefer: float = 0.3) -> float:
    """The grid threshold with the highest mean OOF score; among ties the one nearest `prefer` (seed
    001's 0.3), so a flat curve (e.g. no instance at all) gives the usual value."""
    grid, scores = np.asarray(grid, dtype=np.float64), np.asarray(mean_scores, dtype=np.float64)
    tied = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(grid[tied[np.argmin(np.abs(grid[tied] - prefer))]])
