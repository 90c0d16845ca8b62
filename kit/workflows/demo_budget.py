"""`kit demo`'s time budget: how much of it training may take, from an estimate of everything else.

The budget runs from the start of the command to the scored submission. Besides training, the demo
spends time that hardly depends on the budget: for each base model, the image predictions that follow
its training (each fold's last validation and overlay, then out-of-fold and test predictions with every
fold model), the tuning of its post-processing on the out-of-fold maps, and its MLflow runs and models;
at the end, the ensemble, the evaluations, the submission and its score.

`measure_speeds` times on this machine, before anything trains, what those costs scale with: one
representative image of the dataset through each base model at its inference settings (random
weights: the speed does not depend on them), a watershed of realistic probability maps, a DSB score.
`estimate_costs` multiplies them by the demo's image counts and adds per-run costs; `training_seconds`
gives the next base model its share of what is then left. The demo plans again before each base model
trains, from the clock, so a misestimate of one model's costs moves the next model's training time,
not the finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kit.config import ExperimentConfig

RUN_S = 2.0
"""Seconds of one MLflow run's bookkeeping (start, params, config, artifacts, end)."""
MODEL_LOG_S = 8.0
"""Seconds of logging a train run's fold models as an MLflow Model (twice per base model: after
training, and again with the tuned post-processing)."""
WATERSHED_TRIALS = 58
"""Watershed settings `kit.inference.tuning.tune_postprocess` labels each out-of-fold image with, at
most: seeds 5 × 5, foreground 4 × 2, seeds 5 × 5 again."""
SIZE_RULES = 19
"""Size rules every tuning trial scores (3 × 6 of the grid and the starting one)."""
SCORE_THRESHOLDS = 14
"""Detection score thresholds `tune_instances` tries at most."""
ENSEMBLE_SCORES_PER_IMAGE = 40
"""The ensemble's work per image (candidates, their re-splits, features, selection), in DSB scores of
that image: it matches every base model's instances against each other and the truth."""
EVALUATION_SCORES_PER_IMAGE = 6
"""One evaluation's work per image (score, AP curve, error taxonomy, overlay), in DSB scores."""
LIGHTGBM_S = 20.0
"""Seconds of training the ensemble's LightGBM boosters (bags × folds) and applying them."""
MIN_TRAINING_S = 3.0
"""Training seconds per fold when the budget leaves none: a few steps, so the journey still completes."""


@dataclass(frozen=True)
class Speeds:
    """Seconds measured on this machine for one representative image of the dataset."""

    segment: dict[str, float]  # per base experiment: its Segmenter (network + post-processing)
    watershed: float  # `instances_from_probs` on realistic probability maps
    score: float  # `dsb_score` of a label image against the truth


@dataclass(frozen=True)
class Costs:
    """Estimated seconds outside training: after each base model's training (in demo order), and at the
    end (ensemble, evaluations, submission, score)."""

    after_training: tuple[float, ...]
    final: float

    def training_seconds(self, left_s: float, index: int, shares: Sequence[float], folds: int) -> float:
        """Training seconds of base model `index` when `left_s` seconds of the budget remain before its
        training: what its own and the later models' costs and the final stages leave, shared by the
        `shares` of the models from `index` on; at least `MIN_TRAINING_S` per fold of its `folds`."""
        free = left_s - sum(self.after_training[index:]) - self.final
        share = shares[index] / sum(shares[index:])
        return max(free * share, MIN_TRAINING_S * folds)

    def total(self) -> float:
        return sum(self.after_training) + self.final


def estimate_costs(
    configs: Sequence[ExperimentConfig], tasks: Sequence[str], speeds: Speeds, n_train: int, n_test: int
) -> Costs:
    """`Costs` of the demo's base models `configs` (of model `tasks`, "semantic" or "instance") on a
    dataset of `n_train` annotated training images (in folds) and `n_test` test images."""
    after = []
    for cfg, task in zip(configs, tasks, strict=True):
        folds = len(cfg.training.folds)
        # each fold's last validation (its val images: all training images once) and overlay, the
        # out-of-fold predictions (every training image once) and the test split with every fold model
        images = 2 * n_train + folds + n_test * folds
        if task == "semantic":
            tuning = WATERSHED_TRIALS * n_train * (speeds.watershed + SIZE_RULES * speeds.score)
        else:
            tuning = SCORE_THRESHOLDS * SIZE_RULES * n_train * speeds.score
        runs = (folds + 3) * RUN_S + 2 * MODEL_LOG_S  # parent, folds, two predict runs; two models
        after.append(images * speeds.segment[cfg.name] + tuning + runs)
    bases = len(configs)
    ensemble = (n_train + n_test) * ENSEMBLE_SCORES_PER_IMAGE * bases * speeds.score + LIGHTGBM_S
    evaluations = (bases + 2) * n_test * EVALUATION_SCORES_PER_IMAGE * speeds.score  # + the score
    final = ensemble + evaluations + (bases + 4) * RUN_S  # ensemble, evaluations, submission, score
    return Costs(tuple(after), final)


def measure_speeds(configs: Sequence[ExperimentConfig], image: np.ndarray, labels: np.ndarray) -> Speeds:
    """`Speeds` on `image` (raw, as the dataset holds it) and its truth `labels` (int, H×W)."""
    from scipy import ndimage as ndi

    from kit.inference.postprocess import instances_from_probs
    from kit.inference.segmenter import Segmenter
    from kit.metrics import dsb_score
    from kit.targets import make_targets, target_channels
    from kit.training.trainer import build_model

    segment = {}
    for cfg in configs:
        untrained = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False})})
        segmenter = Segmenter([build_model(untrained)], cfg)
        segment[cfg.name] = _best_time(lambda s=segmenter: s.predict(image))
    targets = make_targets(labels, include_mask=True)
    probs = np.stack([ndi.gaussian_filter(t, 1.5) for t in targets]).astype(np.float32)
    channels = target_channels(include_mask=True)
    predicted = instances_from_probs(probs, channels)
    return Speeds(
        segment,
        _best_time(lambda: instances_from_probs(probs, channels)),
        _best_time(lambda: dsb_score(labels, predicted)),
    )


def _best_time(fn: Callable[[], object], repeats: int = 2) -> float:
    """Best wall time of `repeats` calls after an untimed one (one-off setup: oneDNN kernels, numba)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)
