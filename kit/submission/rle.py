"""Run-length encoding (RLE) of masks and label images, in the DSB2018 convention.

Conventions (the DSB2018 submission format, from the competition's evaluation page; see
docs/references.md), shared by every function here:

- Pixels are numbered **1-based in column-major order**: top to bottom, then left to right, i.e. the
  order of the flattened *transposed* image. Pixel ``p`` of an H×W image sits at row ``(p - 1) % H``,
  column ``(p - 1) // H``.
- An RLE string is ``"start length start length ..."``: non-negative decimal integers separated by
  spaces, with every start ≥ 1, every length ≥ 1, pairs sorted by start, no two runs sharing a pixel and
  every run inside the image. The empty string is the empty mask. Decoders reject anything else with a
  ``ValueError`` (they accept touching runs, which encoders never emit).
- Runs follow the column-major pixel stream, so a run continues from the bottom of one column into the
  top of the next, exactly as the per-instance numpy encoder of the public notebooks does: in a 3×3
  image, pixels (row 2, col 0) and (row 0, col 1) are pixels 3 and 4 and encode as the single run ``3 2``.
- A label image is an integer H×W array, 0 = background, every other value one instance; ids need not
  be sequential.

The fast functions are a numba pass over the label image (`encode_labels`) and a numba painter over runs
(`decode_labels`). The submission reader (`kit.submission.csvfile`) checks and paints the runs of a
whole file at once with the pieces they are built from: `parse_rle_values`, `first_run_problems` and
`paint_runs`.

The ``*_reference`` functions are the plain numpy versions from the public notebooks, kept beside the
fast ones as test oracles and for ``benchmarks/bench_rle.py``; they are not exported (import them from
this module).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numba
import numpy as np

__all__ = [
    "decode_labels",
    "decode_rle",
    "encode_labels",
    "encode_mask",
    "first_run_problems",
    "paint_runs",
    "parse_rle_values",
]

# Values are parsed as int64; at most 18 digits keep start + length far from overflow.
_MAX_DIGITS = 18
_RLE_PATTERN = re.compile(f"[0-9]{{1,{_MAX_DIGITS}}}(?: +[0-9]{{1,{_MAX_DIGITS}}})*", re.ASCII)


# ---------------------------------------------------------------------------------------------------
# Encoding


@numba.njit(cache=True, nogil=True)
def _label_runs(labels, starts, lengths, run_labels):  # pragma: no cover - compiled
    """Write (start, length, label) of every run of `labels` in column-major order; return the count.

    `starts`, `lengths` and `run_labels` must hold at least as many entries as `labels` has non-zero
    pixels (an upper bound on the number of runs).
    """
    h, w = labels.shape
    n = 0
    prev = labels[0, 0]
    if prev != 0:
        starts[0] = 1
        run_labels[0] = prev
        n = 1
    pos = 0
    for c in range(w):
        for r in range(h):
            v = labels[r, c]
            if v != prev:
                if prev != 0:
                    lengths[n - 1] = pos + 1 - starts[n - 1]
                if v != 0:
                    starts[n] = pos + 1
                    run_labels[n] = v
                    n += 1
                prev = v
            pos += 1
    if prev != 0:
        lengths[n - 1] = pos + 1 - starts[n - 1]
    return n


def _as_kernel_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Check that `labels` is a 2-D non-negative integer image; return a C-contiguous kernel input."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H×W) array, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        hint = " (use encode_mask for a boolean mask)" if arr.dtype == np.bool_ else ""
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}{hint}")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{name} has negative values (min {arr.min()}); 0 is background, ids are > 0")
    if arr.dtype == np.uint64:
        # numba compares uint64 with int64 through float64; ids that fit int64 can be viewed as such.
        if arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} has ids above 2**63 - 1, which are not supported")
        arr = arr.view(np.int64)
    return np.ascontiguousarray(arr)


def _runs(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, labels) of all runs of a checked label image, in pixel order."""
    capacity = np.count_nonzero(arr)
    starts = np.empty(capacity, np.int64)
    lengths = np.empty(capacity, np.int64)
    run_labels = np.empty(capacity, arr.dtype)
    n = _label_runs(arr, starts, lengths, run_labels) if capacity else 0
    return starts[:n], lengths[:n], run_labels[:n]


