"""The submission CSV: write, read, validate and decode ``ImageId,EncodedPixels`` files.

File format (DSB2018's; see docs/references.md): the header ``ImageId,EncodedPixels``, then one row per
nucleus whose EncodedPixels is an RLE string (conventions in `kit.submission.rle`: 1-based, column-major,
strict). An image without nuclei has exactly one row, with empty EncodedPixels. The DSB
``stage1_train_labels.csv`` truth file has the same format. The only extra columns accepted are those of the
DSB stage-1 solution file, ``ImageId,EncodedPixels,Height,Width,Usage`` (any subset of Height, Width, Usage,
in that file order after the two required columns); Height and Width, when present, serve as image sizes.

Row numbers: ``row`` is the line of the file where the record starts, counting the header as line 1, so
the first data row is row 2, as a text editor or a spreadsheet shows it. Blank lines are skipped but
still counted.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.fileio import atomic_path
from kit.submission.rle import encode_labels, first_run_problems, paint_runs, parse_rle_values

__all__ = [
    "HEADER",
    "OPTIONAL_COLUMNS",
    "SubmissionProblem",
    "check_submission",
    "read_rle_csv",
    "read_submission_labels",
    "validate_submission",
    "write_submission",
]

HEADER = ("ImageId", "EncodedPixels")
OPTIONAL_COLUMNS = ("Height", "Width", "Usage")
_MAX_LISTED = 10
# The csv module refuses fields over 128 KiB by default; a ragged mask of a large image can exceed it.
_FIELD_LIMIT = 1 << 30


@dataclass(frozen=True)
class SubmissionProblem:
    """One problem found in a submission: where (file row, ImageId; None when not tied to one) and what."""

    row: int | None
    image_id: str | None
    message: str

    def __str__(self) -> str:
        if self.row is not None and self.image_id is not None:
            return f"row {self.row} (ImageId {self.image_id}): {self.message}"
        if self.row is not None:
            return f"row {self.row}: {self.message}"
        if self.image_id is not None:
            return f"ImageId {self.image_id}: {self.message}"
        return self.message


# ---------------------------------------------------------------------------------------------------
# Writing


def _first_pixel(rle: str) -> int:
    return int(rle.split(" ", 1)[0])


def write_submission(path: str | os.PathLike, predictions: Mapping[str, np.ndarray]) -> Path:
    """Write label images as a submission CSV, atomically; return the path.

    `predictions` maps ImageId → H×W integer label image (0 = background, ids need not be sequential).
    Images are written sorted by id, one row per instance, the rows of an image ordered by their first
    pixel; an image without instances gets one row with empty EncodedPixels. A label image with negative
    values, a non-integer dtype or not 2-D raises `DataError` before anything is written, so an existing
    file is never left half-written or clobbered.
    """
    path = Path(path)
    for image_id in predictions:
        if not isinstance(image_id, str) or not image_id:
            raise DataError(f"{path}: ImageId {image_id!r} is not a non-empty string")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for image_id in sorted(predictions):
        try:
            encoded = encode_labels(predictions[image_id])
        except ValueError as exc:
            raise DataError(f"{path}: ImageId {image_id}: {exc}") from None
        rles = sorted(encoded.values(), key=_first_pixel) or [""]
        writer.writerows((image_id, rle) for rle in rles)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# Reading


def _check_header(path: Path, header: list[str] | None) -> None:
    expected = ",".join(HEADER)
    if header is None:
        raise DataError(f"{path}: empty file; expected the header '{expected}'")
    extra = header[2:]
    ok = (
        tuple(header[:2]) == HEADER
        and extra == [c for c in OPTIONAL_COLUMNS if c in extra]
        and ("Height" in extra) == ("Width" in extra)
    )
    if not ok:
        raise DataError(
            f"{path}: header is '{','.join(header)}', expected '{expected}' "
            f"(optionally followed by {','.join(OPTIONAL_COLUMNS)}, as in the DSB stage-1 solution file)"
        )


def _parse_size_column(path: Path, frame: pd.DataFrame, column: str) -> np.ndarray:
    values = frame[column].str.strip()
    good = values.str.fullmatch(r"0*[1-9][0-9]{0,8}")
    if not good.all():
        i = int(np.flatnonzero(~good.to_numpy(dtype=bool))[0])
        raise DataError(
            f"{path}: row {frame['row'].iat[i]} (ImageId {frame['ImageId'].iat[i]}): "
            f"{column} {frame[column].iat[i]!r} is not a positive integer"
        )
    return values.astype(np.int64).to_numpy()


def read_rle_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission or DSB labels CSV without judging its RLE (see `validate_submission`).

    Returns a frame with columns ImageId, EncodedPixels (str, stripped, '' when empty), the optional
    Height, Width (int64) and Usage (str) when the file has them, and ``row`` (the file line number of
    the record; the header is line 1). Raises `DataError` naming the file for a missing or unreadable
    file, a missing or wrong header, malformed CSV or a record with the wrong number of fields.
    """
    path = Path(path)
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    records: list[list[str]] = []
    rows: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            try:
                header = next(reader, None)
                _check_header(path, header)
                line = reader.line_num
                for fields in reader:
                    start, line = line + 1, reader.line_num
                    if not fields:
                        continue
                    if len(fields) != len(header):
                        raise DataError(
                            f"{path}: row {start} (ImageId {fields[0]}): expected {len(header)} fields "
                            f"({','.join(header)}), got {len(fields)}"
                        )
                    records.append(fields)
                    rows.append(start)
            except csv.Error as exc:
                raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file (is it really a CSV?)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    frame = pd.DataFrame(records, columns=header, dtype=object)
    frame["EncodedPixels"] = frame["EncodedPixels"].str.strip()
    frame["row"] = np.asarray(rows, dtype=np.int64)
    for column in ("Height", "Width"):
        if column in frame:
            frame[column] = _parse_size_column(path, frame, column)
    return frame


