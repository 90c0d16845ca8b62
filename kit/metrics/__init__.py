"""Metrics on label images: overlap/IoU matrix, DSB score, dataset evaluation, error taxonomy, plots.

Label convention everywhere: H×W integer image, 0 = background, ids need not be sequential, objects
never overlap. Every threshold is strict: a hit is IoU > t (the DSB rule, unlike StarDist/Cellpose >=).
The plain reference of the overlap kernel (a test oracle) stays in `kit.metrics.overlap`, not exported.
"""

from kit.metrics.agreement import label_agreement
from kit.metrics.dsb import (
    THRESHOLDS,
    dsb_precisions,
    dsb_score,
    hits_at,
    precision_at,
    precisions_of_iou,
)
from kit.metrics.evaluation import (
    Evaluation,
    bootstrap_ci,
    evaluate,
    f1_curve,
    image_metrics,
    paired_bootstrap_ci,
    summarize,
)
from kit.metrics.overlap import IoUMatrix, check_label_image, iou_matrix, label_overlap
from kit.metrics.overlay import save_overlay, tp_fp_fn_overlay
from kit.metrics.plots import (
    plot_ap_curves,
    plot_error_bars,
    plot_error_comparison,
    plot_f1_curves,
    plot_overlay_gallery,
)
from kit.metrics.taxonomy import (
    SIZE_BINS,
    count_extra,
    count_merges,
    count_splits,
    missed_by_size,
)

__all__ = [
    "SIZE_BINS",
    "THRESHOLDS",
    "Evaluation",
    "IoUMatrix",
    "bootstrap_ci",
    "check_label_image",
    "count_extra",
    "count_merges",
    "count_splits",
    "dsb_precisions",
    "dsb_score",
    "evaluate",
    "f1_curve",
    "hits_at",
    "image_metrics",
    "iou_matrix",
    "label_agreement",
    "label_overlap",
    "missed_by_size",
    "paired_bootstrap_ci",
    "plot_ap_curves",
    "plot_error_bars",
    "plot_error_comparison",
    "plot_f1_curves",
    "plot_overlay_gallery",
    "precision_at",
    "precisions_of_iou",
    "save_overlay",
    "summarize",
    "tp_fp_fn_overlay",
]
