"""RLE speed: kit's one-pass numba encoder/decoder against the per-instance numpy references.

Run with ``python benchmarks/bench_rle.py``. Builds synthetic label images of random non-overlapping
ellipses at DSB2018 sizes, times both implementations in this process (best of several repeats, after a
warm-up call that compiles or loads the numba kernels) and checks that their outputs are identical.
"""

from __future__ import annotations

import time

import numpy as np
from timing import best_time

from kit.submission.rle import (
    decode_labels,
    decode_labels_reference,
    encode_labels,
    encode_labels_reference,
)

CASES = [((256, 320), 60), ((520, 696), 250), ((1040, 1388), 600)]


def synthetic_labels(shape: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """int32 label image with up to `n` random non-overlapping ellipses and non-sequential ids."""
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.int32)
    ids = rng.choice(np.arange(1, 5 * n + 1), size=n, replace=False).astype(np.int32)
    scale = np.sqrt(h * w / n) / 4  # mean radius keeping the image roughly half full of nuclei
    placed = 0
    for _ in range(50 * n):
        if placed == n:
            break
        a, b = rng.uniform(0.6, 1.4, size=2) * scale
        angle = rng.uniform(0, np.pi)
        r = int(np.ceil(max(a, b)))
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = (yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        window = labels[y0:y1, x0:x1]
        if inside.any() and not window[inside].any():
            window[inside] = ids[placed]
            placed += 1
    return labels


def main() -> None:
    start = time.perf_counter()
    warm = synthetic_labels((64, 64), 5)
    encode_labels(warm)
    decode_labels(list(encode_labels(warm).values()), warm.shape)
    print(f"warm-up (numba compile or cache load): {1e3 * (time.perf_counter() - start):.0f} ms\n")

    header = (
        f"{'size':>10} {'nuclei':>6} {'runs':>6} | {'encode ref ms':>13} {'kit ms':>7} {'ratio':>6} {'check':>8}"
        f" | {'decode ref ms':>13} {'kit ms':>7} {'ratio':>6} {'check':>8}"
    )
    print(header)
    print("-" * len(header))
    for shape, n in CASES:
        labels = synthetic_labels(shape, n)
        ref_repeats = 3 if labels.size < 10**6 else 2
        enc_ref_s, enc_ref = best_time(
            lambda labels=labels: encode_labels_reference(labels), ref_repeats, warmup=False
        )
        enc_kit_s, enc_kit = best_time(lambda labels=labels: encode_labels(labels), 20)
        rles = list(enc_kit.values())
        dec_ref_s, dec_ref = best_time(
            lambda rles=rles, shape=shape: decode_labels_reference(rles, shape), ref_repeats, warmup=False
        )
        dec_kit_s, dec_kit = best_time(lambda rles=rles, shape=shape: decode_labels(rles, shape), 20)
        enc_ref_ms, enc_kit_ms, dec_ref_ms, dec_kit_ms = (
            1e3 * t for t in (enc_ref_s, enc_kit_s, dec_ref_s, dec_kit_s)
        )
        n_runs = sum(len(r.split()) // 2 for r in rles)
        enc_check = "OK" if enc_kit == enc_ref else "MISMATCH"
        dec_check = "OK" if np.array_equal(dec_kit, dec_ref) else "MISMATCH"
        print(
            f"{f'{shape[0]}x{shape[1]}':>10} {len(enc_kit):>6} {n_runs:>6} | {enc_ref_ms:>13.1f} {enc_kit_ms:>7.2f}"
            f" {enc_ref_ms / enc_kit_ms:>5.0f}x {enc_check:>8} | {dec_ref_ms:>13.1f} {dec_kit_ms:>7.2f}"
            f" {dec_ref_ms / dec_kit_ms:>5.0f}x {dec_check:>8}"
        )
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
