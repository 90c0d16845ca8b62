"""`kit demo`'s time budget: how much of it training may take, from an estimate of everything else.

The budget runs from the start of the command to the scored submission. Besides training, the demo
spends time that hardly depends on the budget: for each base model, the image predictions that follow
its training (each fold's last validation and overlay, then out-of-fold and test predictions with every
fold model, their files), the tuning of its post-processing on the out-of-fold maps, and its MLflow runs
and models; at the end, the ensemble (candidates, LightGBM boosters, selection), the evaluations, the
submission and its score.

`measure_speeds` times on this machine, before anything trains, what those costs scale with: one
representative image of the dataset through each base model at its inference settings (random weights:
the speed does not depend on them), a watershed of realistic probability maps, a DSB score, the files of
one prediction, and a few LightGBM boosting rounds on a table of the ensemble's expected size.
`estimate_costs` multiplies them by the demo's counts and adds per-run costs; `Costs.training_seconds`
gives the next base model its share of what is then left. The demo plans again before each base model
trains, from the clock, so a misestimate of one model's costs moves the next model's training time,
not the finish; it reports the estimate beside what each part took, which is what the constants below
are checked against.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kit.config import EnsembleConfig, ExperimentConfig

RUN_S = 2.0
"""Seconds of one MLflow run's bookkeeping (start, params, config, artifacts, end)."""
MODEL_LOG_S = 10.0
"""Seconds of logging a train run's fold models as an MLflow Model (twice per base model: after
training, and again with the tuned post-processing). Measured 14–18 s on a heavily shared 2-core CPU."""
WATERSHED_TRIALS = 58
"""Watershed settings `kit.inference.tuning.tune_postprocess` labels each out-of-fold image with, at
most: seeds 5 × 5, foreground 4 × 2, seeds 5 × 5 again. Each labelling costs one IoU matrix (about one DSB
score), which scores every size rule at once."""
SCORE_THRESHOLDS = 14
"""Detection score thresholds `tune_instances` tries at most."""
SELECTION_THRESHOLDS = 16
"""Drop thresholds the ensemble's selection is scored at on every out-of-fold image."""
EVALUATION_SCORES_PER_IMAGE = 6
"""One evaluation's work per image (score, AP curve, error taxonomy, overlay), in DSB scores."""
PROBE_ROUNDS, PROBE_ROWS = 20, 5000
"""LightGBM boosting rounds on a table of that many rows, timed to estimate the ensemble's boosters
(their time grows with the rows about linearly)."""
FEATURES = 40
"""About how many features the ensemble's LightGBM model has (two base models)."""
MIN_TRAINING_S = 3.0
"""Training seconds per fold when the budget leaves none: a few steps, so the journey still completes."""


@dataclass(frozen=True)
class Speeds:
    """Seconds measured on this machine, for one representative image of the dataset unless said."""

    segment: dict[str, float]  # per base experiment: its Segmenter (network + post-processing)
    watershed: float  # `instances_from_probs` on realistic probability maps
    score: float  # `dsb_score` of a label image against the truth
    write: float  # the files of one prediction (probability maps and label image)
    boost_round: float  # one LightGBM boosting round per 1000 table rows


