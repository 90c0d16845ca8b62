"""The IoU model's target: each candidate's best IoU with a truth instance, zeroed below a minimum.

topcoders and Vuola et al. 2019: target = best IoU with the truth if above 0.5, else 0. Below 0.5 a candidate can
never be a hit at any DSB threshold, so how bad it is does not matter; zeroing it lets the model spend its
capacity on ranking candidates that can count.
"""

from __future__ import annotations

import numpy as np

from kit.ensemble.candidates import Candidates
from kit.metrics import iou_matrix


def best_truth_iou(cands: Candidates, truth: np.ndarray) -> np.ndarray:
    """float64 [n candidates]: each candidate's highest IoU with an instance of the H×W label image
    `truth` (0 when it touches none), in the order of `cands.table`."""
    out = np.zeros(len(cands.table))
    table = cands.table.reset_index(drop=True)
    for layer, rows in table.groupby("layer"):
        m = iou_matrix(truth, cands.layers[layer])
        best = np.zeros(int(cands.layers[layer].max(initial=0)) + 1)
        if m.iou.size:
            best[m.pred_ids] = m.iou.max(axis=0)
        out[rows.index.to_numpy()] = best[rows["label"].to_numpy()]
    return out


def iou_target(best_iou: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """The target: `best_iou` where it is strictly above `min_iou`, else 0."""
    best_iou = np.asarray(best_iou, dtype=np.float64)
    return np.where(best_iou > min_iou, best_iou, 0.0)
