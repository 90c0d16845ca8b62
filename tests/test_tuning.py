"""Post-processing tuned out of fold: the watershed and size rule of semantic models, the score threshold and
size rule of instance models; never worse than where it started; the size rule follows magnification."""

from __future__ import annotations

import numpy as np
import pytest

from kit.inference.postprocess import drop_small, instances_from_probs
from kit.inference.tuning import tune_instances, tune_postprocess
from kit.metrics import dsb_score
from kit.targets import make_targets


def _disks(shape=(96, 96), centres=((20, 20), (20, 60), (60, 30), (70, 70)), radius=9) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, dtype=np.int32)
    for k, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = k
    return labels


START = {
    "seed_threshold": 0.5,
    "min_seed_size": 8,
    "mask_threshold": 0.5,
    "grow_with_mask": True,
    "min_size": 10,
    "min_area_fraction": 0.0,
}


def test_tuning_drops_specks_the_starting_settings_keep() -> None:
    truth = _disks()
    probs = make_targets(truth, include_mask=True)
    # specks of confident "nucleus" that are not nuclei: the watershed keeps them at min_size 10
    for r, c in ((50, 5), (88, 40), (5, 90)):
        probs[0, r : r + 5, c : c + 5], probs[2, r : r + 5, c : c + 5], probs[3, r : r + 5, c : c + 5] = (
            1,
            0,
            1,
        )
    channels = ("body", "border", "background", "mask")
    items = [(probs, channels, truth)]
    result = tune_postprocess(items, START)
    assert result.start_score < 0.6 < result.score == pytest.approx(1.0)
    labels = instances_from_probs(probs, channels, **{**START, **result.params})
    assert labels.max() == 4
    assert set(result.trials.columns) >= {"seed_threshold", "min_area_fraction", "score"}


def test_tuning_keeps_the_start_when_nothing_is_better() -> None:
    truth = _disks()
    probs = make_targets(truth, include_mask=True)
    result = tune_postprocess([(probs, ("body", "border", "background", "mask"), truth)], START)
    assert result.score == result.start_score == pytest.approx(1.0)
    assert result.params == {k: START[k] for k in result.params}


def test_relative_size_rule_follows_the_median_area() -> None:
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[:10, :10], labels[20:30, 20:30], labels[0:2, 30:32] = 1, 2, 3  # 100, 100, 4 px
    assert drop_small(labels, 0, 0.2).max() == 2  # 4 < 0.2 × 100
    assert drop_small(labels // 1 * (labels > 0), 0, 0.0).max() == 3
    small = labels[:, :].copy()
    assert drop_small(small, 50, 0.0).max() == 2


def test_instance_tuning_raises_the_score_threshold_past_false_detections() -> None:
    truth = _disks()
    labels = truth.copy()
    labels[36:50, 80:94] = 5  # false detections as large as a nucleus, low scores
    labels[80:94, 2:16] = 6
    scores = np.array([0.9, 0.95, 0.8, 0.85, 0.55, 0.6])
    result = tune_instances(
        [(labels, scores, truth)], {"score_threshold": 0.5, "min_size": 0, "min_area_fraction": 0.0}
    )
    assert result.start_score == pytest.approx(dsb_score(truth, labels))
    assert result.score == pytest.approx(1.0)
    assert 0.6 < result.params["score_threshold"] <= 0.8
