"""Small shared test helpers: a tiny synthetic dataset, fast training overrides, a project folder."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

FAST_OVERRIDES = ["training.epochs=2", "training.max_steps_per_epoch=2", "data.crop_size=64"]
"""unet_tiny overrides that make a fold train in about a second on a CPU."""


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
        yield path
