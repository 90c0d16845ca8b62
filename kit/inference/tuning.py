"""Post-processing thresholds tuned on out-of-fold probability maps (what the DSB2018 winners did by hand).

`tune_postprocess` searches the watershed settings of `instances_from_probs` for the highest mean DSB
score over images that the models did not train on, by coordinate descent over a small grid: seeds
(`seed_threshold` × `min_seed_size`), then the foreground (`mask_threshold` × `grow_with_mask`), then the
seeds once more; every labelling is scored at each (`min_size`, `min_area_fraction`) of the grid, which
only drops instances and costs no watershed: dropping an instance only removes its column from the IoU
matrix, so one matrix per labelling scores every size rule (`scores_by_size`). It starts from the config's
values, so the result is never worse on these images.

The size rule is mostly relative (`min_area_fraction` of each image's median instance area, up to
half of it) and the absolute `min_size` stays small (≤ 25 px): thresholds tuned on one dataset's
magnification then still hold on images whose nuclei are much smaller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kit.inference.postprocess import instances_from_probs, size_limit
from kit.metrics import iou_matrix, precisions_of_iou

WATERSHED_KEYS = ("seed_threshold", "min_seed_size", "mask_threshold", "grow_with_mask")
SIZE_KEYS = ("min_size", "min_area_fraction")
TUNED_KEYS = WATERSHED_KEYS + SIZE_KEYS
DEFAULT_GRID: dict[str, tuple] = {
    "seed_threshold": (0.4, 0.5, 0.6, 0.7, 0.8),
    "min_seed_size": (4, 8, 16, 32, 64),
    "mask_threshold": (0.3, 0.4, 0.5, 0.6),
    "grow_with_mask": (True, False),
    "min_size": (0, 10, 25),
    "min_area_fraction": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
}

Item = tuple[np.ndarray, Sequence[str], np.ndarray]  # probs (K, H, W), channel names, truth labels


def scores_by_size(
    truth: np.ndarray,
    labels: np.ndarray,
    sizes: Sequence[tuple[int, float]],
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """DSB score of `dsb_score(truth, drop_small(labels', size, fraction))` for each (size, fraction) of
    `sizes`, where labels' holds only the ids of `labels` with `keep[id]` true (all ids when `keep` is None),
    from one IoU matrix: a dropped instance is a dropped column, and the other pairs' IoU is unchanged."""
    m = iou_matrix(truth, labels)
    columns = np.ones(m.n_pred, dtype=bool) if keep is None else np.asarray(keep)[m.pred_ids]
    areas = np.concatenate([[0], m.pred_areas[columns]])
    iou = m.iou[:, columns]
    return np.array(
        [
            precisions_of_iou(iou[:, areas[1:] >= size_limit(areas, size, fraction)]).mean()
            for size, fraction in sizes
        ]
    )


@dataclass
class TuneResult:
    """The best settings, their mean score, the starting settings' score, and every setting tried."""

    params: dict
    score: float
    start_score: float
    trials: pd.DataFrame


