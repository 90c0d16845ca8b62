"""Test setup: offline hubs, headless plots, a private MLflow store per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project folder as the working directory: the repo's experiments/, a private MLflow store."""
    import shutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copytree(REPO_ROOT / "experiments", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tests run tiny models: one torch thread is faster than two spinning on a busy 2-core machine."""
    from helpers import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def synthetic_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic dataset (8 train images in 2 folds, 4 test), written once per module; copy it
    before changing it."""
    from helpers import write_tiny_synthetic

    return write_tiny_synthetic(tmp_path_factory.mktemp("src") / "synthetic")


@pytest.fixture
def project(project_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """project_dir with an initialised, empty MLflow store."""
    from helpers import empty_mlflow_store, seed_mlflow_store

    return seed_mlflow_store(project_dir, empty_mlflow_store(tmp_path_factory))