# ---------------------------------------------------------------------------------------------------
# Validation


@dataclass
class _Runs:
    """Parsed start/length pairs of the rows that parsed cleanly; `pos` is each pair's frame position."""

    starts: np.ndarray
    lengths: np.ndarray
    pos: np.ndarray


def _column_sizes(
    frame: pd.DataFrame, ids: list[str], problems: list[SubmissionProblem]
) -> dict[str, tuple[int, int]]:
    """Image sizes from Height/Width columns; rows disagreeing with the image's first row are problems."""
    sizes: dict[str, tuple[int, int]] = {}
    first_row: dict[str, int] = {}
    for image_id, h, w, row in zip(ids, frame["Height"], frame["Width"], frame["row"], strict=True):
        size = (int(h), int(w))
        if image_id not in sizes:
            sizes[image_id], first_row[image_id] = size, int(row)
        elif sizes[image_id] != size:
            problems.append(
                SubmissionProblem(
                    int(row),
                    image_id,
                    f"Height×Width {size[0]}×{size[1]} differs from {sizes[image_id][0]}×"
                    f"{sizes[image_id][1]} on row {first_row[image_id]}",
                )
            )
    return sizes


def _overlap_problems(
    starts: np.ndarray, lengths: np.ndarray, pos: np.ndarray, rows: np.ndarray
) -> list[tuple[int, str]]:
    """(position, message) for every row of one image whose mask shares pixels with an earlier row.

    The runs of each row are disjoint already. Sweep over the runs sorted by start: a run overlaps an
    earlier one when it starts before the furthest end so far, and the run holding that end is named as
    its partner; each overlapping pair is reported on its later row.
    """
    order = np.argsort(starts, kind="stable")
    starts, ends, pos = starts[order], starts[order] + lengths[order], pos[order]
    reach = np.maximum.accumulate(ends)
    index = np.arange(starts.size)
    holder = np.maximum.accumulate(np.where(ends == reach, index, 0))
    hits = np.flatnonzero(starts[1:] < reach[:-1]) + 1
    earlier: dict[int, set[int]] = {}
    for a, b in zip(pos[hits].tolist(), pos[holder[hits - 1]].tolist(), strict=True):
        earlier.setdefault(max(a, b), set()).add(min(a, b))
    problems = []
    for p, others in sorted(earlier.items()):
        listed = ", ".join(str(rows[o]) for o in sorted(others))
        plural = "s" if len(others) > 1 else ""
        problems.append(
            (p, f"mask overlaps the mask of row{plural} {listed} (a pixel may belong to one nucleus only)")
        )
    return problems


