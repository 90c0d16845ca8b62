"""The whole image's intensity percentiles, computed block by block, so that every block is normalised as
the whole image would be (`kit.data.normalize.normalize_image` with `intensity_range`).

A model normalises its input by the 1st and 99.8th percentiles of that input. A block's own percentiles
differ from the image's (a block of background would be stretched into noise), so block-wise prediction
computes the image's percentiles once and hands them to every block. For integer images up to 16 bits
they are exact: the histogram of each block is summed, and the percentile read off the cumulative counts
with numpy's linear interpolation. Other pixel types (float, 32-bit) use a regular subsample of at most
`SUBSAMPLE` pixels, read block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial

import numpy as np

from kit.data.normalize import model_values
from kit.scale.plan import Region
from kit.scale.sources import ImageSource

MODEL_CHANNELS = (1, 3)
SUBSAMPLE = 1 << 24


def intensity_ranges(
    source: ImageSource,
    regions: Iterable[Region],
    *,
    low: float = 1.0,
    high: float = 99.8,
    mapper: Callable[[Callable, list], Iterator] | None = None,
) -> dict[int, tuple[float, float]]:
    """{model channels (1 and 3): (low, high) percentiles of the image's intensities as `model_values`
    sees them}, from the blocks `regions` that tile the image. `mapper(fn, items)` yields fn's results
    (e.g. an executor's; default: in this process)."""
    regions = list(regions)
    run = mapper or (lambda fn, items: map(fn, items))
    if source.dtype.kind == "b" or (source.dtype.kind in "ui" and source.dtype.itemsize <= 2):
        offset = int(np.iinfo(source.dtype).min) if source.dtype.kind == "i" else 0
        totals: dict[int, np.ndarray] = {}
        for counts in run(partial(_histograms, source, offset), regions):
            for c, h in counts.items():
                totals[c] = h.copy() if c not in totals else _add(totals[c], h)
        return {c: _from_histogram(totals[c], c, offset, source, low, high) for c in MODEL_CHANNELS}
    step = max(1, int(np.ceil(np.sqrt(source.pixels * _samples_per_pixel(source) / SUBSAMPLE))))
    parts: dict[int, list[np.ndarray]] = {c: [] for c in MODEL_CHANNELS}
    for values in run(partial(_subsample, source, step), regions):
        for c in MODEL_CHANNELS:
            parts[c].append(values[c])
    return {
        c: tuple(float(v) for v in np.percentile(np.concatenate(parts[c]), [low, high]))
        for c in MODEL_CHANNELS
    }


def _samples_per_pixel(source: ImageSource) -> int:
    return source.channels or 1


def _add(total: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """total + counts, histograms of different lengths (bincount stops at the largest value)."""
    if total.size < counts.size:
        total, counts = counts.copy(), total
    total[: counts.size] += counts
    return total


def _histograms(source: ImageSource, offset: int, region: Region) -> dict[int, np.ndarray]:
    """Per model channel count: counts of the integer values whose percentiles `normalize_image` takes
    (for 1 channel from RGB: the channel sums, divided by 3 only when read off)."""
    block = source.read(region)
    if block.dtype == np.bool_:
        block = block.astype(np.uint8)
    if block.ndim == 3 and block.shape[2] in (2, 4):
        block = block[:, :, :-1]
    values = block.astype(np.int64) - offset
    out = {3: np.bincount(values.ravel())}
    if values.ndim == 3 and values.shape[2] == 3:
        out[1] = np.bincount(values.sum(axis=2).ravel())
    else:
        out[1] = out[3]
    return out


def _from_histogram(
    counts: np.ndarray, channels: int, offset: int, source: ImageSource, low: float, high: float
) -> tuple[float, float]:
    divisor = 3 if channels == 1 and (source.channels or 1) in (3, 4) else 1
    shift = offset * divisor
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])

    def value(k: int) -> np.float32:
        # the k-th smallest value, as model_values computes it (float32; a float32 mean for RGB → grey)
        v = np.float32(int(np.searchsorted(cumulative, k, side="right")) + shift)
        return v / np.float32(divisor) if divisor > 1 else v

    return tuple(float(_percentile(value, n, q)) for q in (low, high))


def _percentile(value: Callable[[int], np.float32], n: int, q: float) -> float:
    """numpy's default ("linear") percentile of n sorted values given by `value(k)`."""
    virtual = np.float64(q) / 100 * (n - 1)
    k = int(np.floor(virtual))
    t = virtual - k
    a = value(k)
    if k + 1 >= n:
        return float(a)
    b = value(k + 1)
    diff = b - a
    # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
    return float(b - diff * (1 - t)) if t >= 0.5 else float(a + diff * t)


def _subsample(source: ImageSource, step: int, region: Region) -> dict[int, np.ndarray]:
    """Per model channel count: the `model_values` of every `step`-th row and column of the region (on the
    image's own grid, so the sample does not depend on the blocks)."""
    y0, _, x0, _ = region
    block = source.read(region)[(-y0) % step :: step, (-x0) % step :: step]
    return {c: model_values(block, c).ravel() for c in MODEL_CHANNELS}