def tune_postprocess(
    items: Sequence[Item], start: Mapping, grid: Mapping[str, Sequence] | None = None
) -> TuneResult:
    """Best `instances_from_probs` settings for `items` (see the module docstring).

    `start` holds the current settings (every key of `TUNED_KEYS` plus any other `instances_from_probs`
    argument, passed through unchanged). Ties keep the earlier (starting) setting.
    """
    if not items:
        raise ValueError("tuning needs at least one image with truth")
    grid = {**DEFAULT_GRID, **(grid or {})}
    sizes = sorted(
        {(int(start["min_size"]), float(start.get("min_area_fraction", 0.0)))}
        | {(int(a), float(f)) for a in grid["min_size"] for f in grid["min_area_fraction"]}
    )
    trials: list[dict] = []
    cache: dict[tuple, dict[tuple[int, float], float]] = {}

    def evaluate(params: Mapping) -> dict[tuple[int, float], float]:
        key = tuple(params[k] for k in WATERSHED_KEYS)
        if key not in cache:
            totals = np.zeros(len(sizes))
            for probs, channels, truth in items:
                labels = instances_from_probs(
                    probs, channels, **{**params, "min_size": 0, "min_area_fraction": 0.0}
                )
                totals += scores_by_size(truth, labels, sizes)
            cache[key] = {s: float(t / len(items)) for s, t in zip(sizes, totals, strict=True)}
            for (size, fraction), score in cache[key].items():
                trials.append(
                    {
                        **dict(zip(WATERSHED_KEYS, key, strict=True)),
                        "min_size": size,
                        "min_area_fraction": fraction,
                        "score": score,
                    }
                )
        return cache[key]

    best = {"min_area_fraction": 0.0, **start}
    start_score = evaluate(best)[(int(best["min_size"]), float(best["min_area_fraction"]))]
    best_score = start_score

    def consider(params: dict) -> None:
        nonlocal best, best_score
        for (size, fraction), score in evaluate(params).items():
            if score > best_score + 1e-9:
                best, best_score = {**params, "min_size": size, "min_area_fraction": fraction}, score

    for keys in (
        ("seed_threshold", "min_seed_size"),
        ("mask_threshold", "grow_with_mask"),
        ("seed_threshold", "min_seed_size"),
    ):
        base = dict(best)
        for a in grid[keys[0]]:
            for b in grid[keys[1]]:
                consider({**base, keys[0]: a, keys[1]: b})
    params = {k: best[k] for k in TUNED_KEYS}
    return TuneResult(params, best_score, start_score, pd.DataFrame(trials).drop_duplicates())


INSTANCE_KEYS = ("score_threshold", *SIZE_KEYS)
INSTANCE_SCORE_GRID: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.3, 0.951, 0.05), 2))

InstanceItem = tuple[np.ndarray, np.ndarray, np.ndarray]  # labels, score of label i at i − 1, truth labels


def tune_instances(
    items: Sequence[InstanceItem], start: Mapping, grid: Mapping[str, Sequence] | None = None
) -> TuneResult:
    """Best detection score threshold and size rule of an instance model (Mask R-CNN) on out-of-fold
    predictions made at `start["score_threshold"]`: only stricter thresholds can be tried, by dropping
    the instances scored below them (the pixels they won from an overlapping detection stay empty, a
    close approximation of re-running `detections_to_labels`). Ties keep the earlier setting."""
    if not items:
        raise ValueError("tuning needs at least one image with truth")
    grid = {**DEFAULT_GRID, "score_threshold": INSTANCE_SCORE_GRID, **(grid or {})}
    base = float(start["score_threshold"])
    thresholds = [base, *sorted(t for t in grid["score_threshold"] if t > base)]
    sizes = [(int(start["min_size"]), float(start.get("min_area_fraction", 0.0)))]
    sizes += [(int(a), float(f)) for a in grid["min_size"] for f in grid["min_area_fraction"]]
    totals = np.zeros((len(thresholds), len(sizes)))
    for labels, scores, truth in items:
        for i, t in enumerate(thresholds):
            keep = np.concatenate([[False], np.asarray(scores) >= t])
            totals[i] += scores_by_size(truth, labels, sizes, keep)
    means = totals / len(items)
    trials = pd.DataFrame(
        [
            {"score_threshold": t, "min_size": s, "min_area_fraction": f, "score": means[i, j]}
            for i, t in enumerate(thresholds)
            for j, (s, f) in enumerate(sizes)
        ]
    )
    i, j = np.unravel_index(int(np.argmax(means)), means.shape)  # first maximum: the start on ties
    best = {"score_threshold": thresholds[i], "min_size": sizes[j][0], "min_area_fraction": sizes[j][1]}
    return TuneResult(best, float(means[i, j]), float(means[0, 0]), trials)
