"""The Dask side of `kit.scale.executors`: `DaskExecutor` and the worker plugin that carries the model
(imported only when a cluster is used: importing `distributed` takes a second)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import pickle
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cloudpickle
from distributed import KilledWorker, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from kit.errors import KitError

log = logging.getLogger(__name__)


class ModelPlugin(WorkerPlugin):
    """A worker plugin that carries a pickled model and unpickles it once per worker (`setup`)."""

    idempotent = False

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self.payload = cloudpickle.dumps(model)
        self.model: Any = None

    def setup(self, worker: Any) -> None:
        self.model = pickle.loads(self.payload)
        log.info("worker %s loaded model %s", getattr(worker, "address", "?"), self.name)

    def teardown(self, worker: Any) -> None:
        self.model = None

    def __getstate__(self) -> dict:
        return {"name": self.name, "payload": self.payload, "model": None}


def _run_task(fn: Callable, plugin: str | None, item: Any) -> Any:
    """Runs on a worker: `fn(model, item)` with the model of worker plugin `plugin`, or `fn(item)`."""
    if plugin is None:
        return fn(item)
    return fn(get_worker().plugins[plugin].model, item)


def _name(item: Any) -> str:
    """How an error names a task's item: an image's file, a block's index, else the item itself."""
    for attribute in ("source", "index"):
        if hasattr(item, attribute):
            return f"{attribute} {getattr(item, attribute)}"
    return repr(item)[:80]


class DaskExecutor:
    """Tasks on the cluster of `client` (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._plugin: tuple[int, str] | None = None  # (id of the installed model, plugin name)

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def map(self, fn: Callable, items: Iterable[Any], *, model: Any = None) -> Iterator[tuple[Any, Any]]:
        plugin = None if model is None else self._install(model)
        items = iter(items)
        pending: dict[Any, Any] = {}
        done = as_completed()

        def submit(batch: Iterable[Any]) -> None:
            for item in batch:
                future = self.client.submit(_run_task, fn, plugin, item, pure=False)
                pending[future] = item
                done.add(future)

        submit(itertools.islice(items, 2 * self.workers))
        try:
            for future in done:
                item = pending.pop(future)
                try:
                    result = future.result()  # re-raises the task's own exception
                except KilledWorker:
                    raise KitError(
                        f"the Dask workers running {_name(item)} died every time it was "
                        "retried (out of memory? see the worker logs); the run stops"
                    ) from None
                future.release()
                submit(itertools.islice(items, 1))
                yield item, result
        finally:
            if pending:
                self.client.cancel(list(pending))

    def _install(self, model: Any) -> str:
        if self._plugin is not None and self._plugin[0] == id(model):
            return self._plugin[1]
        name = f"kit-model-{uuid.uuid4().hex[:12]}"
        self.client.register_plugin(ModelPlugin(name, model), name=name)
        if self._plugin is not None:
            self.client.unregister_worker_plugin(self._plugin[1])
        self._plugin = (id(model), name)
        return name

    def close(self) -> None:
        if self._plugin is not None:
            with contextlib.suppress(Exception):  # the cluster may already be gone
                self.client.unregister_worker_plugin(self._plugin[1])
            self._plugin = None