@dataclass(frozen=True)
class Counts:
    """What the demo's fixed costs scale with, from the dataset's manifest."""

    train: int  # annotated training images in folds (validated, out-of-fold predicted)
    test: int  # test images
    train_nuclei: int  # nuclei in the training images' truth: the ensemble's candidates scale with them


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
    configs: Sequence[ExperimentConfig],
    tasks: Sequence[str],
    speeds: Speeds,
    counts: Counts,
    ensemble: EnsembleConfig,
) -> Costs:
    """`Costs` of the demo's base models `configs` (of model `tasks`, "semantic" or "instance") stacked
    by `ensemble`, on a dataset of `counts`."""
    after = []
    for cfg, task in zip(configs, tasks, strict=True):
        folds = len(cfg.training.folds)
        # each fold's last validation (its val images: all training images once) and overlay, the
        # out-of-fold predictions (every training image once) and the test split with every fold model;
        # only out-of-fold and test predictions write files (once per image)
        predictions = 2 * counts.train + folds + counts.test * folds
        per_prediction = speeds.segment[cfg.name]
        if task == "semantic":  # random weights give flat maps: add a watershed of realistic ones
            per_prediction += speeds.watershed
            tuning = WATERSHED_TRIALS * counts.train * (speeds.watershed + speeds.score)
        else:
            tuning = SCORE_THRESHOLDS * counts.train * speeds.score
        runs = (folds + 3) * RUN_S + 2 * MODEL_LOG_S  # parent, folds, two predict runs; two models
        files = (counts.train + counts.test) * speeds.write
        after.append(predictions * per_prediction + files + tuning + runs)
    candidates = counts.train_nuclei * sum(
        1 + len(ensemble.split_thresholds) if task == "semantic" else 1 for task in tasks
    )
    boosting = (
        ensemble.n_bags
        * ensemble.n_folds
        * ensemble.lightgbm.num_boost_round
        * speeds.boost_round
        * candidates
        * (1 - 1 / ensemble.n_folds)
        / 1000
    )
    images = counts.train + counts.test
    selection = counts.train * SELECTION_THRESHOLDS * speeds.score
    evaluations = (len(configs) + 2) * counts.test * EVALUATION_SCORES_PER_IMAGE * speeds.score
    files = images * speeds.write
    runs = (len(configs) + 5) * RUN_S  # ensemble and its two predict runs, evaluations, submit, score
    return Costs(tuple(after), boosting + selection + evaluations + files + runs)


def measure_speeds(configs: Sequence[ExperimentConfig], image: np.ndarray, labels: np.ndarray) -> Speeds:
    """`Speeds` on `image` (raw, as the dataset holds it) and its truth `labels` (int, H×W)."""
    from scipy import ndimage as ndi

    from kit.inference.artifacts import write_labels, write_probs
    from kit.inference.postprocess import instances_from_probs
    from kit.inference.segmenter import Segmenter
    from kit.metrics import dsb_score
    from kit.models import build_model
    from kit.targets import make_targets, target_channels

    segment = {}
    for cfg in configs:
        untrained = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False})})
        segmenter = Segmenter([build_model(untrained)], cfg)
        segment[cfg.name] = _best_time(lambda s=segmenter: s.predict(image))
    targets = make_targets(labels, include_mask=True)
    probs = np.stack([ndi.gaussian_filter(t, 1.5) for t in targets]).astype(np.float32)
    channels = target_channels(include_mask=True)
    predicted = instances_from_probs(probs, channels)
    with tempfile.TemporaryDirectory(prefix="kit-demo-budget-") as tmp:
        write = _best_time(
            lambda: (write_probs(tmp, "x", probs, channels), write_labels(tmp, "x", predicted))
        )
    return Speeds(
        segment,
        _best_time(lambda: instances_from_probs(probs, channels)),
        _best_time(lambda: dsb_score(labels, predicted)),
        write,
        _boost_round_seconds(PROBE_ROWS) / PROBE_ROWS * 1000,
    )


def _boost_round_seconds(rows: int) -> float:
    """Seconds of one boosting round of the ensemble's kind on random data of `rows` × `FEATURES`."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    data = lgb.Dataset(rng.random((rows, FEATURES)), rng.random(rows), free_raw_data=True)
    params = {"objective": "regression", "num_leaves": 39, "bagging_fraction": 0.8, "bagging_freq": 1}
    params |= {"force_row_wise": True, "deterministic": True, "verbosity": -1, "num_threads": 1}
    seconds = _best_time(lambda: lgb.train(params, data, num_boost_round=PROBE_ROUNDS), 1, warmup=False)
    return seconds / PROBE_ROUNDS


def _best_time(fn: Callable[[], object], repeats: int = 2, *, warmup: bool = True) -> float:
    """Best wall time of `repeats` calls, after an untimed one when `warmup` (one-off setup: oneDNN
    kernels, numba compilation)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def counts_of(manifest) -> Counts:
    """`Counts` of a dataset manifest (`kit.data.manifest`)."""
    train = manifest[(manifest["split"] == "train") & manifest["n_nuclei"].notna() & (manifest["fold"] >= 0)]
    return Counts(len(train), int((manifest["split"] == "test").sum()), int(train["n_nuclei"].sum()))
