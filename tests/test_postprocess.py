"""Watershed post-processing on ideal probability maps drawn from known discs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from kit.errors import ConfigError
from kit.inference import instances_from_probs

THREE = ("body", "border", "background")
FOUR = (*THREE, "mask")


def disc(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def touching_discs() -> np.ndarray:
    """Two overlapping discs, the overlap split by the nearer centre: labels 1 and 2."""
    shape, centers = (80, 100), ((40, 36), (40, 64))
    a, b = disc(shape, centers[0], 16), disc(shape, centers[1], 16)
    labels = np.zeros(shape, np.int32)
    labels[a] = 1
    labels[b & (~a | (np.indices(shape)[1] >= 50))] = 2
    return labels


def ideal_probs(labels: np.ndarray, with_mask: bool = False) -> np.ndarray:
    """Body = instances minus the touching border (pixels whose 3×3 window holds two ids)."""
    high = ndi.maximum_filter(labels, 3)
    low = ndi.minimum_filter(np.where(labels > 0, labels, labels.max() + 1), 3)
    border = (labels > 0) & (high != low) & (low <= labels.max())
    body = (labels > 0) & ~border
    maps = [body, border, ~(body | border)] + ([labels > 0] if with_mask else [])
    return np.stack(maps).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_watershed_separates_two_touching_discs() -> None:
    truth = touching_discs()
    probs = ideal_probs(truth)
    assert probs[1].sum() > 0
    out = instances_from_probs(probs, THREE)
    assert out.dtype == np.int32 and out.shape == truth.shape
    assert set(np.unique(out)) == {0, 1, 2}
    for i in (1, 2):
        best = max(iou(out == j, truth == i) for j in (1, 2))
        assert best > 0.9
    assert np.array_equal(out > 0, truth > 0)  # border pixels are shared out between the two


def test_mask_channel_grows_instances_back_over_the_carved_border() -> None:
    truth = touching_discs()
    probs = ideal_probs(truth, with_mask=True)
    body, border = probs[0] > 0.5, probs[1] > 0.5

    carved = instances_from_probs(probs, FOUR, grow_with_mask=False)
    assert np.array_equal(carved > 0, body)
    grown = instances_from_probs(probs, FOUR, grow_with_mask=True)
    assert np.array_equal(grown > 0, truth > 0)
    assert (grown[border] > 0).all()
    assert set(np.unique(grown)) == {0, 1, 2}
    assert np.array_equal(grown[body], carved[body])


def test_min_size_drops_specks_and_relabels() -> None:
    truth = touching_discs()
    truth[5:8, 90:93] = 3  # a 9-pixel speck
    probs = ideal_probs(truth)
    assert set(np.unique(instances_from_probs(probs, THREE, min_size=10))) == {0, 1, 2}
    kept = instances_from_probs(probs, THREE, min_size=5)
    assert set(np.unique(kept)) == {0, 1, 2, 3}
    assert (kept[5:8, 90:93] == 1).all()  # relabelled in seed order: the speck comes first


def test_small_seeds_are_dropped() -> None:
    probs = ideal_probs(touching_discs())
    probs[0, 5:7, 5:7] = 1  # 4-pixel blob
    out = instances_from_probs(probs, THREE, min_size=1, min_seed_size=5)
    assert out[5:7, 5:7].max() == 0


def test_fill_holes_fills_a_hole_owned_by_one_instance_only() -> None:
    shape = (80, 80)
    ring = disc(shape, (40, 40), 15) & ~disc(shape, (40, 40), 5)
    probs = ideal_probs(ring.astype(np.int32))
    hole = disc(shape, (40, 40), 5)
    assert (instances_from_probs(probs, THREE, fill_holes=False)[hole] == 0).all()
    filled = instances_from_probs(probs, THREE)
    assert (filled[hole] == 1).all() and filled.max() == 1

    # The same ring cut into two instances: its hole has two owners and stays background.
    halves = ring.astype(np.int32) + (ring & (np.indices(shape)[1] >= 40))
    out = instances_from_probs(ideal_probs(halves), THREE)
    assert out.max() == 2
    assert (out[hole] == 0).all()


def test_empty_map_gives_no_instances() -> None:
    probs = np.zeros((3, 30, 40), np.float32)
    probs[2] = 1
    out = instances_from_probs(probs, THREE)
    assert out.dtype == np.int32 and not out.any()


def test_bad_channels_are_config_errors() -> None:
    probs = np.zeros((3, 8, 8), np.float32)
    with pytest.raises(ConfigError, match="body"):
        instances_from_probs(probs, ("mask", "border", "background"))
    with pytest.raises(ConfigError, match="K = 4"):
        instances_from_probs(probs, FOUR)
