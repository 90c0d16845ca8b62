"""The import contracts of pyproject.toml ([tool.importlinter], run by .ci/run) pass on kit as it is and
fail when a building block imports a stage or MLflow, inference imports training code, or a stage imports
another stage: checked on a copy of the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture
def kit_copy(tmp_path: Path) -> Path:
    """A copy of the kit package and of pyproject.toml (the contracts) in `tmp_path`."""
    shutil.copytree(REPO_ROOT / "kit", tmp_path / "kit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the kit package under `root` (first on the path), with `root`'s contracts."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _append(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}\n")


def test_contracts_pass_on_kit_as_it_is(kit_copy: Path) -> None:
    result = lint_imports(kit_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 5 kept, 0 broken." in result.stdout


def test_a_building_block_importing_a_stage_breaks_the_layers(kit_copy: Path) -> None:
    _append(kit_copy / "kit" / "metrics" / "dsb.py", "import kit.stages.train  # noqa")
    result = lint_imports(kit_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "modules BROKEN" in result.stdout  # the layers contract's name ends "… base modules"
    assert "kit.metrics is not allowed to import kit.stages" in result.stdout
    assert "- kit.metrics.dsb -> kit.stages.train" in result.stdout
    # Through the stage, metrics (and the blocks that use it, inference among them) now reach MLflow
    # and training code, and a cycle is closed.
    assert "kit.metrics is not allowed to import mlflow" in result.stdout
    assert "kit.inference is not allowed to import kit.training" in result.stdout
    assert "- .metrics -> .stages (1 import)" in result.stdout
    assert "Contracts: 0 kept, 5 broken." in result.stdout  # through metrics, stages now reach each other


def test_forbidden_imports_mlflow_tracking_and_training_code_for_inference(kit_copy: Path) -> None:
    _append(kit_copy / "kit" / "data" / "folds.py", "import mlflow  # noqa")
    _append(kit_copy / "kit" / "models" / "registry.py", "from kit.tracking import store  # noqa")
    _append(kit_copy / "kit" / "inference" / "tiling.py", "from kit.training import losses  # noqa")
    result = lint_imports(kit_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Building blocks never touch MLflow: only stages record runs BROKEN" in result.stdout
    assert "kit.data is not allowed to import mlflow" in result.stdout
    assert "kit.data.folds -> mlflow" in result.stdout
    assert "kit.models.registry -> kit.tracking.store" in result.stdout
    assert "A trained model loads and predicts without training code BROKEN" in result.stdout
    assert "kit.inference.tiling -> kit.training.losses" in result.stdout
    # training → inference was already there: inference → training also closes a cycle.
    assert "- .inference -> .training (1 import)" in result.stdout
    assert "Contracts: 2 kept, 3 broken." in result.stdout  # the layers and stages are still kept


def test_a_stage_importing_another_stage_breaks_their_independence(kit_copy: Path) -> None:
    _append(
        kit_copy / "kit" / "stages" / "evaluate.py",
        "from kit.stages.predict import predict_experiment  # noqa",
    )
    result = lint_imports(kit_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Stages never import each other" in result.stdout and "BROKEN" in result.stdout
    assert "kit.stages.evaluate is not allowed to import kit.stages.predict" in result.stdout
    assert "Contracts: 4 kept, 1 broken." in result.stdout
