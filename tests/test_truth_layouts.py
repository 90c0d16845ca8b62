"""Truth in the layouts users have (`kit score --truth`: DSB folder or zip, kit dataset, labels CSV) and
small or unannotated DSB folders that import with fewer folds, said in one line."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kit.cli import app

CORPUS = Path(__file__).resolve().parent / "corpus"


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros((24, 24), np.int32)
    mask[r0:r1, c0:c1] = 1
    return mask


# corpus masks/a.png and masks/b.png, as labels 1 and 2
TRUTH = _box(2, 8, 2, 8) + 2 * _box(12, 20, 12, 20)


def dsb_folder(root: Path, n: int, masks: bool = True) -> Path:
    """stage1_train/ with `n` images img0.. (corpus/images/ok.png), each with masks a.png and b.png."""
    stage = root / "stage1_train"
    for i in range(n):
        (stage / f"img{i}" / "images").mkdir(parents=True)
        shutil.copyfile(CORPUS / "images" / "ok.png", stage / f"img{i}" / "images" / f"img{i}.png")
        if masks:
            (stage / f"img{i}" / "masks").mkdir()
            for name in ("a.png", "b.png"):
                shutil.copyfile(CORPUS / "masks" / name, stage / f"img{i}" / "masks" / name)
    return stage


def kit(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def ok(result) -> str:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.stdout


def error_line(result) -> str:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _zip(folder: Path) -> Path:
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(folder.rglob("*")):
            zf.write(file, file.relative_to(folder.parent).as_posix())
    return path


def _labels_csv(path: Path, truth: dict[str, np.ndarray]) -> Path:
    from kit.submission import encode_labels

    rows = []
    for image_id, labels in truth.items():
        for rle in sorted(encode_labels(labels).values(), key=lambda r: int(r.split()[0])):
            rows.append((image_id, rle, *labels.shape))
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "Height", "Width"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("layout", ["dsb-folder", "dsb-zip", "kit-dataset", "labels-csv"])
def test_score_accepts_the_truth_in_every_layout(project_dir: Path, layout: str) -> None:
    from kit.submission import write_submission

    stage = dsb_folder(project_dir, 3)
    truth = {f"img{i}": TRUTH for i in range(3)}
    if layout == "dsb-folder":
        source = stage
    elif layout == "dsb-zip":
        source = _zip(stage)
    elif layout == "kit-dataset":
        ok(kit("data", "import", "dsb2018", stage, "--k", "2"))
        source = project_dir / "data" / "dsb2018"
    else:
        source = _labels_csv(project_dir / "truth.csv", truth)
    perfect = write_submission(project_dir / "perfect.csv", truth)
    missed = write_submission(project_dir / "missed.csv", {**truth, "img1": TRUTH * (TRUTH == 1)})

    summary = json.loads(ok(kit("score", perfect, "--truth", source, "--json", "--no-track")))
    assert summary["n_images"] == 3 and summary["n_true"] == 6 and summary["map"] == 1.0
    summary = json.loads(ok(kit("score", missed, "--truth", source, "--json", "--no-track")))
    assert summary["n_pred"] == 5 and summary["map"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_dsb_truth_without_masks_names_the_image(project_dir: Path) -> None:
    from kit.submission import write_submission

    stage = dsb_folder(project_dir, 2)
    shutil.rmtree(stage / "img1" / "masks")
    sub = write_submission(project_dir / "sub.csv", {"img0": TRUTH, "img1": TRUTH})
    line = error_line(kit("score", sub, "--truth", stage, "--no-track"))
    assert f"{stage / 'img1'}: no masks/ folder, so no truth for image img1" in line

    line = error_line(kit("score", sub, "--truth", project_dir / "experiments", "--no-track"))
    assert "truth must be a labels CSV" in line and "DSB folder" in line


@pytest.mark.parametrize(
    ("n", "k", "remark", "folds"),
    [
        (3, 4, "note: 3 train image(s): 3 folds instead of 4", [0, 1, 2]),
        (1, 4, "note: 1 train image(s): no folds (K-fold training needs at least 2)", [-1]),
        (5, 4, None, [0, 1, 2, 3]),
    ],
)
def test_small_folders_import_with_fewer_folds(project, n, k, remark, folds) -> None:
    out = ok(kit("data", "import", "dsb2018", dsb_folder(project, n), "--k", k))
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == (remark is not None) and all(note.startswith(remark) for note in notes)
    manifest = pd.read_csv(project / "data" / "dsb2018" / "manifest.csv")
    assert sorted(manifest["fold"].unique()) == folds and (manifest["split"] == "train").all()
    info = json.loads((project / "data" / "dsb2018" / "dataset.json").read_text())
    assert info["k_folds_requested"] == k and info["k_folds"] == len([f for f in folds if f >= 0])


def test_a_folder_without_masks_imports_as_the_test_split(project) -> None:
    stage = dsb_folder(project, 3, masks=False)
    out = ok(kit("data", "import", "dsb2018", stage))
    (note,) = [line for line in out.splitlines() if line.startswith("note:")]
    assert (
        note
        == f"note: no masks/ folder in {stage}: 3 image(s) imported as the test split (no truth, no folds)"
    )
    manifest = pd.read_csv(project / "data" / "dsb2018" / "manifest.csv")
    assert (manifest["split"] == "test").all() and (manifest["fold"] == -1).all()
    assert manifest["n_nuclei"].isna().all()


def test_folds_command_says_when_it_makes_fewer(project) -> None:
    ok(kit("data", "import", "dsb2018", dsb_folder(project, 3), "--k", "2"))
    out = ok(kit("data", "folds", "--k", "4"))
    assert "note: 3 train image(s): 3 folds instead of 4" in out and "(3 folds)" in out
