"""How far two segmentations of one image agree, instance for instance: for checking that block-wise
prediction reproduces whole-image prediction (`kit.scale`), where every disagreement is a cut, a
duplicate or a moved boundary at a block seam."""

from __future__ import annotations

import numpy as np

from kit.metrics.dsb import dsb_score
from kit.metrics.overlap import iou_matrix
from kit.metrics.taxonomy import count_merges, count_splits

MATCH_IOU = 0.5


def label_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Agreement of label image `other` with `reference` (same shape):

    - n_reference, n_other: instance counts; identical: instances with exactly the same pixels;
    - matched: reference instances with a partner at IoU > 0.5 (one-to-one), mean_matched_iou their mean IoU;
    - dsb: the DSB mAP@[.5:.95] of `other` scored against `reference`;
    - cut: reference instances overlapped by more than one `other` instance at IoU > 0.1 (split apart);
      joined: `other` instances overlapping more than one reference instance at IoU > 0.1 (glued);
    - unmatched_reference, unmatched_other: instances without a partner at IoU > 0.5 (lost or extra).
    """
    m = iou_matrix(reference, other)
    hits = m.iou > MATCH_IOU
    matched_iou = m.iou[hits]
    return {
        "n_reference": m.n_true,
        "n_other": m.n_pred,
        "identical": int(np.count_nonzero(m.iou == 1.0)),
        "matched": int(hits.any(axis=1).sum()),
        "mean_matched_iou": float(matched_iou.mean()) if matched_iou.size else float("nan"),
        "dsb": dsb_score(reference, other),
        "cut": count_splits(m),
        "joined": count_merges(m),
        "unmatched_reference": int((~hits.any(axis=1)).sum()),
        "unmatched_other": int((~hits.any(axis=0)).sum()),
    }
