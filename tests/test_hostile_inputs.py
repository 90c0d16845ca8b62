"""The hostile-input corpus (tests/corpus/cases.yaml): each bad input is one line naming the file (and row)
and exit code 1, never a traceback, and nothing half-written; each merely unusual input just works."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import inside_project, one_torch_thread
from typer.testing import CliRunner

from kit.cli import app

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())
GOOD_MASKS = ("masks/a.png", "masks/b.png")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained unet_tiny checkpoint: enough for `kit predict --model` to read and predict images."""
    from kit.config import load_experiment
    from kit.models.checkpoint import save_checkpoint
    from kit.training.trainer import build_model

    folder = tmp_path_factory.mktemp("model")
    with inside_project(folder), one_torch_thread():
        cfg = load_experiment("unet_tiny")
        path = save_checkpoint(folder / "tiny.pt", build_model(cfg), cfg.to_dict(), {"epoch": 0})
    return Path(path)


def _build_stage(root: Path, spec: dict, file_kind: str | None) -> tuple[Path, Path]:
    """stage1_train/ with img0 made of the corpus files in `spec` and two good images; (stage, {file})."""
    stage = root / "dsb" / "stage1_train"
    samples = {
        "img0": (spec["image"], spec.get("masks", GOOD_MASKS)),
        "img1": ("images/ok.png", GOOD_MASKS),
        "img2": ("images/ok.png", GOOD_MASKS[:1]),
    }
    hostile = None
    for image_id, (image, masks) in samples.items():
        image_path = stage / image_id / "images" / f"{image_id}{Path(image).suffix}"
        image_path.parent.mkdir(parents=True)
        shutil.copyfile(CORPUS / image, image_path)
        mask_dir = stage / image_id / "masks"
        mask_dir.mkdir()
        for k, mask in enumerate(masks, start=1):
            shutil.copyfile(CORPUS / mask, mask_dir / f"{image_id}_{k}.png")
        if image_id == "img0":
            hostile = mask_dir / f"{image_id}_1.png" if file_kind == "mask" else image_path
    assert hostile is not None
    return stage, hostile


def _snapshot(root: Path) -> dict[str, int]:
    """Every file under `root` but the MLflow store, with its size."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != "mlruns"
    }


def _run_statuses() -> list[str]:
    from kit import tracking

    client = tracking.configure().MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.status for r in client.search_runs(ids)] if ids else []


def _error_line(result) -> str:
    assert result.exit_code == 1, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [k for k, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == len(lines) - 1, result.stderr
    assert all("/s]" in line or "it]" in line for line in lines[:-1]), result.stderr  # progress bars only
    return lines[-1]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_hostile_input(case: dict, project: Path, checkpoint: Path) -> None:
    values = {"corpus": str(CORPUS), "model": str(checkpoint)}
    if "stage" in case:
        stage, hostile = _build_stage(project, case["stage"], case.get("file"))
        values.update(stage=str(stage), file=str(hostile))
    if "input" in case:
        folder = project / "in"
        folder.mkdir()
        hostile = folder / Path(case["input"]).name
        shutil.copyfile(CORPUS / case["input"], hostile)
        values.update(input=str(folder), file=str(hostile))
    args = [str(a).format(**values) for a in case["args"]]
    before, runs_before = _snapshot(project), _run_statuses()

    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})

    if case["expect"] == "ok":
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        assert "Traceback" not in result.output
        return
    line = _error_line(result)
    for fragment in case["says"]:
        assert fragment.format(**values) in line, line
    assert _snapshot(project) == before  # nothing half-written
    leftover = _run_statuses()
    assert "RUNNING" not in leftover and leftover.count("FINISHED") == runs_before.count("FINISHED")
