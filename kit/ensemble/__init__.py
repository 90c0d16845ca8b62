"""The second level: a LightGBM model predicting each instance candidate's IoU with the truth, used to
choose among the instances of several base experiments (topcoders' DSB2018 winner, Vuola et al. 2019).

Building blocks, one job each: `candidates` (label images + table from base predict runs, with
re-splits), `shape` and `features` (per-candidate features, vectorised per image), `target`, `model`
(bagged LightGBM), `selection` (greedy NMS on predicted IoU, threshold tuning), `estimate` (DSB score
estimated without truth), `plots`; `stage` runs them as `kit ensemble`.
"""

from kit.ensemble.candidates import CANDIDATE_COLUMNS, Candidates, SourceRun, image_candidates, split_layers
from kit.ensemble.estimate import ScoreEstimator
from kit.ensemble.features import candidate_features, feature_names
from kit.ensemble.model import IoUModel, fit_bagged
from kit.ensemble.selection import best_threshold, restrict, select_instances, threshold_scores
from kit.ensemble.shape import SHAPE_FEATURES, shape_features
from kit.ensemble.target import best_truth_iou, iou_target

__all__ = [
    "CANDIDATE_COLUMNS",
    "SHAPE_FEATURES",
    "Candidates",
    "IoUModel",
    "ScoreEstimator",
    "SourceRun",
    "best_threshold",
    "best_truth_iou",
    "candidate_features",
    "feature_names",
    "fit_bagged",
    "image_candidates",
    "iou_target",
    "restrict",
    "select_instances",
    "shape_features",
    "split_layers",
    "threshold_scores",
]
