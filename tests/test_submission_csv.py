"""Submission CSV: writing, reading, every validation problem, and decoding back to label images."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kit.errors import DataError
from kit.submission import (
    SubmissionProblem,
    check_submission,
    read_rle_csv,
    read_submission_labels,
    validate_submission,
    write_submission,
)

HEADER = "ImageId,EncodedPixels\n"


def write_csv(tmp_path, text: str, name: str = "sub.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def same_instances(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images hold the same instances, whatever their ids."""
    if a.shape != b.shape or ((a == 0) != (b == 0)).any():
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


# ---------------------------------------------------------------------------------------------------
# Writing


def test_write_format(tmp_path):
    labels = np.zeros((4, 5), np.uint16)
    labels[3, 4] = 2  # last pixel, smallest id: written last
    labels[0:2, 0:2] = 7
    path = write_submission(
        tmp_path / "out" / "sub.csv", {"img2": labels, "img1": np.zeros((3, 3), np.int32)}
    )
    assert path == tmp_path / "out" / "sub.csv"
    assert path.read_text() == HEADER + "img1,\nimg2,1 2 5 2\nimg2,20 1\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["sub.csv"]  # no temporary file left


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    predictions = {
        "b": rng.choice(np.array([0, 0, 0, 3, 9, 40]), size=(16, 20)).astype(np.int32),
        "a": np.zeros((8, 8), np.uint8),
        "c": np.array([[0, 5], [5, 0]], np.int64),
    }
    path = write_submission(tmp_path / "sub.csv", predictions)
    sizes = {k: v.shape for k, v in predictions.items()}
    assert check_submission(path, sizes)["ImageId"].tolist()[:2] == ["a", "b"]
    decoded = read_submission_labels(path, sizes)
    assert list(decoded) == ["a", "b", "c"]
    for image_id, labels in predictions.items():
        assert decoded[image_id].dtype == np.int32
        assert same_instances(decoded[image_id], labels)
    # Rows are ordered by first pixel, so ids come back numbered in that order.
    assert decoded["c"].tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([[0, -1]], np.int32), "negative"),
        (np.zeros((2, 2), np.float32), "integer dtype"),
        (np.zeros((2, 2), bool), "integer dtype"),
        (np.zeros((2, 2, 1), np.int32), "2-D"),
    ],
)
def test_write_rejects_bad_labels_without_clobbering(tmp_path, labels, message):
    path = write_csv(tmp_path, "old content\n")
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: ImageId bad: .*{message}"):
        write_submission(path, {"a": np.zeros((2, 2), np.int32), "bad": labels})
    assert path.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_write_rejects_bad_image_id(tmp_path):
    with pytest.raises(DataError, match="ImageId '' is not a non-empty string"):
        write_submission(tmp_path / "sub.csv", {"": np.zeros((2, 2), np.int32)})


@st.composite
def predictions(draw):
    n = draw(st.integers(1, 4))
    return {
        f"img{i}": draw(
            hnp.arrays(
                np.int32,
                st.tuples(st.integers(1, 9), st.integers(1, 9)),
                elements=st.sampled_from([0, 0, 1, 2, 6]),
            )
        )
        for i in range(n)
    }


@settings(max_examples=40, deadline=None)
@given(predictions())
def test_written_submissions_validate_and_decode(tmp_path_factory, preds):
    path = write_submission(tmp_path_factory.mktemp("w") / "sub.csv", preds)
    sizes = {k: v.shape for k, v in preds.items()}
    assert validate_submission(path, sizes) == []
    decoded = read_submission_labels(path, sizes)
    assert all(same_instances(decoded[k], preds[k]) for k in preds)


# ---------------------------------------------------------------------------------------------------
# Reading


def test_read_frame_columns_and_rows(tmp_path):
    path = write_csv(tmp_path, HEADER + "a,1 2\n\nb,\nc, 3 4 \n")
    frame = read_rle_csv(path)
    assert list(frame.columns) == ["ImageId", "EncodedPixels", "row"]
    assert frame["ImageId"].tolist() == ["a", "b", "c"]
    assert frame["EncodedPixels"].tolist() == ["1 2", "", "3 4"]
    assert frame["row"].tolist() == [2, 4, 5]  # header is line 1; the blank line is counted


