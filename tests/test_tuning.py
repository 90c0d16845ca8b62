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


def test_every_size_rule_and_score_threshold_is_scored_as_dropping_the_instances_would_score() -> None:
    """The tuners score size rules from one IoU matrix per labelling; that must equal scoring the labels
    that `drop_small` (after the score threshold's drop) leaves, including the median-relative rule."""
    from scipy import ndimage as ndi

    from kit.inference.tuning import scores_by_size

    rng = np.random.default_rng(3)
    truth = ndi.label(ndi.gaussian_filter(rng.random((160, 160)), 2.5) > 0.53)[0]
    # a prediction: the truth's nuclei, some shrunk, some missed, plus specks of every size
    pred = np.where(ndi.grey_erosion(truth, size=(3, 3)) == truth, truth, 0)
    pred[np.isin(pred, [3, 4])] = 0  # ids with no pixels must not count
    specks = ndi.label(ndi.gaussian_filter(rng.random((160, 160)), 1.0) > 0.62)[0]
    pred = np.where((pred == 0) & (specks > 0), specks + truth.max(), pred)
    areas = np.bincount(pred.ravel())[1:]
    assert truth.max() > 20 and pred.max() > 20 and areas[areas > 0].min() < 10 < areas.max()
    sizes = [(0, 0.0), (10, 0.0), (25, 0.0), (0, 0.3), (10, 0.5)]
    keep = np.concatenate([[False], rng.random(pred.max()) > 0.3])
    expected_all = [dsb_score(truth, drop_small(pred, s, f)) for s, f in sizes]
    kept = np.where(keep[pred], pred, 0)
    expected_kept = [dsb_score(truth, drop_small(kept, s, f)) for s, f in sizes]
    assert len(set(np.round(expected_all, 6))) > 2  # the rules change the score
    np.testing.assert_allclose(scores_by_size(truth, pred, sizes), expected_all, atol=1e-12)
    np.testing.assert_allclose(scores_by_size(truth, pred, sizes, keep), expected_kept, atol=1e-12)
    empty = np.zeros_like(truth)
    assert scores_by_size(empty, empty, sizes).tolist() == [1.0] * len(sizes)
