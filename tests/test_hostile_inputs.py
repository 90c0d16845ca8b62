"""The hostile-input corpus (tests/corpus/cases.yaml): each bad input is one line naming the file (and row)
and exit code 1, never a traceback, nothing half-written and no run recorded; each merely unusual input
works and gives what its case says it produces."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import inside_project, one_torch_thread, sha256
from typer.testing import CliRunner

from kit.cli import app

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())
GOOD_MASKS = ("masks/a.png", "masks/b.png")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained unet_tiny checkpoint: enough for `kit predict --model` to read and predict images."""
    from kit.config import load_experiment
    from kit.models import build_model
    from kit.models.checkpoint import save_checkpoint

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


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (MLflow's artifacts included) with the SHA-256 of its content, but the
    SQLite store itself, whose runs `_run_ids` compares."""
    return {
        str(p.relative_to(root)): sha256(p)
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("mlflow.db", "mlflow.db.lock")
    }


def _run_ids() -> set[str]:
    """Every run in the project's MLflow store, of any status."""
    from kit import tracking

    client = tracking.configure().MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(ids, run_view_type=3)} if ids else set()


def _check_produced(produces: dict, project: Path) -> None:
    """What an `ok` case made is there (see cases.yaml)."""
    import json

    import pandas as pd

    assert produces, "an ok case must say what it produces"
    if "manifest" in produces:
        [manifest] = project.glob("data/*/manifest.csv")
        rows = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("id")
        for image_id, columns in produces["manifest"].items():
            for column, value in columns.items():
                got = rows.loc[image_id, column]
                assert got.startswith(value) if isinstance(value, str) else got == str(value), (
                    image_id,
                    column,
                    got,
                )
    if "predictions" in produces:
        from helpers import predicted_labels

        from kit.tracking.schema import find_predict_run

        index, labels = predicted_labels(find_predict_run("predictions", "input"))
        assert set(index["image_id"]) == set(produces["predictions"])
        for image_id, size in produces["predictions"].items():
            assert labels[image_id].shape == (size["height"], size["width"])
    if "score" in produces:
        summary = json.loads((project / "out" / "summary.json").read_text())
        for key, value in produces["score"].items():
            assert summary[key] == value, (key, summary[key])


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
    before, runs_before = _snapshot(project), _run_ids()

    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})

    if case["expect"] == "ok":
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        assert "Traceback" not in result.output
        _check_produced(case.get("produces", {}), project)
        return
    line = _error_line(result)
    for fragment in case["says"]:
        assert fragment.format(**values) in line, line
    assert _snapshot(project) == before  # nothing half-written
    assert _run_ids() == runs_before  # no run recorded, of any status