def _analyse(
    frame: pd.DataFrame,
    image_sizes: Mapping[str, tuple[int, int]] | None,
    expected_ids: Iterable[str] | None,
) -> tuple[list[SubmissionProblem], _Runs, dict[str, tuple[int, int]]]:
    """All problems of a submission frame, plus the parsed runs and the image sizes used."""
    for column in HEADER:
        if column not in frame:
            raise DataError(f"submission frame has no {column} column (columns: {list(frame.columns)})")
    n = len(frame)
    ids = ["" if pd.isna(v) else str(v) for v in frame["ImageId"]]
    rles = ["" if pd.isna(v) else str(v).strip() for v in frame["EncodedPixels"]]
    rows = frame["row"].to_numpy() if "row" in frame else np.arange(2, n + 2)
    problems: list[SubmissionProblem] = []

    def add(p: int, message: str) -> None:
        problems.append(SubmissionProblem(int(rows[p]), ids[p] or None, message))

    if image_sizes is not None:
        sizes = {k: (int(v[0]), int(v[1])) for k, v in image_sizes.items()}
    elif "Height" in frame and "Width" in frame:
        sizes = _column_sizes(frame, ids, problems)
    else:
        sizes = {}
    expected = set(expected_ids) if expected_ids is not None else None
    if expected is None and image_sizes is not None:
        expected = set(sizes)

    # Row identity: empty ImageIds and duplicated rows.
    by_image: dict[str, list[int]] = {}
    seen: dict[tuple[str, str], int] = {}
    skip = np.zeros(n, bool)  # rows left out of the per-image checks
    for p in range(n):
        if not ids[p]:
            add(p, "empty ImageId")
            skip[p] = True
            continue
        by_image.setdefault(ids[p], []).append(p)
        first = seen.setdefault((ids[p], rles[p]), p)
        if first != p:
            add(p, f"duplicate of row {rows[first]}")
            skip[p] = True

    # Row content: parse every row, then check all start/length pairs at once.
    values, parsed = [], []
    for p in np.flatnonzero(~skip).tolist():
        if not rles[p]:
            continue
        try:
            values.append(parse_rle_values(rles[p]))
            parsed.append(p)
        except ValueError as exc:
            add(p, str(exc))
            skip[p] = True
    counts = np.array([v.size // 2 for v in values], dtype=np.int64)
    flat = np.concatenate(values) if values else np.empty(0, np.int64)
    pair_pos = np.repeat(np.array(parsed, dtype=np.int64), counts)
    image_pixels = {image_id: h * w for image_id, (h, w) in sizes.items()}
    n_pixels = np.array([image_pixels.get(ids[p], -1) for p in parsed], np.int64)
    runs = _Runs(*np.ascontiguousarray(flat.reshape(-1, 2).T), pair_pos)
    for p, message in first_run_problems(
        runs.starts, runs.lengths, pair_pos, np.repeat(n_pixels, counts)
    ).items():
        add(p, message)
        skip[p] = True

    # Per image: unknown ids, stray empty rows, overlapping masks.
    pair_first = np.searchsorted(pair_pos, np.arange(n + 1))  # pairs are in row order
    for image_id, positions in by_image.items():
        if expected is not None and image_id not in expected:
            plural = "s" if len(expected) != 1 else ""
            add(positions[0], f"unknown ImageId (not among the {len(expected)} expected image{plural})")
        elif image_sizes is not None and image_id not in sizes:
            add(positions[0], "no image size given for this ImageId")
        filled = [p for p in positions if rles[p]]
        for p in positions:
            if filled and not rles[p] and not skip[p]:
                add(
                    p,
                    f"empty EncodedPixels in an image with {len(filled)} masks "
                    "(only allowed as the single row of an image without nuclei)",
                )
        checked = [p for p in filled if not skip[p]]
        if len(checked) > 1:
            sel = np.concatenate([np.arange(pair_first[p], pair_first[p + 1]) for p in checked])
            for p, message in _overlap_problems(runs.starts[sel], runs.lengths[sel], pair_pos[sel], rows):
                add(p, message)

    if expected is not None:
        for image_id in sorted(expected - by_image.keys()):
            problems.append(
                SubmissionProblem(
                    None,
                    image_id,
                    "image missing (needs a row, with empty EncodedPixels if it has no nuclei)",
                )
            )
    problems.sort(key=lambda q: (q.row is None, q.row or 0))
    return problems, runs, sizes


def validate_submission(
    path_or_frame: str | os.PathLike | pd.DataFrame,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    expected_ids: Iterable[str] | None = None,
) -> list[SubmissionProblem]:
    """Every problem of a submission file (or of a frame from `read_rle_csv`), sorted by row.

    Checks per row: EncodedPixels values are integers in start/length pairs, starts ≥ 1, lengths ≥ 1,
    pairs sorted and disjoint, runs inside the image (when its size is known); per image: no row
    duplicated, masks not overlapping (no pixel listed twice), an empty EncodedPixels only as the single
    row of an image; per file: no empty or unknown ImageId, no expected image missing.

    `image_sizes` maps ImageId → (H, W); without it, Height/Width columns are used when the file has
    them, else runs are not bounds-checked. The expected images are `expected_ids`, else the keys of
    `image_sizes`; when neither is given no image counts as missing or unknown. A frame without a ``row``
    column is numbered as if written with a header (first data row = 2). Unreadable files raise
    `DataError` (see `read_rle_csv`).
    """
    frame = path_or_frame if isinstance(path_or_frame, pd.DataFrame) else read_rle_csv(path_or_frame)
    return _analyse(frame, image_sizes, expected_ids)[0]


def _problems_error(path: str | os.PathLike, problems: list[SubmissionProblem]) -> DataError:
    if len(problems) == 1:
        return DataError(f"{path}: {problems[0]}")
    shown = "\n".join(f"  {p}" for p in problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return DataError(f"{path}: {len(problems)} problems; first:\n{shown}{more}")


def check_submission(
    path: str | os.PathLike,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    expected_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read and validate a submission; return its `read_rle_csv` frame, else raise `DataError`.

    One problem is one line, ``"{path}: row R (ImageId I): what"``; several say ``"{path}: N problems;
    first:"`` followed by up to 10 of them, one per line.
    """
    frame = read_rle_csv(path)
    problems = validate_submission(frame, image_sizes, expected_ids)
    if problems:
        raise _problems_error(path, problems)
    return frame


def read_submission_labels(
    path: str | os.PathLike, image_sizes: Mapping[str, tuple[int, int]] | None = None
) -> dict[str, np.ndarray]:
    """Read, validate and decode a submission or DSB labels CSV into ImageId → int32 H×W label image.

    The non-empty rows of an image become ids 1..N in file order; an image whose only row is empty
    decodes to all zeros. Every image of `image_sizes` must be in the file and no other; without
    `image_sizes` the file's Height/Width columns give the sizes (and the images). Any problem raises
    `DataError` as in `check_submission`.
    """
    frame = read_rle_csv(path)
    if image_sizes is None and "Height" not in frame:
        raise DataError(f"{path}: image sizes are needed to decode (the file has no Height/Width columns)")
    problems, runs, sizes = _analyse(frame, image_sizes, None)
    if problems:
        raise _problems_error(path, problems)
    filled = (frame["EncodedPixels"] != "").to_numpy()
    # Label of every row: its rank among the filled rows of its image.
    row_label = frame[filled].groupby("ImageId", sort=False).cumcount().reindex(frame.index).to_numpy()
    codes, uniques = pd.factorize(frame["ImageId"])
    pair_image = codes[runs.pos]
    order = np.argsort(pair_image, kind="stable")
    bounds = np.searchsorted(pair_image[order], np.arange(len(uniques) + 1))
    labels = {}
    for code, image_id in enumerate(uniques.tolist()):
        sel = order[bounds[code] : bounds[code + 1]]
        out = np.zeros(sizes[image_id], np.int32)
        pos = runs.pos[sel]
        k, _, _ = paint_runs(runs.starts[sel], runs.lengths[sel], (row_label[pos] + 1).astype(np.int32), out)
        assert k < 0, "validated masks cannot overlap"
        labels[image_id] = out
    return {image_id: labels[image_id] for image_id in sorted(labels)}
