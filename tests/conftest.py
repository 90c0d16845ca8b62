"""Test setup: offline hubs, headless plots, a private MLflow store per test session, one trained tiny
U-Net per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")
# pytest-xdist's workers inherit COLUMNS from the controller's terminal; rich's Console, created when kit's
# commands are imported, would then fix its width for the whole session, whatever width a test asks for.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

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


@pytest.fixture(autouse=True)
def _fresh_artifact_locations():
    """Each test finds its runs' artifacts in its own project (see helpers.forget_artifact_locations)."""
    from helpers import forget_artifact_locations

    forget_artifact_locations()


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


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory):
    """unet_tiny trained once per test session (2 folds × 2 epochs × 15 steps on the tiny synthetic set: it finds
    nuclei, see `helpers.SESSION_OVERRIDES`)
    in its own project folder: a `helpers.TrainedProject` (root, config, outcome).

    Read only: a test that adds runs or files works on a copy (`trained_copy`, or `helpers.copy_trained`
    for a module-scoped one). Checked when the session ends."""
    from helpers import empty_mlflow_store, project_fingerprint, train_tiny_project, write_tiny_synthetic

    dataset = write_tiny_synthetic(tmp_path_factory.mktemp("session-src") / "synthetic")
    trained = train_tiny_project(
        tmp_path_factory.mktemp("session-trained"), dataset, empty_mlflow_store(tmp_path_factory)
    )
    before = project_fingerprint(trained.root)
    yield trained
    assert project_fingerprint(trained.root) == before, (
        f"a test wrote to the session's trained project {trained.root}; give it a copy (trained_copy)"
    )


@pytest.fixture
def in_trained_project(trained_project, monkeypatch: pytest.MonkeyPatch):
    """Work inside the session's trained project (its MLflow store) for one test, reading only."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(trained_project.root)
    return trained_project


@pytest.fixture
def trained_copy(trained_project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private copy of the session's trained project as the working directory, to add runs to."""
    from helpers import copy_trained

    copy = copy_trained(trained_project, tmp_path / "trained")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(copy.root)
    return copy
