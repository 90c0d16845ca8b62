"""MLflow, the system of record: store location, run lifecycle with standard tags, finding runs.

Default store: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/<experiment id>/` (relative to
the working directory); `MLFLOW_TRACKING_URI` overrides it (a shared tracking server for a team). Stages use this
module; building blocks never do. The tags and roles stages use to find each other are in
`kit.tracking.schema`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from kit import __version__
from kit.errors import RunNotFoundError

STORE_DIR = Path("mlruns")
TAG_PREFIX = "kit."
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
    return mlflow


def ensure_experiment(name: str) -> str:
    """Return the id of MLflow experiment `name`, creating it (artifacts under `mlruns/`) if needed."""
    mlflow = configure()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # a concurrent creator may have won the race
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
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
        f"{TAG_PREFIX}experiment": experiment,
        f"{TAG_PREFIX}command": command,
        f"{TAG_PREFIX}version": __version__,
        f"{TAG_PREFIX}host": socket.gethostname(),
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


@contextlib.contextmanager
def start_run(
    experiment: str,
    command: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Start (or, with `run_id`, resume) an MLflow run carrying the standard tags.

    The run ends FINISHED on success, FAILED on an exception and KILLED on Ctrl-C. When the working tree
    is dirty, its `git diff` is logged as `git_diff.patch` so the run can be reproduced.
    """
    mlflow = configure()
    experiment_id = ensure_experiment(experiment)
    all_tags = standard_tags(experiment, command)
    all_tags.update(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags[f"{TAG_PREFIX}parent_run_id"] = parent_run_id
    nested = mlflow.active_run() is not None
    if run_id:
        run = mlflow.start_run(run_id=run_id, nested=nested)
        mlflow.set_tags({k: v for k, v in all_tags.items() if k != "mlflow.parentRunId"})
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags, nested=nested)
    try:
        git = git_state()
        if git.get("dirty") and git.get("diff"):
            mlflow.log_text(git["diff"], "git_diff.patch")
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


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
