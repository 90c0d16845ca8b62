"""Timing shared by the benchmarks: best wall time of repeated calls, measured in one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def best_time(fn: Callable[[], T], repeats: int, *, warmup: bool = True) -> tuple[float, T]:
    """(best wall time in seconds over `repeats` calls of `fn`, the last result); one untimed call first
    when `warmup` (JIT compilation, caches)."""
    if warmup:
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result
