"""MLflow, the system of record: store location, run lifecycle with standard tags, finding runs.

Default store: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/<experiment id>/` (relative to
the working directory); `MLFLOW_TRACKING_URI` overrides it (a shared tracking server for a team). Stages use this
module; building blocks never do. The tags and roles stages use to find each other are in
`kit.tracking.schema`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from kit import __version__
from kit.errors import RunNotFoundError, StopRun

STORE_DIR = Path("mlruns")
TAG_PREFIX = "kit."
EXPERIMENT_TAG = f"{TAG_PREFIX}experiment"
HOST_TAG = f"{TAG_PREFIX}host"
PID_TAG = f"{TAG_PREFIX}pid"
PROCESS_START_TAG = f"{TAG_PREFIX}process_start"
HEARTBEAT_TAG = f"{TAG_PREFIX}heartbeat"
HEARTBEAT_SECONDS = 30.0
"""A running run's process sets `kit.heartbeat` (unix seconds) this often."""
STALE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
"""A RUNNING run of another host whose heartbeat is older than this is presumed dead (`is_stale`)."""
TRACKED_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "segmentation-models-pytorch",
    "albumentations",
    "lightgbm",
    "mlflow",
    "numpy",
    "numba",
    "scikit-image",
)


def tracking_uri() -> str:
    """The MLflow tracking URI in force: `$MLFLOW_TRACKING_URI` or the project's SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def _is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:///") and os.environ.get("MLFLOW_TRACKING_URI") is None


log = logging.getLogger(__name__)
_READY_STORES: set[str] = set()


def _prepare_sqlite_store(uri: str, mlflow: Any) -> None:
    """Create or migrate a SQLite store while holding a lock file next to it, once per process.

    MLflow builds a new store by running its schema migrations; two processes doing that at once (two
    `kit train` in a fresh project) break each other's migrations. Once the schema is in place, SQLite's
    own locking (MLflow waits up to 20 s for a busy database) is enough for concurrent writers.
    """
    if uri in _READY_STORES or not uri.startswith("sqlite:///"):
        return
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(f"{db}.lock", timeout=600)
        lock.acquire()
    except OSError as exc:  # a read-only folder: nobody can be creating the store there either
        log.debug("no lock file next to %s (%s)", db, exc)
        lock = None
    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    finally:
        if lock is not None:
            lock.release()
    _READY_STORES.add(uri)


def configure() -> Any:
    """Point MLflow at the store (creating `mlruns/` for the local default) and return the mlflow module."""
    import logging

    import mlflow

    uri = tracking_uri()
    if _is_local_store(uri):
        STORE_DIR.mkdir(parents=True, exist_ok=True)
    # Alembic logs every schema migration at INFO when a new SQLite store is created.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    user_value = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user_value is None:
        # MLflow exports the URI to the environment; kit derives it from the working directory on every
        # call, so leave the environment as the user set it (else a later chdir would keep the old store).
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    _prepare_sqlite_store(uri, mlflow)
    return mlflow


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""What every kit experiment is to the MLflow UI: model training, so it opens on the runs table (not the
GenAI view of traces it guesses for an experiment that does not say)."""


def ensure_experiment(name: str) -> str:
    """Return the id of MLflow experiment `name`, creating it (artifacts under `mlruns/`) if needed, and
    marked as a model-training experiment (`EXPERIMENT_KIND`)."""
    mlflow = configure()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            experiment_id = client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # a concurrent creator may have won the race
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
        else:
            return experiment_id
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older kit, or by hand
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_state() -> dict[str, Any]:
    """Commit, dirty flag and diff of the working tree (empty when not in a git repository)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    dirty = bool(status.strip())
    return {
        "commit": commit.strip(),
        "dirty": dirty,
        "diff": (_git("diff", "HEAD") or "") if dirty else "",
    }


def package_versions() -> dict[str, str]:
    """Versions of the libraries that decide results."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_description() -> str:
    """'cuda:<name>' when a GPU is visible to torch (already imported), else 'cpu'."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def standard_tags(experiment: str, command: str) -> dict[str, str]:
    """Tags every kit run carries: experiment, command, git state, versions, host and device."""
    tags = {
        EXPERIMENT_TAG: experiment,
        f"{TAG_PREFIX}command": command,
        f"{TAG_PREFIX}version": __version__,
        HOST_TAG: socket.gethostname(),
        f"{TAG_PREFIX}python": platform.python_version(),
        f"{TAG_PREFIX}device": device_description(),
    }
    git = git_state()
    if git:
        tags[f"{TAG_PREFIX}git_commit"] = git["commit"]
        tags[f"{TAG_PREFIX}git_dirty"] = str(git["dirty"]).lower()
        tags["mlflow.source.git.commit"] = git["commit"]
    for name, version in package_versions().items():
        tags[f"{TAG_PREFIX}pkg.{name}"] = version
    return tags


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


def liveness_tags() -> dict[str, str]:
    """Tags that let `is_live` / `is_stale` tell a running run from one whose process died."""
    pid = os.getpid()
    tags = {PID_TAG: str(pid), HEARTBEAT_TAG: str(int(time.time()))}
    start = _process_start(pid)
    if start is not None:
        tags[PROCESS_START_TAG] = start
    return tags


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start  # a reused pid started later


def _liveness(run: Any, now: float | None = None) -> bool | None:
    """Whether a RUNNING run's process is alive: True, False, or None when it cannot be told (runs
    made before kit recorded liveness). On this host the process id decides; elsewhere the heartbeat."""
    tags = run.data.tags
    if tags.get(PID_TAG, "").isdigit() and tags.get(HOST_TAG) == socket.gethostname():
        return _process_alive(int(tags[PID_TAG]), tags.get(PROCESS_START_TAG))
    beat = tags.get(HEARTBEAT_TAG, "")
    if beat.isdigit():
        return (now or time.time()) - int(beat) <= STALE_AFTER_SECONDS
    return None


def is_stale(run: Any) -> bool:
    """A RUNNING run whose process is gone (killed, crashed, machine lost): it will never finish."""
    return run.info.status == "RUNNING" and _liveness(run) is False


def is_live(run: Any) -> bool:
    """A RUNNING run whose process is known to be alive (so nobody else should resume it)."""
    return run.info.status == "RUNNING" and _liveness(run) is True


def status_text(run: Any) -> str:
    """The run's status for people: "RUNNING (stale?)" for a RUNNING run whose process is gone."""
    return "RUNNING (stale?)" if is_stale(run) else run.info.status


