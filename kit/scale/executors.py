"""Where blocks and images run: in this process, or on a Dask cluster.

Both executors have one method, `map(fn, items, model=...)`, which yields `(item, fn(model, item))` as
results arrive (any order), so the caller writes each result as soon as it is made and holds no more
than a few at a time:

- `InProcess`: a plain loop (small jobs, and the reference the Dask runs are compared with);
- `DaskExecutor`: tasks on a `dask.distributed` cluster, a `LocalCluster` of `workers` processes by
  default (`open_executor(workers=N)`) or any running scheduler (`open_executor(scheduler=ADDRESS)`: one
  started with `dask scheduler` / `dask worker`, dask-jobqueue on SLURM, Kubernetes...). At most
  `2 × workers` tasks are in flight, so memory stays flat however many items there are.

The model is sent to each worker once, as a worker plugin: every worker (including one the cluster
starts later to replace a dead one) unpickles it when it joins and keeps it for all its tasks. A worker
that dies (killed, out of memory) has its tasks rescheduled by the scheduler on the other workers
(`distributed.scheduler.allowed-failures` times), so the run completes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from kit.errors import ConfigError


class Executor(Protocol):
    """Runs `fn(model, item)` (or `fn(item)` without a model) for every item; yields (item, result)."""

    workers: int

    def map(self, fn: Callable, items: Iterable[Any], *, model: Any = None) -> Iterator[tuple[Any, Any]]: ...


class InProcess:
    """Everything in this process, one item after the other."""

    workers = 1

    def map(self, fn: Callable, items: Iterable[Any], *, model: Any = None) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, (fn(item) if model is None else fn(model, item))


@contextlib.contextmanager
def open_executor(workers: int | None = None, scheduler: str | None = None) -> Iterator[Executor]:
    """An executor for `--workers N` / `--scheduler ADDRESS`: in-process when neither is given, a
    `LocalCluster` of N single-threaded worker processes (torch using cores / N threads each), or the
    running cluster at ADDRESS. ConfigError when the scheduler cannot be reached."""
    if scheduler is None and workers is None:
        yield InProcess()
        return
    if scheduler is not None and workers is not None:
        raise ConfigError(
            "give --workers N (a local cluster) or --scheduler ADDRESS (a running one), not both"
        )
    from distributed import Client, LocalCluster

    from kit.scale.cluster import DaskExecutor

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        cluster = None
    else:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        threads = max(1, (os.cpu_count() or 1) // workers)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        )
        client = Client(cluster)
    executor = DaskExecutor(client)
    try:
        yield executor
    finally:
        executor.close()
        client.close()
        if cluster is not None:
            cluster.close()