def test_read_accepts_byte_order_mark_and_quoted_fields(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_bytes(b'\xef\xbb\xbfImageId,EncodedPixels\n"a","1 2"\n')
    assert read_rle_csv(path)[["ImageId", "EncodedPixels"]].values.tolist() == [["a", "1 2"]]


def test_header_only_file(tmp_path):
    path = write_csv(tmp_path, HEADER)
    assert read_rle_csv(path).empty
    assert [str(p) for p in validate_submission(path, expected_ids=["a"])] == [
        "ImageId a: image missing (needs a row, with empty EncodedPixels if it has no nuclei)"
    ]


def test_long_rows_are_read(tmp_path):
    # A ragged mask over a large image gives an EncodedPixels field beyond the csv module's default limit.
    mask = np.zeros((300, 300), np.uint8)
    mask[::2, :] = 1
    path = write_submission(tmp_path / "sub.csv", {"a": mask})
    assert len(path.read_text()) > 200_000
    assert read_submission_labels(path, {"a": mask.shape})["a"].sum() == mask.sum()


def test_read_solution_format_exposes_height_width(tmp_path):
    path = write_csv(
        tmp_path,
        "ImageId,EncodedPixels,Height,Width,Usage\na,1 2,3,2,Public\na,5 2,3,2,Public\nb,,4,4,Private\n",
    )
    frame = read_rle_csv(path)
    assert list(frame.columns) == ["ImageId", "EncodedPixels", "Height", "Width", "Usage", "row"]
    assert frame["Height"].tolist() == [3, 3, 4]
    assert frame["Height"].dtype == np.int64
    assert validate_submission(path) == []
    labels = read_submission_labels(path)  # sizes from the Height/Width columns
    assert labels["a"].tolist() == [[1, 0], [1, 2], [0, 2]]
    assert labels["b"].shape == (4, 4)
    assert not labels["b"].any()


def test_height_width_must_agree_within_an_image(tmp_path):
    path = write_csv(tmp_path, "ImageId,EncodedPixels,Height,Width\na,1 2,3,2\na,5 1,4,2\n")
    (problem,) = validate_submission(path)
    assert (problem.row, problem.image_id) == (3, "a")
    assert "differs from 3×2 on row 2" in problem.message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file; expected the header 'ImageId,EncodedPixels'"),
        ("ImageId,Pixels\na,1 1\n", "header is 'ImageId,Pixels', expected 'ImageId,EncodedPixels'"),
        ("EncodedPixels,ImageId\n", "header is"),
        ("ImageId,EncodedPixels,Score\n", "header is"),
        ("ImageId,EncodedPixels,Height\n", "header is"),
        ("a,1 1\n", "header is"),
        (HEADER + "a,1 1\nb,1 1,extra\n", r"row 3 \(ImageId b\): expected 2 fields"),
        (HEADER + "a,1 1\nb\n", r"row 3 \(ImageId b\): expected 2 fields .* got 1"),
        (HEADER + 'a,"1 1\n', "malformed CSV"),
        (HEADER + 'a,"1 1"x\n', "malformed CSV"),
        ("ImageId,EncodedPixels,Height,Width\na,1 1,x,3\n", r"row 2 \(ImageId a\): Height 'x' is not"),
        ("ImageId,EncodedPixels,Height,Width\na,1 1,3,0\n", "Width '0' is not a positive integer"),
        ("ImageId,EncodedPixels,Height,Width\na,1 1,3,3\nb,1 1,3,-3\n", r"row 3 \(ImageId b\): Width '-3'"),
    ],
)
def test_read_errors_name_the_file(tmp_path, content, message):
    path = write_csv(tmp_path, content)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: .*{message}"):
        read_rle_csv(path)


