"""RLE: hand cases, the numpy reference as oracle, and encode/decode round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kit.submission import decode_labels, decode_rle, encode_labels, encode_mask
from kit.submission.rle import (
    decode_labels_reference,
    decode_rle_reference,
    encode_labels_reference,
    first_run_problems,
    paint_runs,
    parse_rle_values,
)

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids mapped to 1..N in ascending order of the original id (the order of `encode_labels` keys)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    out = np.zeros(labels.shape, np.int32)
    for new, old in enumerate(ids, start=1):
        out[labels == old] = new
    return out


# ---------------------------------------------------------------------------------------------------
# Encoding: hand cases


def test_single_pixel_at_first_and_last_pixel():
    labels = np.zeros((4, 6), np.int32)
    labels[0, 0] = 1
    labels[3, 5] = 2
    assert encode_labels(labels) == {1: "1 1", 2: "24 1"}


def test_pixels_are_numbered_down_columns():
    labels = np.zeros((4, 6), np.int32)
    labels[2, 1] = 9  # column 1 starts at pixel 5, row 2 adds 2
    assert encode_labels(labels) == {9: "7 1"}


def test_run_continues_from_bottom_of_one_column_to_top_of_next():
    # The per-instance notebook encoder flattens the transposed mask, so pixels 3 and 4 form one run.
    labels = np.zeros((3, 3), np.uint8)
    labels[2, 0] = labels[0, 1] = 1
    assert encode_labels_reference(labels) == {1: "3 2"}
    assert encode_labels(labels) == {1: "3 2"}
    assert decode_rle("3 2", (3, 3)).tolist() == [
        [False, True, False],
        [False, False, False],
        [True, False, False],
    ]


def test_touching_instances_in_one_column_are_separate_runs():
    labels = np.array([[1], [1], [2], [0], [2]], np.int16)
    assert encode_labels(labels) == {1: "1 2", 2: "3 1 5 1"}


def test_whole_image_one_instance():
    assert encode_labels(np.full((3, 4), 5, np.uint8)) == {5: "1 12"}


def test_non_sequential_ids_keep_their_values_and_sorted_keys():
    labels = np.zeros((5, 5), np.int32)
    labels[0, 0], labels[1, 1], labels[2, 2], labels[3, 3] = 17, 2, 1000, 1
    encoded = encode_labels(labels)
    assert list(encoded) == [1, 2, 17, 1000]
    assert encoded == {1: "19 1", 2: "7 1", 17: "1 1", 1000: "13 1"}
    assert all(type(k) is int for k in encoded)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_all_integer_dtypes_match_reference(dtype):
    rng = np.random.default_rng(0)
    top = min(np.iinfo(dtype).max, np.iinfo(np.int64).max)  # uint64 ids above int64 are refused
    labels = rng.choice(np.array([0, 0, 1, 3, 100, top], dtype=dtype), size=(9, 7))
    assert encode_labels(labels) == encode_labels_reference(labels)
    assert max(encode_labels(labels)) == int(top)


def test_non_contiguous_input():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(10, 12))
    for view in (labels.T, labels[::2, 1::3], np.asfortranarray(labels)):
        assert encode_labels(view) == encode_labels_reference(view)


@pytest.mark.parametrize("shape", [(4, 5), (0, 5), (3, 0)])
def test_empty_image(shape):
    assert encode_labels(np.zeros(shape, np.uint16)) == {}
    assert encode_mask(np.zeros(shape, bool)) == ""


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((2, 2, 3), np.int32), "2-D"),
        (np.zeros(5, np.int32), "2-D"),
        (np.zeros((2, 2), np.float32), "integer dtype"),
        (np.zeros((2, 2), bool), "encode_mask"),
        (np.array([[0, -1]], np.int16), "negative"),
        (np.array([[0, 2**63]], np.uint64), r"2\*\*63"),
    ],
)
def test_encode_labels_rejects_bad_input(labels, message):
    with pytest.raises(ValueError, match=message):
        encode_labels(labels)


def test_encode_mask():
    mask = np.zeros((3, 3), bool)
    mask[2, 0] = mask[0, 1] = mask[2, 2] = True
    assert encode_mask(mask) == "3 2 9 1"
    assert encode_mask(mask.astype(np.uint8) * 7) == "3 2 9 1"
    with pytest.raises(ValueError, match="boolean or integer"):
        encode_mask(mask.astype(float))
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(mask[None])


# ---------------------------------------------------------------------------------------------------
# Decoding: hand cases and strictness


def test_decode_rle_hand_case():
    mask = decode_rle("1 2 5 1", (3, 2))
    assert mask.dtype == bool
    assert mask.tolist() == [[True, False], [True, True], [False, False]]
    assert not decode_rle("", (3, 2)).any()
    assert not decode_rle("  ", (3, 2)).any()
    assert decode_rle("6 1", (3, 2))[2, 1]


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of values"),
        ("1", "odd number of values"),
        ("1 x", r"value 2 \('x'\) is not a non-negative integer"),
        ("1.5 2", "value 1"),
        ("-1 2", "value 1"),
        ("1 2,3 4", "value 2"),
        ("1\t2", "separated by spaces"),
        ("1 " + "9" * 19, "too large"),
        ("0 1", "pixel pair 1: start 0 is below 1"),
        ("1 0", "pixel pair 1: length 0 is below 1"),
        ("5 1 1 1", "pixel pair 2 not sorted"),
        ("1 3 3 1", "pixel pair 2 overlaps pair 1"),
        ("1 1 1 1", "pixel pair 2 overlaps pair 1"),
        ("12 1", "pixel pair 1 .* runs past pixel 6"),
        ("5 3", "runs past pixel 6"),
    ],
)
def test_decode_rle_rejects_malformed(rle, message):
    with pytest.raises(ValueError, match=message):
        decode_rle(rle, (2, 3))


def test_decode_rle_accepts_touching_runs():
    assert decode_rle("1 2 3 1", (3, 1)).all()


def test_decode_rejects_bad_shape_and_type():
    with pytest.raises(ValueError, match="shape"):
        decode_rle("1 1", (3,))
    with pytest.raises(ValueError, match="shape"):
        decode_labels(["1 1"], (-1, 3))
    with pytest.raises(ValueError, match="string"):
        decode_rle(None, (3, 3))
    with pytest.raises(ValueError, match=r"rles\[1\]: expected a string"):
        decode_labels(["1 1", float("nan")], (3, 3))


def test_decode_labels_skips_empty_strings_and_keeps_ids_consecutive():
    labels = decode_labels(["", "1 2", "", "5 1"], (3, 2))
    assert labels.dtype == np.int32
    assert labels.tolist() == [[1, 0], [1, 2], [0, 0]]
    assert not decode_labels([], (2, 2)).any()
    assert decode_labels([], (2, 2)).shape == (2, 2)


def test_decode_labels_names_overlapping_indices():
    with pytest.raises(ValueError, match=r"rles\[0\] and rles\[3\] overlap"):
        decode_labels(["1 3", "", "5 1", "3 1"], (3, 2))


def test_decode_labels_names_malformed_index():
    with pytest.raises(ValueError, match=r"rles\[2\]: pixel pair 1: start 0"):
        decode_labels(["1 1", "", "0 1"], (3, 2))
    with pytest.raises(ValueError, match=r"rles\[1\]: odd number"):
        decode_labels(["1 1", "2"], (3, 2))


def test_run_pieces_check_paint_and_report_clashes():
    values = parse_rle_values(" 1 3  5 1 ")
    assert values.tolist() == [1, 3, 5, 1] and parse_rle_values("").size == 0
    starts = np.array([1, 5, 2, 4], np.int64)
    lengths = np.array([3, 1, 1, 4], np.int64)
    groups = np.array([0, 0, 1, 2], np.int64)
    assert first_run_problems(starts, lengths, groups, 6) == {
        2: "pixel pair 1 (start 4, length 4) runs past pixel 6, the last of the image"
    }
    out = np.zeros((3, 2), np.int32)
    assert paint_runs(starts[:3], lengths[:3], np.array([1, 1, 2], np.int32), out) == (2, 1, 2)
    np.testing.assert_array_equal(out, [[1, 0], [1, 1], [1, 0]])
    with pytest.raises(ValueError, match="stay inside"):
        paint_runs(starts, lengths, np.ones(4, np.int32), np.zeros((3, 2), np.int32))
    with pytest.raises(ValueError, match="out's dtype"):
        paint_runs(starts[:1], lengths[:1], np.ones(1, np.int64), np.zeros((3, 2), np.int32))


def test_reference_implementations_are_not_exported():
    import kit.submission
    import kit.submission.rle

    for module in (kit.submission, kit.submission.rle):
        assert not [name for name in module.__all__ if name.endswith("_reference")]
    assert not hasattr(kit.submission, "encode_labels_reference")


# ---------------------------------------------------------------------------------------------------
# Properties


@st.composite
def label_images(draw):
    dtype = draw(st.sampled_from(INT_DTYPES))
    shape = draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    ids = st.sampled_from([0, 0, 0, 1, 2, 5, 17, 100])
    return draw(hnp.arrays(dtype, shape, elements=ids))


@settings(max_examples=150, deadline=None)
@given(label_images())
def test_encode_equals_reference(labels):
    assert encode_labels(labels) == encode_labels_reference(labels)


@settings(max_examples=150, deadline=None)
@given(label_images())
def test_encode_decode_round_trip(labels):
    encoded = encode_labels(labels)
    decoded = decode_labels(list(encoded.values()), labels.shape)
    np.testing.assert_array_equal(decoded, relabel_sequential(labels))
    np.testing.assert_array_equal(decoded, decode_labels_reference(list(encoded.values()), labels.shape))


@settings(max_examples=100, deadline=None)
@given(label_images())
def test_decode_rle_inverts_encode_mask(labels):
    for label, rle in encode_labels(labels).items():
        mask = decode_rle(rle, labels.shape)
        np.testing.assert_array_equal(mask, labels == label)
        np.testing.assert_array_equal(mask, decode_rle_reference(rle, labels.shape))
        assert encode_mask(mask) == rle


@settings(max_examples=100, deadline=None)
@given(label_images(), st.randoms(use_true_random=False))
def test_decode_labels_is_inverse_for_any_order(labels, random):
    # decode_labels numbers instances by position, whatever order the strings come in.
    rles = list(encode_labels(labels).values())
    random.shuffle(rles)
    decoded = decode_labels(rles, labels.shape)
    assert encode_labels(decoded) == {i: rle for i, rle in enumerate(rles, start=1)}