class _Heartbeat:
    """Sets the heartbeat tag of a run every `HEARTBEAT_SECONDS` from a daemon thread until stopped."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"kit-heartbeat-{run_id[:8]}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.uri)
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception as exc:  # a missed beat is not worth failing the run
                log.debug("heartbeat of run %s failed: %s", self.run_id, exc)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


@contextlib.contextmanager
def start_run(
    experiment: str,
    command: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    started_at: float | None = None,
) -> Iterator[Any]:
    """Start (or, with `run_id`, resume) an MLflow run carrying the standard tags.

    `started_at` (unix seconds) dates the run's start back to when its work began, for a stage that
    opens its run only to record work already done: the run's duration then spans the work.

    The run ends FINISHED on success, FAILED on an exception and KILLED on Ctrl-C or `StopRun` (work
    stopped on purpose, such as a pruned search trial). When the working tree
    is dirty, its `git diff` is logged as `git_diff.patch` so the run can be reproduced. While it runs,
    its process id and a heartbeat are in its tags, so a run whose process was killed shows as stale
    (`is_stale`) instead of running forever.
    """
    mlflow = configure()
    experiment_id = ensure_experiment(experiment)
    all_tags = standard_tags(experiment, command)
    all_tags.update(liveness_tags())
    all_tags.update(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags[f"{TAG_PREFIX}parent_run_id"] = parent_run_id
    nested = mlflow.active_run() is not None
    if run_id:
        run = mlflow.start_run(run_id=run_id, nested=nested)
        mlflow.set_tags({k: v for k, v in all_tags.items() if k != "mlflow.parentRunId"})
    elif started_at is not None:
        created = mlflow.MlflowClient().create_run(
            experiment_id, start_time=int(started_at * 1000), tags=all_tags, run_name=run_name
        )
        run = mlflow.start_run(run_id=created.info.run_id, nested=nested)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags, nested=nested)
    heartbeat = _Heartbeat(tracking_uri(), run.info.run_id)
    status = "FAILED"
    try:
        git = git_state()
        if git.get("dirty") and git.get("diff"):
            mlflow.log_text(git["diff"], "git_diff.patch")
        yield run
        status = "FINISHED"
    except (KeyboardInterrupt, StopRun):
        status = "KILLED"
        raise
    finally:
        heartbeat.stop()
        mlflow.end_run(status=status)


def log_dataset(manifest_path: str | os.PathLike, name: str, context: str = "training") -> str:
    """Log a dataset's manifest as an MLflow dataset input of the active run; return its digest.

    The digest (sha256 of manifest.csv, which holds every image's and mask's sha256) versions the data;
    it is also set as the tag `kit.dataset_digest`.
    """
    import mlflow
    import pandas as pd

    from kit.fileio import sha256_file

    manifest_path = Path(manifest_path)
    digest = sha256_file(manifest_path)
    frame = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    with warnings.catch_warnings():
        # A local folder matches two equivalent MLflow source types; MLflow warns and picks one.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            frame, source=str(manifest_path.parent.resolve()), name=name, digest=digest[:16]
        )
    mlflow.log_input(dataset, context=context)
    mlflow.set_tags({f"{TAG_PREFIX}dataset": name, f"{TAG_PREFIX}dataset_digest": digest})
    return digest


def find_runs(
    experiment: str,
    *,
    tags: Mapping[str, str] | None = None,
    status: str | None = "FINISHED",
    max_results: int = 1000,
) -> list[Any]:
    """Runs of MLflow experiment `experiment` matching `tags` (and `status`), newest first."""
    exp = configure().MlflowClient().get_experiment_by_name(experiment)
    if exp is None:
        return []
    return find_runs_in(exp.experiment_id, tags=tags, status=status, max_results=max_results)


def find_runs_in(
    experiment_ids: str | list[str],
    *,
    tags: Mapping[str, str] | None = None,
    status: str | None = "FINISHED",
    max_results: int = 1000,
) -> list[Any]:
    """Runs of the experiments with these ids matching `tags` (and `status`), newest first."""
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    clauses = [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    if status:
        clauses.append(f"attributes.status = '{status}'")
    return (
        configure()
        .MlflowClient()
        .search_runs(
            ids,
            filter_string=" and ".join(clauses),
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        )
    )


def latest_run(
    experiment: str, *, tags: Mapping[str, str] | None = None, status: str | None = "FINISHED"
) -> Any:
    """The newest run matching `tags`, or RunNotFoundError saying what was looked for."""
    runs = find_runs(experiment, tags=tags, status=status, max_results=1)
    if not runs:
        wanted = ", ".join(f"{k}={v}" for k, v in (tags or {}).items()) or "any"
        state = f"{status.lower()} " if status else ""
        raise RunNotFoundError(
            f"no {state}run of experiment '{experiment}' with {wanted} in {tracking_uri()}; "
            f"run the stage that produces it first (see `kit runs`)"
        )
    return runs[0]
