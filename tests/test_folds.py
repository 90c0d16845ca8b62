"""Style features, style clusters and style-stratified folds."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from kit.data.folds import (
    assign_styles_and_folds,
    fold_count,
    stratified_folds,
    style_clusters,
    style_features,
    style_summary,
)
from kit.data.synthetic import generate_synthetic
from kit.errors import DataError


@pytest.fixture(scope="module")
def samples():
    return generate_synthetic(24, seed=7)


@pytest.fixture(scope="module")
def manifest(samples):
    return pd.DataFrame({"id": [s.id for s in samples], "split": [s.split for s in samples]})


def _loader(samples):
    images = {s.id: s.image for s in samples}
    return images.__getitem__


def test_style_features_grey_forms_and_dtype_scaling():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    feats = style_features(grey, bins=16)
    assert feats.shape == (3 * 16 + 5,) and feats.dtype == np.float64
    np.testing.assert_allclose(style_features(grey[:, :, None], bins=16), feats)
    np.testing.assert_allclose(style_features(np.dstack([grey] * 3), bins=16), feats)
    np.testing.assert_allclose(style_features(grey.astype(np.uint16) * 257, bins=16), feats, atol=1e-6)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    np.testing.assert_allclose(style_features(rgba, bins=16), feats)
    assert feats[-2] == 0.0  # channel spread of a grey image


def test_style_features_keep_brightness_and_colour():
    dark = np.full((20, 20), 10, dtype=np.uint8)
    pink = np.zeros((20, 20, 3), dtype=np.uint8)
    pink[:] = (230, 170, 220)
    f_dark, f_pink = style_features(dark), style_features(pink)
    assert f_dark[-1] == 1.0 and f_pink[-1] == 0.0  # dark-pixel fraction
    assert f_pink[-2] > 0.2 and f_dark[-2] == 0.0
    # A 12-bit-dim uint16 image stays dark: no per-image stretching.
    assert style_features(np.full((8, 8), 1000, dtype=np.uint16))[-1] == 1.0


def test_style_features_bad_shape():
    with pytest.raises(DataError):
        style_features(np.zeros((2, 3, 4, 5)))


def test_clusters_recover_synthetic_styles(samples):
    truth = [s.meta["style_name"] for s in samples]
    images = [s.image for s in samples]
    auto = style_clusters(images, seed=0)
    assert adjusted_rand_score(truth, auto) >= 0.9
    assert adjusted_rand_score(truth, style_clusters(images, n_clusters=2, seed=0)) >= 0.9
    features = np.stack([style_features(im) for im in images])
    np.testing.assert_array_equal(style_clusters(features, seed=0), auto)


def test_cluster_ids_ordered_by_size_and_deterministic():
    rng = np.random.default_rng(1)
    features = np.concatenate(
        [rng.normal(5.0, 0.1, (3, 4)), rng.normal(0.0, 0.1, (9, 4)), rng.normal(-5.0, 0.1, (5, 4))]
    )
    labels = style_clusters(features, n_clusters=3, seed=3)
    assert np.bincount(labels).tolist() == [9, 5, 3]
    np.testing.assert_array_equal(style_clusters(features, n_clusters=3, seed=3), labels)
    assert len(np.unique(style_clusters(features, seed=3))) == 3  # silhouette picks the 3 blobs


def test_clusters_small_and_degenerate_inputs():
    assert style_clusters(np.ones((1, 5))).tolist() == [0]
    assert style_clusters(np.ones((4, 5))).tolist() == [0, 0, 0, 0]
    assert style_clusters(np.zeros((0, 5))).shape == (0,)
    with pytest.raises(DataError):
        style_clusters(np.ones((3, 5)), n_clusters=4)


def test_every_fold_holds_every_common_cluster():
    clusters = np.repeat([0, 1, 2], [13, 8, 4])
    folds = stratified_folds(clusters, k=4, seed=0)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3]
    for c in range(3):
        assert set(folds[clusters == c]) == {0, 1, 2, 3}
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("rare_counts", [[2, 1], [1], [3, 3, 1]])
def test_rare_clusters_do_not_crash_or_warn(rare_counts):
    clusters = np.repeat(np.arange(1 + len(rare_counts)), [10, *rare_counts])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds = stratified_folds(clusters, k=4, seed=0)
    assert folds.shape == clusters.shape and set(folds) == {0, 1, 2, 3}
    assert set(folds[clusters == 0]) == {0, 1, 2, 3}


def test_folds_deterministic_with_seed():
    clusters = np.repeat([0, 1], [12, 8])
    a = stratified_folds(clusters, k=4, seed=5)
    np.testing.assert_array_equal(a, stratified_folds(clusters, k=4, seed=5))
    assert any(not np.array_equal(a, stratified_folds(clusters, k=4, seed=s)) for s in range(6, 10))


@pytest.mark.parametrize("k", [0, 1, 6])
def test_bad_k_raises(k):
    with pytest.raises(DataError, match="k="):
        stratified_folds(np.zeros(5, dtype=int), k=k)


def test_assign_styles_and_folds(samples, manifest):
    before = manifest.copy()
    out = assign_styles_and_folds(manifest, _loader(samples), k=4, seed=0)
    pd.testing.assert_frame_equal(manifest, before)
    assert out is not manifest and {"style", "fold"} <= set(out.columns)
    assert adjusted_rand_score([s.meta["style_name"] for s in samples], out["style"]) >= 0.9
    train = out["split"] == "train"
    assert (out.loc[~train, "fold"] == -1).all() and (~train).any()
    assert set(out.loc[train, "fold"]) == {0, 1, 2, 3}
    for _, group in out[train].groupby("style"):
        if len(group) >= 4:
            assert set(group["fold"]) == {0, 1, 2, 3}
    again = assign_styles_and_folds(manifest, _loader(samples), k=4, seed=0)
    pd.testing.assert_frame_equal(out, again)


def test_assign_without_train_rows_and_missing_columns(samples, manifest):
    test_only = manifest.assign(split="test")
    out = assign_styles_and_folds(test_only, _loader(samples), k=4)
    assert (out["fold"] == -1).all()
    with pytest.raises(DataError, match="split"):
        assign_styles_and_folds(manifest[["id"]], _loader(samples))
    few = assign_styles_and_folds(manifest.head(5).assign(split="train"), _loader(samples), k=6)
    assert sorted(few["fold"]) == [0, 1, 2, 3, 4] and fold_count(few) == 5  # one fold per image
    one = assign_styles_and_folds(manifest.head(1).assign(split="train"), _loader(samples), k=4)
    assert list(one["fold"]) == [-1] and fold_count(one) == 0


def test_style_summary_counts():
    manifest = pd.DataFrame(
        {"style": [0, 0, 1, 1, 1, 0], "split": ["train", "test", "train", "train", "validation", "train"]}
    )
    table = style_summary(manifest)
    assert list(table.columns) == ["train", "validation", "test", "total"]
    assert table.loc[0].tolist() == [2, 0, 1, 3]
    assert table.loc[1].tolist() == [2, 1, 0, 3]
