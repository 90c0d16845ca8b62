"""Synthetic nuclei data: determinism, exact and exclusive labels, touching nuclei, styles, splits."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from kit.data.synthetic import SYNTHETIC_STYLES, generate_synthetic
from kit.errors import DataError


@pytest.fixture(scope="module")
def samples():
    return generate_synthetic(24, seed=0)


def _touching_pairs(labels: np.ndarray) -> int:
    """Number of 4-adjacent pixel pairs that belong to two different nuclei."""
    h = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    v = (labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)
    return int(h.sum() + v.sum())


def _grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) if image.ndim == 2 else image.astype(np.float64).mean(axis=2)


def test_same_seed_identical_and_different_seed_differs(samples):
    again = generate_synthetic(24, seed=0)
    for a, b in zip(samples, again, strict=True):
        assert (a.id, a.split, a.meta, a.source) == (b.id, b.split, b.meta, b.source)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
    other = generate_synthetic(2, seed=1)
    assert other[0].image.shape != samples[0].image.shape or not np.array_equal(
        other[0].image, samples[0].image
    )


def test_longer_set_extends_shorter_one(samples):
    short = generate_synthetic(3, seed=0)
    for a, b in zip(short, samples[:3], strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_ids_meta_source_and_styles(samples):
    assert [s.id for s in samples[:3]] == ["synth_0000", "synth_0001", "synth_0002"]
    assert {s.meta["style_name"] for s in samples} == set(SYNTHETIC_STYLES)
    assert all(s.source == "synthetic(seed=0)" for s in samples)
    only = generate_synthetic(3, seed=0, styles=("brightfield",))
    assert {s.meta["style_name"] for s in only} == {"brightfield"}


def test_shapes_and_dtypes(samples):
    for s in samples:
        assert s.image.dtype == np.uint8
        assert s.labels.dtype == np.int32
        assert s.labels.shape == s.image.shape[:2]
        assert all(192 <= side <= 320 for side in s.labels.shape)
        if s.meta["style_name"] == "fluorescence":
            assert s.image.ndim == 2
        else:
            assert s.image.ndim == 3 and s.image.shape[2] == 3
    assert any(side % 2 for s in samples for side in s.labels.shape)
    fixed = generate_synthetic(2, seed=0, size=(97, 131))
    assert [s.labels.shape for s in fixed] == [(97, 131), (97, 131)]


def test_labels_sequential_connected_and_sized(samples):
    for s in samples:
        ids = np.unique(s.labels)
        n = int(s.labels.max())
        assert n >= 3
        np.testing.assert_array_equal(ids, np.arange(n + 1))
        # Each nucleus is exactly one 4-connected piece: the overlap split left no fragments behind.
        pieces = measure.label(s.labels, connectivity=1)
        assert pieces.max() == n
        areas = np.bincount(s.labels.ravel())[1:]
        assert areas.min() >= 12 and areas.max() <= 950


def test_nucleus_area_is_configurable():
    (small,) = generate_synthetic(1, seed=0, size=(128, 128), nucleus_area=(30.0, 60.0))
    areas = np.bincount(small.labels.ravel())[1:]
    assert areas.max() <= 62


def test_touching_nuclei_share_boundaries(samples):
    touching = [_touching_pairs(s.labels) for s in samples]
    assert max(touching) > 0
    assert sum(t > 0 for t in touching) >= len(samples) // 2


def test_nuclei_contrast_per_style(samples):
    for s in samples:
        grey = _grey(s.image)
        inside, outside = grey[s.labels > 0].mean(), grey[s.labels == 0].mean()
        if s.meta["style_name"] == "fluorescence":
            assert inside > outside + 30
        else:
            assert inside < outside - 30
            background = s.image[s.labels == 0].mean(axis=0)
            nuclei = s.image[s.labels > 0].mean(axis=0)
            assert background.min() > 150 and background[0] > background[1]  # light pink
            assert nuclei[2] > nuclei[0] > nuclei[1]  # purple


def test_test_split_stratified_by_style():
    data = generate_synthetic(40, seed=2, size=(64, 64))
    for style in SYNTHETIC_STYLES:
        splits = [s.split for s in data if s.meta["style_name"] == style]
        assert splits.count("test") == 5 and splits.count("train") == 15
    assert all(s.split == "train" for s in generate_synthetic(6, seed=2, size=(64, 64), test_fraction=0.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"styles": ("phase_contrast",)},
        {"styles": ()},
        {"test_fraction": 1.5},
        {"size": (8, 8)},
        {"nucleus_area": (100.0, 50.0)},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(DataError):
        generate_synthetic(2, seed=0, **kwargs)