def test_read_missing_binary_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_rle_csv(tmp_path / "nope.csv")
    binary = tmp_path / "img.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(DataError, match=r"img\.csv: not a UTF-8 text file"):
        read_rle_csv(binary)
    with pytest.raises(DataError, match="cannot read file"):
        read_rle_csv(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Validation: each problem on the right row and image

SIZES = {"a": (3, 4), "b": (3, 4)}


@pytest.mark.parametrize(
    ("lines", "row", "image_id", "message"),
    [
        (["a,1 x"], 2, "a", "value 2 ('x') is not a non-negative integer"),
        (["a,1 2 3"], 2, "a", "odd number of values (3)"),
        (["a,1 1", "b,0 2"], 3, "b", "pixel pair 1: start 0 is below 1"),
        (["a,1 1 3 0"], 2, "a", "pixel pair 2: length 0 is below 1"),
        (["a,1 1 7 1 5 1"], 2, "a", "pixel pair 3 not sorted (start 5 comes after start 7)"),
        (["a,1 3 2 1"], 2, "a", "pixel pair 2 overlaps pair 1"),
        (["a,10 5"], 2, "a", "pixel pair 1 (start 10, length 5) runs past pixel 12"),
        (["a,1 2", "a,7 1", "a,2 2"], 4, "a", "mask overlaps the mask of row 2"),
        (["a,3 1", "a,5 1", "a,1 12"], 4, "a", "mask overlaps the mask of rows 2, 3"),
        (["a,1 2", "a,", "a,5 1"], 3, "a", "empty EncodedPixels in an image with 2 masks"),
        (["a,1 2", "a,4 1", "a,1 2"], 4, "a", "duplicate of row 2"),
        (["a,", "a,"], 3, "a", "duplicate of row 2"),
        (["a,1 1", ",1 1"], 3, None, "empty ImageId"),
        (["a,1 1", "zz,1 1", "b,"], 3, "zz", "unknown ImageId (not among the 2 expected images)"),
        (["a,1 1"], None, "b", "image missing"),
    ],
)
def test_each_problem_is_reported_where_it_is(lines, row, image_id, message):
    if row is not None and not any(line.startswith("b,") for line in lines):
        lines = [*lines, "b,"]  # image b is not what these cases are about
    frame = pd.DataFrame([line.split(",") for line in lines], columns=["ImageId", "EncodedPixels"])
    problems = validate_submission(frame, SIZES)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert (problem.row, problem.image_id) == (row, image_id)
    assert message in problem.message


def test_two_masks_each_overlapping_earlier_rows():
    frame = pd.DataFrame(
        {"ImageId": ["a"] * 4, "EncodedPixels": ["1 2", "5 2", "2 1", "4 3"], "row": [10, 11, 12, 13]}
    )
    problems = validate_submission(frame, SIZES, expected_ids=["a"])
    assert [(p.row, p.message.split(" (")[0]) for p in problems] == [
        (12, "mask overlaps the mask of row 10"),
        (13, "mask overlaps the mask of row 11"),
    ]


def test_overlap_named_with_all_earlier_rows():
    frame = pd.DataFrame({"ImageId": ["a"] * 3, "EncodedPixels": ["1 1", "3 1", "1 4"]})
    (problem,) = validate_submission(frame, SIZES, expected_ids=["a"])
    assert problem.row == 4
    assert "rows 2, 3" in problem.message


def test_unknown_and_missing_with_expected_ids_only(tmp_path):
    path = write_csv(tmp_path, HEADER + "a,1 1\nq,1 1\nq,99 1\n")
    problems = validate_submission(path, expected_ids=["a", "b"])
    assert [(p.row, p.image_id) for p in problems] == [(3, "q"), (None, "b")]
    assert "unknown ImageId" in problems[0].message
    assert str(problems[1]).startswith("ImageId b: image missing")


def test_without_sizes_runs_are_not_bounds_checked(tmp_path):
    path = write_csv(tmp_path, HEADER + "a,1 1\na,1000000 5\n")
    assert validate_submission(path) == []


def test_image_with_size_missing_from_sizes(tmp_path):
    path = write_csv(tmp_path, HEADER + "a,1 1\nc,1 1\n")
    (problem,) = validate_submission(path, SIZES, expected_ids=["a", "c"])
    assert (problem.row, problem.image_id, problem.message) == (
        3,
        "c",
        "no image size given for this ImageId",
    )


def test_problems_sorted_by_row_and_first_problem_per_row(tmp_path):
    path = write_csv(tmp_path, HEADER + "b,9 2 1 1\na,0 1 1 0\nb,1 1\n")
    problems = validate_submission(path, SIZES)
    assert [p.row for p in problems] == [2, 3]
    assert "pixel pair 2 not sorted" in problems[0].message
    assert "pixel pair 1: start 0" in problems[1].message


def test_problem_str():
    assert (
        str(SubmissionProblem(17, "abc", "pixel pair 3 not sorted"))
        == "row 17 (ImageId abc): pixel pair 3 not sorted"
    )
    assert str(SubmissionProblem(4, None, "empty ImageId")) == "row 4: empty ImageId"
    assert str(SubmissionProblem(None, "x", "image missing")) == "ImageId x: image missing"
    assert str(SubmissionProblem(None, None, "nothing")) == "nothing"


def test_validate_rejects_frame_without_columns():
    with pytest.raises(DataError, match="no EncodedPixels column"):
        validate_submission(pd.DataFrame({"ImageId": ["a"]}))


def test_validate_accepts_pandas_frame_with_nan():
    frame = pd.read_csv(io.StringIO(HEADER + "a,\nb,1 1\n"))  # pandas reads '' as NaN
    assert validate_submission(frame, SIZES) == []


# ---------------------------------------------------------------------------------------------------
# check_submission and read_submission_labels


def test_check_submission_lists_first_ten_problems(tmp_path):
    lines = "".join(f"a,0 {i + 1}\n" for i in range(12))
    path = write_csv(tmp_path, HEADER + lines)
    with pytest.raises(DataError) as info:
        check_submission(path)
    text = str(info.value)
    head, *listed = text.split("\n")
    assert head == f"{path}: 12 problems; first:"
    assert listed[0] == "  row 2 (ImageId a): pixel pair 1: start 0 is below 1 (pixels are numbered from 1)"
    assert len(listed) == 11 and listed[-1] == "  ... and 2 more"


def test_check_submission_single_problem_and_clean(tmp_path):
    path = write_csv(tmp_path, HEADER + "a,1 1\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: ImageId b: image missing"):
        check_submission(path, SIZES)
    assert check_submission(path, expected_ids=["a"])["EncodedPixels"].tolist() == ["1 1"]


def test_read_labels_of_a_dsb_style_truth_file(tmp_path):
    # Several rows per image in file order, as in stage1_train_labels.csv.
    path = write_csv(tmp_path, HEADER + "b,10 2\na,3 2 7 2\nb,1 3\na,1 1\n")
    labels = read_submission_labels(path, SIZES)
    assert list(labels) == ["a", "b"]
    assert labels["a"].tolist() == [[2, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert labels["b"].tolist() == [[2, 0, 0, 1], [2, 0, 0, 1], [2, 0, 0, 0]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (HEADER + "a,1 1\n", "ImageId b: image missing"),
        (HEADER + "a,1 1\nb,\nc,1 1\n", r"row 4 \(ImageId c\): unknown ImageId"),
        (HEADER + "a,1 1\nb,1 2\nb,2 1\n", r"row 4 \(ImageId b\): mask overlaps"),
    ],
)
def test_read_labels_refuses_invalid_files(tmp_path, content, message):
    path = write_csv(tmp_path, content)
    with pytest.raises(DataError, match=message):
        read_submission_labels(path, SIZES)


def test_read_labels_needs_sizes(tmp_path):
    path = write_csv(tmp_path, HEADER + "a,1 1\n")
    with pytest.raises(DataError, match="image sizes are needed"):
        read_submission_labels(path)
