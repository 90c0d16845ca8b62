"""Small shared test helpers: a tiny synthetic dataset, fast training overrides, a project folder, the
session's trained tiny U-Net and copies of its project."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

FAST_OVERRIDES = ["training.epochs=2", "training.max_steps_per_epoch=2", "data.crop_size=64"]
"""unet_tiny overrides that make a fold train in about a second on a CPU."""

SESSION_OVERRIDES = [
    "training.epochs=2",
    "training.max_steps_per_epoch=15",
    "data.samples_per_epoch=60",
    "data.crop_size=64",
    "training.lr=0.01",
]
"""unet_tiny overrides of the session's shared model (`trained_project`): long enough (2 epochs × 15
steps per fold) that it finds nuclei in the tiny synthetic images, so equality tests on its label images
compare something."""

NO_MODEL = "tracking.log_model=false"
"""For tests that train only to check training: no MLflow Model logged at the end (about a second)."""


def write_tiny_synthetic(root: Path) -> Path:
    """12 synthetic 96×96 images (8 train in 2 folds, 4 test) written as a kit dataset at `root`."""
    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic

    samples = generate_synthetic(n=12, seed=0, size=(96, 96))
    return write_dataset(
        samples, root, name="synthetic", kind="synthetic", source="tests", k_folds=2, progress=False
    )


def install_dataset(source: Path, project: Path) -> Path:
    """Copy the dataset folder `source` to `project`/data/synthetic (the unet_tiny data.root)."""
    target = project / "data" / "synthetic"
    shutil.copytree(source, target)
    return target


_EMPTY_STORE: list[Path] = []


def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow SQLite store (made once per test session): creating one runs all
    of MLflow's schema migrations, which takes seconds on a busy machine."""
    if not _EMPTY_STORE:
        folder = tmp_path_factory.mktemp("empty-store")
        with inside_project(folder):
            from kit import tracking

            tracking.configure().MlflowClient().search_experiments()
        _EMPTY_STORE.append(folder / "mlruns" / "mlflow.db")
    return _EMPTY_STORE[0]


def seed_mlflow_store(project: Path, store: Path) -> Path:
    """Give `project` a copy of the empty store at ./mlruns/mlflow.db (kit's default store). Artifact
    locations are not in it: new experiments still keep their artifacts under `project`/mlruns/."""
    target = project / "mlruns" / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store, target)
    return project


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: these models are tiny, and on a busy 2-core machine two spinning
    OpenMP threads are up to 10× slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def inside_project(path: Path) -> Iterator[Path]:
    """Like conftest's `project_dir` for module-scoped fixtures: `path` with experiments/ as the working
    directory and its own MLflow store (./mlruns), restored on exit."""
    if not (path / "experiments").exists():
        shutil.copytree(REPO_ROOT / "experiments", path / "experiments")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(path)
        forget_artifact_locations()
        try:
            yield path
        finally:
            forget_artifact_locations()


# --------------------------------------------------------------------------------------------------
# the session model: unet_tiny trained once per test session (conftest's `trained_project`)


@dataclass(frozen=True)
class TrainedProject:
    """A project folder (experiments/, data/synthetic, mlruns/ with its SQLite store and artifacts) holding
    one finished 2-fold unet_tiny train run (SESSION_OVERRIDES): `config` and `outcome` of it."""

    root: Path
    config: Any  # kit.config.ExperimentConfig
    outcome: Any  # kit.stages.train.TrainOutcome


def train_tiny_project(root: Path, dataset: Path, store: Path) -> TrainedProject:
    """Train unet_tiny (SESSION_OVERRIDES, folds 0 and 1) on a copy of `dataset` in project folder `root`,
    whose MLflow store starts as a copy of the empty `store`."""
    from kit.config import load_experiment
    from kit.stages.train import train_experiment

    seed_mlflow_store(root, store)
    install_dataset(dataset, root)
    with inside_project(root), one_torch_thread():
        cfg = load_experiment("unet_tiny", SESSION_OVERRIDES)
        outcome = train_experiment(cfg, folds=[0, 1], progress=False)
    return TrainedProject(root, cfg, outcome)


