"""Ensemble features: shape descriptors on hand-made shapes and against skimage's regionprops, the
probability, context, agreement and split features of a hand-made candidate set, and re-splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage import draw, measure

from kit.ensemble import Candidates, candidate_features, feature_names, shape_features, split_layers


def _disc(shape=(120, 120), centre=(60, 60), radius=25, label=1, out=None) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int32) if out is None else out
    rr, cc = draw.disk(centre, radius, shape=shape)
    out[rr, cc] = label
    return out


def _l_shape() -> np.ndarray:
    labels = np.zeros((80, 80), dtype=np.int32)
    labels[10:60, 10:22] = 1
    labels[48:60, 10:60] = 1
    return labels


def test_disc_is_round_convex_and_has_no_hole() -> None:
    f = shape_features(_disc()).loc[1]
    assert f["circularity"] == pytest.approx(1.0, abs=0.08)
    assert f["solidity"] == pytest.approx(1.0, abs=1e-9)
    assert f["eccentricity"] < 0.05 and f["axis_ratio"] > 0.97
    assert f["euler_number"] == 1 and f["on_border"] == 0
    assert f["equivalent_diameter"] == pytest.approx(50, rel=0.02)
    assert f["rect_long"] == f["rect_short"] == 49  # draw.disk(radius=25) spans 49 px


def test_l_shape_is_not_convex_and_a_ring_has_a_hole() -> None:
    f = shape_features(_l_shape()).loc[1]
    assert f["solidity"] < 0.7
    assert f["circularity"] < 0.6
    ring = _disc(radius=20) - _disc(radius=8)
    assert shape_features(ring).loc[1, "euler_number"] == 0


def test_rectangle_rect_sides_angle_extent_and_border() -> None:
    labels = np.zeros((50, 60), dtype=np.int32)
    labels[0:10, 5:35] = 4  # touches the top edge
    f = shape_features(labels).loc[4]
    assert (f["rect_long"], f["rect_short"], f["extent"], f["on_border"]) == (30, 10, 1.0, 1.0)
    assert f["rect_angle"] in (0.0, 180.0) or f["rect_angle"] == pytest.approx(0, abs=1e-6)
    assert f["solidity"] == 1.0


def test_shape_features_match_regionprops_on_random_shapes() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((160, 160), dtype=np.int32)
    for i in range(1, 25):
        r, c = rng.integers(10, 150, 2)
        rr, cc = draw.ellipse(
            r, c, rng.integers(3, 12), rng.integers(3, 12), shape=labels.shape, rotation=rng.uniform(0, np.pi)
        )
        labels[rr, cc] = 3 * i  # gapped ids; later shapes cut earlier ones (odd shapes, holes)
    ours = shape_features(labels)
    ref = pd.DataFrame(
        measure.regionprops_table(
            labels,
            properties=(
                "label",
                "area",
                "perimeter",
                "eccentricity",
                "extent",
                "euler_number",
                "axis_major_length",
                "axis_minor_length",
                "equivalent_diameter_area",
                "area_convex",
            ),
        )
    ).set_index("label")
    assert ours.index.tolist() == ref.index.tolist()
    pairs = {
        "area": "area",
        "perimeter": "perimeter",
        "eccentricity": "eccentricity",
        "extent": "extent",
        "euler_number": "euler_number",
        "major_axis": "axis_major_length",
        "minor_axis": "axis_minor_length",
        "equivalent_diameter": "equivalent_diameter_area",
    }
    for ours_name, ref_name in pairs.items():
        np.testing.assert_allclose(ours[ours_name], ref[ref_name], atol=1e-9, err_msg=ours_name)
    # Pixel centres in the hull of the pixel centres: never more than skimage's (which adds pixel corners).
    assert (ours["convex_area"] <= ref["area_convex"]).all()
    assert (ours["convex_area"] >= ours["area"]).all()


def test_empty_label_image_gives_an_empty_table() -> None:
    assert shape_features(np.zeros((10, 10), dtype=np.int32)).empty


def _two_source_candidates() -> Candidates:
    """Source a: two discs, a's second disc re-split in two at level 0.7; source b: a copy of a's first
    disc shifted by 2 px and a blob of its own."""
    a = _disc(centre=(30, 30), radius=10, label=1)
    _disc(centre=(80, 80), radius=14, label=2, out=a)
    split = np.zeros_like(a)
    split[(a == 2) & (np.arange(120)[None, :] < 80)] = 5
    split[(a == 2) & (np.arange(120)[None, :] >= 80)] = 6
    b = _disc(centre=(32, 30), radius=10, label=7)
    _disc(centre=(100, 20), radius=6, label=9, out=b)
    table = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1, 2, 2],
            "label": [1, 2, 5, 6, 7, 9],
            "source": ["a", "a", "a", "a", "b", "b"],
            "split_level": [0, 0, 0.7, 0.7, 0, 0],
            "parent": [1, 2, 2, 2, 7, 9],
            "n_siblings": [1, 1, 2, 2, 1, 1],
            "n_parts": [1, 2, 2, 2, 1, 1],
            "score": [np.nan, np.nan, np.nan, np.nan, 0.9, 0.4],
        }
    )
    body = np.where(a > 0, 0.9, 0.05).astype(np.float32)
    body[a == 2] = 0.6
    maps = {"a": {"body": body, "border": np.zeros_like(body)}}
    return Candidates("img", np.stack([a, split, b]), table, maps)


def test_candidate_features_of_a_hand_made_set() -> None:
    cands = _two_source_candidates()
    frame = candidate_features(cands, ["a", "b"], radii=[30, 200])
    assert list(frame.columns) == feature_names(["a", "b"], [30, 200])
    assert len(frame) == 6 and not frame[["area", "solidity", "agree_iou"]].isna().any().any()
    # Probabilities from the candidate's own source; none for source b.
    assert frame.loc[0, "body_mean"] == pytest.approx(0.9, abs=1e-6)
    assert frame.loc[1, "body_mean"] == pytest.approx(0.6, abs=1e-6) and frame.loc[1, "core_fraction"] == 1.0
    assert frame.loc[[4, 5], "body_mean"].isna().all()
    assert frame["score"].tolist()[4:] == [0.9, 0.4]
    # Context among the source's own instances: 2 for a, 2 for b.
    assert frame["image_count"].tolist() == [2, 2, 2, 2, 2, 2]
    assert frame.loc[0, "area_rel_median"] == pytest.approx(
        frame.loc[0, "area"] / frame.loc[[0, 1], "area"].median()
    )
    assert frame.loc[0, "nb_count_30"] == 0 and frame.loc[0, "nb_count_200"] == 1
    assert frame.loc[2, "nb_count_200"] == 1, "a part's own parent is not its neighbour"
    assert frame.loc[0, "nb_median_area_200"] == frame.loc[1, "area"]
    assert np.isnan(frame.loc[0, "nb_median_area_30"])
    # Agreement with the other source: a's first disc and b's shifted copy.
    assert 0.6 < frame.loc[0, "agree_iou"] < 1 and frame.loc[0, "agree_iou"] == frame.loc[4, "agree_iou"]
    assert frame.loc[[1, 2, 3, 5], "agree_iou"].tolist() == [0, 0, 0, 0]
    assert frame["agree_sources"].tolist() == [1, 0, 0, 0, 1, 0]
    # Split features.
    assert frame["split_level"].tolist() == [0, 0, 0.7, 0.7, 0, 0]
    assert frame.loc[2, "parent_area_ratio"] + frame.loc[3, "parent_area_ratio"] == pytest.approx(1.0)
    assert frame.loc[0, "parent_area_ratio"] == 1.0
    assert frame["source_a"].tolist() == [1, 1, 1, 1, 0, 0]


def test_split_layers_keep_only_new_parts() -> None:
    # Two touching discs with separate body peaks, seen as one instance by the base watershed.
    body = np.zeros((60, 100), dtype=np.float32)
    yy, xx = np.mgrid[:60, :100]
    for cx in (35, 62):
        body = np.maximum(body, np.clip(1 - np.hypot(yy - 30, xx - cx) / 16, 0, 1) * 0.95)
    body[(body > 0) & (np.abs(xx - 48.5) < 3)] = np.maximum(body[(body > 0) & (np.abs(xx - 48.5) < 3)], 0.55)
    base = (body > 0.3).astype(np.int32)
    levels = split_layers(
        base, {"body": body}, {"seed_threshold": 0.5, "mask_threshold": 0.3, "min_size": 4}, [0.6, 0.7, 0.8]
    )
    assert [lv.threshold for lv in levels] == [0.6, 0.7, 0.8]
    first = levels[0]
    assert first.ids.size == 2 and (first.parent == 1).all() and (first.n_siblings == 2).all()
    assert set(np.unique(first.labels)) == {0, *first.ids.tolist()}
    # At 0.7 and 0.8 the parts do not split further: no new candidates.
    assert levels[1].ids.size == 0 and levels[2].ids.size == 0
    assert split_layers(base, {}, {}, [0.6]) == [], "no body map, no splits"


def test_candidates_save_and_load_round_trip(tmp_path) -> None:
    cands = _two_source_candidates()
    cands.save(tmp_path / "c.npz")
    back = Candidates.load(tmp_path / "c.npz", "img")
    np.testing.assert_array_equal(back.layers, cands.layers)
    pd.testing.assert_frame_equal(back.table, cands.table, check_dtype=False)


def test_source_labels_are_each_sources_own_instances() -> None:
    cands = _two_source_candidates()
    a, b = cands.source_labels("a"), cands.source_labels("b")
    assert set(np.unique(a)) == {0, 1, 2} and set(np.unique(b)) == {0, 7, 9}
    np.testing.assert_array_equal(a, cands.layers[0])  # level 0, not the re-split layer
    silent = cands.source_labels("c")  # a source that found nothing
    assert silent.shape == a.shape and not silent.any()