def encode_labels(labels: np.ndarray) -> dict[int, str]:
    """RLE of every instance of a label image, in one pass over its pixels.

    Args:
        labels: H×W integer array of any integer dtype; 0 is background, every other value an instance
            (ids need not be sequential). Negative values, other dtypes and other shapes raise
            ``ValueError``.

    Returns:
        ``{label id: "start length ..."}`` for every id present except 0, keys ascending. Pixels are
        1-based, column-major (see the module docstring); runs of one id are ascending.
    """
    arr = _as_kernel_labels(labels, "labels")
    starts, lengths, run_labels = _runs(arr)
    if not run_labels.size:
        return {}
    order = np.argsort(run_labels, kind="stable")
    run_labels = run_labels[order]
    pairs = np.empty(2 * order.size, np.int64)
    pairs[0::2] = starts[order]
    pairs[1::2] = lengths[order]
    tokens = list(map(str, pairs.tolist()))
    first = np.flatnonzero(np.r_[True, run_labels[1:] != run_labels[:-1]])
    ends = np.r_[first[1:], run_labels.size]
    return {
        label: " ".join(tokens[2 * a : 2 * b])
        for label, a, b in zip(run_labels[first].tolist(), first.tolist(), ends.tolist(), strict=True)
    }


def encode_mask(mask: np.ndarray) -> str:
    """RLE string of one H×W mask (bool, or integer with non-zero = foreground); "" for an empty mask."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H×W) array, got shape {arr.shape}")
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"mask must be boolean or integer, got {arr.dtype}")
    starts, lengths, _ = _runs(np.ascontiguousarray(arr != 0).view(np.uint8))
    pairs = np.empty(2 * starts.size, np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def encode_labels_reference(labels: np.ndarray) -> dict[int, str]:
    """Plain numpy reference for `encode_labels`: one ``labels == i`` pass per instance, O(K·H·W).

    This is the encoder of the public DSB2018 notebooks; no input checking.
    """
    labels = np.asarray(labels)
    encoded = {}
    for label in np.unique(labels):
        if label == 0:
            continue
        pixels = np.concatenate([[0], (labels == label).T.flatten(), [0]])
        runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
        runs[1::2] -= runs[::2]
        encoded[int(label)] = " ".join(str(x) for x in runs)
    return encoded


# ---------------------------------------------------------------------------------------------------
# Decoding


def parse_rle_values(rle: str) -> np.ndarray:
    """The integers of an RLE string, ``[start, length, start, length, ...]`` as int64 (empty for "").

    Only the syntax is checked here (non-negative decimal integers of at most 18 digits separated by
    spaces, an even count); ``ValueError`` names the first bad value. Whether the pairs are valid runs
    is `first_run_problems`' job.
    """
    text = rle.strip()
    if not text:
        return np.empty(0, np.int64)
    if _RLE_PATTERN.fullmatch(text) is None:
        for k, token in enumerate(text.split(), start=1):
            if not (token.isascii() and token.isdigit()):
                raise ValueError(f"value {k} ({token!r}) is not a non-negative integer")
            if len(token) > _MAX_DIGITS:
                raise ValueError(f"value {k} ({token}) is too large")
        raise ValueError("values must be separated by spaces")
    values = np.fromstring(text, dtype=np.int64, sep=" ")
    if values.size % 2:
        raise ValueError(f"odd number of values ({values.size}); expected start length pairs")
    return values


def first_run_problems(
    starts: np.ndarray, lengths: np.ndarray, groups: np.ndarray, n_pixels: np.ndarray | int
) -> dict[int, str]:
    """First bad start/length pair of every group of pairs, as ``{group: message}`` (empty when all
    are valid runs).

    `starts`, `lengths` and `groups` are int64 arrays of one entry per pair; a group is one RLE string
    (a row of a submission, an instance), its pairs contiguous and in string order. `n_pixels` is the
    image size H·W for every pair (or one int), negative where unknown (no bounds check). A pair is bad
    when its start < 1, its length < 1, it is not after the previous pair of its group (unsorted or
    overlapping), or it runs past the last pixel. The message says which pair, counted from 1 in its
    string, and why.
    """
    n = starts.size
    if n == 0:
        return {}
    index = np.arange(n)
    same_group = np.r_[False, groups[1:] == groups[:-1]]
    pair_no = index - np.maximum.accumulate(np.where(same_group, 0, index)) + 1
    prev_start = np.r_[0, starts[:-1]]
    prev_end = np.r_[0, starts[:-1] + lengths[:-1]]
    n_pixels = np.broadcast_to(np.asarray(n_pixels, dtype=np.int64), (n,))
    checks = [
        (starts < 1, "pixel pair {k}: start {s} is below 1 (pixels are numbered from 1)"),
        (lengths < 1, "pixel pair {k}: length {l} is below 1"),
        (same_group & (starts < prev_start), "pixel pair {k} not sorted (start {s} comes after start {ps})"),
        (
            same_group & (starts < prev_end),
            "pixel pair {k} overlaps pair {kp} (start {s}, but pair {kp} runs to pixel {pl})",
        ),
        (
            (n_pixels >= 0) & (starts + lengths - 1 > n_pixels),
            "pixel pair {k} (start {s}, length {l}) runs past pixel {n}, the last of the image",
        ),
    ]
    bad = np.zeros(n, bool)
    for failed, _ in checks:
        bad |= failed
    problems: dict[int, str] = {}
    for i in np.flatnonzero(bad).tolist():
        group = int(groups[i])
        if group in problems:
            continue
        template = next(t for failed, t in checks if failed[i])
        problems[group] = template.format(
            k=pair_no[i],
            kp=pair_no[i] - 1,
            s=starts[i],
            l=lengths[i],
            ps=prev_start[i],
            pl=prev_end[i] - 1,
            n=n_pixels[i],
        )
    return problems


@numba.njit(cache=True, nogil=True)
def _paint_runs(starts, lengths, run_labels, out):  # pragma: no cover - compiled
    """Paint runs (1-based column-major starts) into the zeroed H×W `out`.

    Returns (run index, label found, 1-based pixel) for the first pixel that was already painted, or
    (-1, 0, 0) when no two runs share a pixel.
    """
    h = out.shape[0]
    for k in range(starts.size):
        p = starts[k] - 1
        c = p // h
        r = p - c * h
        label = run_labels[k]
        for _ in range(lengths[k]):
            if out[r, c] != 0:
                return k, out[r, c], c * h + r + 1
            out[r, c] = label
            r += 1
            if r == h:
                r = 0
                c += 1
    return -1, 0, 0


def paint_runs(
    starts: np.ndarray, lengths: np.ndarray, run_labels: np.ndarray, out: np.ndarray
) -> tuple[int, int, int]:
    """Paint runs into the zeroed H×W integer label image `out`, in place; report the first clash.

    Run k covers `lengths[k]` pixels from the 1-based column-major pixel `starts[k]` and gets id
    `run_labels[k]` (> 0, `out`'s dtype). Returns ``(k, id found, 1-based pixel)`` for the first run that
    reaches a pixel already painted (painting stops there), or ``(-1, 0, 0)`` when no two runs share a
    pixel. Runs must be valid (see `first_run_problems`); shapes, dtypes and bounds are checked here and
    raise ``ValueError``.
    """
    starts = np.ascontiguousarray(starts, np.int64)
    lengths = np.ascontiguousarray(lengths, np.int64)
    run_labels = np.ascontiguousarray(run_labels)
    if not (starts.ndim == lengths.ndim == run_labels.ndim == 1):
        raise ValueError("starts, lengths and run_labels must be 1-D arrays")
    if not (starts.size == lengths.size == run_labels.size):
        raise ValueError(
            f"starts, lengths and run_labels differ in length ({starts.size}, {lengths.size}, "
            f"{run_labels.size})"
        )
    if out.ndim != 2 or not out.flags.c_contiguous or not np.issubdtype(out.dtype, np.integer):
        raise ValueError(f"out must be a C-contiguous 2-D integer array, got {out.dtype} {out.shape}")
    if run_labels.dtype != out.dtype:
        raise ValueError(f"run_labels ({run_labels.dtype}) must have out's dtype ({out.dtype})")
    if starts.size and (starts.min() < 1 or lengths.min() < 1 or (starts + lengths - 1).max() > out.size):
        raise ValueError(f"runs must have start >= 1, length >= 1 and stay inside the {out.shape} image")
    k, found, pixel = _paint_runs(starts, lengths, run_labels, out)
    return int(k), int(found), int(pixel)


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"shape must be non-negative, got {shape!r}")
    return h, w


def decode_rle(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode one RLE string into a bool H×W mask (``shape = (H, W)``).

    Strict: a malformed string (non-integer value, odd count, start < 1, length < 1, unsorted or
    overlapping pairs, a run past pixel H·W) raises ``ValueError`` saying which pair is wrong.
    """
    h, w = _check_shape(shape)
    if not isinstance(rle, str):
        raise ValueError(f"rle must be a string, got {type(rle).__name__}")
    values = parse_rle_values(rle)
    starts, lengths = np.ascontiguousarray(values.reshape(-1, 2).T)
    problems = first_run_problems(starts, lengths, np.zeros(starts.size, np.int64), h * w)
    if problems:
        raise ValueError(problems[0])
    out = np.zeros((h, w), np.int32)
    _paint_runs(starts, lengths, np.ones(starts.size, np.int32), out)
    return out != 0


def decode_labels(rles: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """Decode RLE strings into one int32 H×W label image, instance k being the k-th non-empty string.

    Without empty strings ``rles[i]`` gets id ``i + 1``; empty strings are skipped and ids stay
    consecutive over the others (with ``["1 2", "", "5 1"]`` the third string gets id 2). Every string is
    checked as in `decode_rle`; two strings sharing a pixel raise ``ValueError`` naming both indices.
    """
    h, w = _check_shape(shape)
    values = []
    source = []  # index into `rles` of every non-empty string, in id order
    for i, rle in enumerate(rles):
        if not isinstance(rle, str):
            raise ValueError(f"rles[{i}]: expected a string, got {type(rle).__name__}")
        try:
            v = parse_rle_values(rle)
        except ValueError as exc:
            raise ValueError(f"rles[{i}]: {exc}") from None
        if v.size:
            values.append(v)
            source.append(i)
    out = np.zeros((h, w), np.int32)
    if not values:
        return out
    counts = np.array([v.size // 2 for v in values])
    flat = np.concatenate(values)
    starts, lengths = np.ascontiguousarray(flat.reshape(-1, 2).T)
    run_labels = np.repeat(np.arange(1, len(values) + 1, dtype=np.int32), counts)
    problems = first_run_problems(starts, lengths, run_labels, h * w)
    if problems:
        label, message = min(problems.items())
        raise ValueError(f"rles[{source[label - 1]}]: {message}")
    k, other, pixel = _paint_runs(starts, lengths, run_labels, out)
    if k >= 0:
        raise ValueError(
            f"rles[{source[other - 1]}] and rles[{source[run_labels[k] - 1]}] overlap (both list pixel {pixel})"
        )
    return out


def decode_rle_reference(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Plain numpy reference for `decode_rle`, as in the public notebooks; no checking."""
    h, w = shape
    s = rle.split()
    starts = np.asarray(s[0::2], dtype=np.int64) - 1
    lengths = np.asarray(s[1::2], dtype=np.int64)
    flat = np.zeros(h * w, dtype=bool)
    for lo, n in zip(starts, lengths, strict=False):
        flat[lo : lo + n] = True
    return flat.reshape(w, h).T


def decode_labels_reference(rles: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """Plain numpy reference for `decode_labels`: one full-image mask per string; no overlap check."""
    out = np.zeros(shape, np.int32)
    label = 0
    for rle in rles:
        if rle.strip():
            label += 1
            out[decode_rle_reference(rle, shape)] = label
    return out