def copy_project(source: Path, target: Path) -> Path:
    """Copy the project folder `source` (data, experiments, MLflow store with its artifacts) to `target`,
    a path that does not exist yet, for a test that adds runs or files to it.

    MLflow keeps absolute artifact locations in the SQLite store; they are rewritten to point into the
    copy, so that the copy's runs read, and new runs write, `target`'s artifacts only."""
    source, target = Path(source).resolve(), Path(target).resolve()
    shutil.copytree(source, target)
    relocate_store(target / "mlruns" / "mlflow.db", source, target)
    forget_artifact_locations()
    return target


def forget_artifact_locations() -> None:
    """Empty MLflow's process-wide cache of artifact locations by run id. A copied project has the same
    run ids as its original, so without this the copy's new artifacts for an old run (e.g. the tuned
    post-processing that predict --oof adds to a train run) would land in whichever project that run was
    first seen in. conftest does this before every test; `inside_project` on entry and exit."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")  # not imported: nothing cached
    if utils is not None:
        utils._artifact_repos_cache.clear()


def relocate_store(db: Path, old: Path, new: Path) -> int:
    """Replace the folder `old` by `new` in every text value of the SQLite store `db` (artifact
    locations of experiments, runs and logged models; anything else that names it). Returns the number
    of values changed."""
    before, after = f"{old}/", f"{new}/"
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in conn.execute(f'PRAGMA table_info("{table}")'):
                if not any(t in kind.upper() for t in ("CHAR", "TEXT", "CLOB")):
                    continue
                changed += conn.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                    (before, after, before),
                ).rowcount
    return changed


def copy_trained(trained: TrainedProject, target: Path) -> TrainedProject:
    """`trained` copied to `target` (see `copy_project`): same runs, same run ids, its own store."""
    return TrainedProject(copy_project(trained.root, target), trained.config, trained.outcome)


def project_fingerprint(root: Path) -> tuple[str, tuple[str, ...]]:
    """The SHA-256 of the project's MLflow store and the list of all its files: unchanged as long as
    nothing writes to the project."""
    files = tuple(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))
    return sha256(root / "mlruns" / "mlflow.db"), files


def predicted_labels(run: Any) -> tuple[Any, dict[str, Any]]:
    """(predictions.csv, image id → label image) of a predict run, read from its artifacts."""
    from kit.inference.artifacts import read_predicted_labels
    from kit.tracking.schema import run_folder

    return read_predicted_labels(run_folder(run))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (never a fixed one: tests run side by side)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# a PostgreSQL server of a test's own (the study storage of `kit tune` on PostgreSQL)


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (the newest version installed), or of the
    `initdb` on the PATH; None when there is neither."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


@contextlib.contextmanager
def postgres_server(bin_dir: Path) -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 and a free port, its cluster made by initdb in a temporary folder
    (trust authentication, user `kit`), stopped and removed on exit; yields the URL of its `postgres`
    database. As root (CI), the server runs as the `postgres` user of the Debian package: initdb and
    postgres refuse to run as root."""
    import pwd

    folder = Path(tempfile.mkdtemp(prefix="kit-pg-"))
    user: dict[str, int] = {}
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        user = {"user": account.pw_uid, "group": account.pw_gid}
    port = free_port()
    data = folder / "data"
    run: dict[str, Any] = {"check": True, "capture_output": True, "timeout": 120, "cwd": folder, **user}
    try:
        subprocess.run([bin_dir / "initdb", "-D", data, "-U", "kit", "--auth=trust", "-E", "UTF8"], **run)
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start"], **run
        )
        yield f"postgresql://kit@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], **{**run, "check": False}
            )
        shutil.rmtree(folder, ignore_errors=True)
