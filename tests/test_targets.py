"""Targets: touching border between nuclei only, exclusive channels, radius rule, preview PNG."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.draw import disk

from kit.targets import (
    TARGET_CHANNELS,
    border_radius_map,
    border_weight_map,
    make_targets,
    multi_label_pixels,
    target_channels,
    targets_preview,
    touching_border,
)


def two_touching_squares() -> np.ndarray:
    labels = np.zeros((30, 30), np.int32)
    labels[10:20, 5:15] = 1
    labels[10:20, 15:25] = 2  # contact line between columns 14 and 15
    return labels


def test_border_lies_on_both_sides_of_the_contact_line_only() -> None:
    border = touching_border(two_touching_squares())
    assert border[10:20, 14].all() and border[10:20, 15].all()
    rows, cols = np.nonzero(border)
    assert set(cols) <= {14, 15}  # small nuclei: radius 1
    assert rows.min() >= 9 and rows.max() <= 20  # at most one background pixel past the contact ends
    # outer edges of both squares are not border
    assert not border[10:20, 5].any() and not border[10:20, 24].any()
    assert not border[10, 6:13].any() and not border[19, 16:24].any()


def test_isolated_disc_has_no_border() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[disk((20, 20), 12)] = 7
    targets = make_targets(labels)
    assert not targets[1].any()
    np.testing.assert_array_equal(targets[0], labels > 0)


def test_narrow_gap_is_border_wide_gap_is_not() -> None:
    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 2:10] = 1
    labels[5:15, 11:19] = 2  # 1 px gap: touching
    labels[5:15, 25:33] = 3  # 6 px from label 2: isolated
    border = touching_border(labels)
    assert border[5:15, 10].all()
    assert not border[:, 20:].any()


def test_channels_are_exclusive_and_mask_is_labels() -> None:
    labels = two_touching_squares()
    targets = make_targets(labels, include_mask=True)
    assert targets.shape == (4, 30, 30) and targets.dtype == np.float32
    assert target_channels(include_mask=True) == (*TARGET_CHANNELS, "mask")
    np.testing.assert_array_equal(targets[:3].sum(axis=0), 1.0)
    assert set(np.unique(targets)) <= {0.0, 1.0}
    np.testing.assert_array_equal(targets[3], labels > 0)
    assert make_targets(labels).shape == (3, 30, 30)


def test_radius_grows_with_nucleus_size_and_background_takes_the_nearest() -> None:
    labels = np.zeros((200, 200), np.int32)
    labels[disk((20, 20), 8)] = 1  # d = 16 → 1
    labels[disk((60, 60), 15)] = 2  # d = 30 → 2
    labels[disk((140, 140), 40)] = 3  # d = 80 → 3
    radius = border_radius_map(labels)
    assert radius[20, 20] == 1 and radius[60, 60] == 2 and radius[140, 140] == 3
    assert radius[20, 30] == 1 and radius[140, 183] == 3


def test_large_touching_nuclei_get_a_wider_border() -> None:
    labels = np.zeros((80, 140), np.int32)
    labels[5:75, 5:70] = 1
    labels[5:75, 70:135] = 2
    border = touching_border(labels)
    np.testing.assert_array_equal(np.nonzero(border[40])[0], np.arange(67, 73))  # 3 px each side


def test_ids_need_not_be_contiguous() -> None:
    labels = two_touching_squares()
    remapped = np.where(labels > 0, labels * 1_000_003, 0)
    np.testing.assert_array_equal(touching_border(labels), touching_border(remapped))


def test_bad_labels_raise() -> None:
    with pytest.raises(ValueError, match="integer"):
        make_targets(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="radius"):
        touching_border(two_touching_squares(), min_radius=3, max_radius=2)


def test_border_weight_map() -> None:
    labels = two_touching_squares()
    weights = border_weight_map(labels, w_border=10.0)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights == 10.0, touching_border(labels))
    assert set(np.unique(weights)) == {1.0, 10.0}


@st.composite
def rectangle_labels(draw: st.DrawFn) -> np.ndarray:
    labels = np.zeros((24, 24), np.int32)
    for label in range(1, draw(st.integers(0, 6)) + 1):
        r, c = draw(st.integers(0, 20)), draw(st.integers(0, 20))
        labels[r : r + draw(st.integers(1, 8)), c : c + draw(st.integers(1, 8))] = label
    return labels


@settings(max_examples=60, deadline=None)
@given(rectangle_labels())
def test_border_only_where_two_labels_are_near(labels: np.ndarray) -> None:
    targets = make_targets(labels, include_mask=True)
    np.testing.assert_array_equal(targets[:3].sum(axis=0), 1.0)
    border = targets[1].astype(bool)
    assert not (border & ~multi_label_pixels(labels, 3)).any()
    np.testing.assert_array_equal(targets[0].astype(bool) | (border & (labels > 0)), labels > 0)


def test_targets_preview_writes_png(tmp_path) -> None:
    labels = two_touching_squares()
    image = np.repeat((labels * 100).astype(np.uint8)[..., None], 3, axis=2)
    path = targets_preview(image, labels, make_targets(labels, include_mask=True), tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
