"""The `kit` command line: version and help, data commands, one-line errors, train, runs, score, ui."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import (
    FAST_OVERRIDES,
    install_dataset,
    sha256,
)
from scipy import ndimage as ndi
from typer.testing import CliRunner

from kit import __version__, tracking
from kit.cli import app
from kit.data.dataset import NucleiDataset
from kit.fileio import read_image, write_png

WIDE = {"COLUMNS": "200"}  # rich tables keep whole cells on a wide terminal


@pytest.fixture
def with_data(project, synthetic_src) -> Path:
    """`project` holding its own copy of the tiny dataset at data/synthetic."""
    install_dataset(synthetic_src, project)
    return project


def kit(*args: object):
    """Run `kit ARGS` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    return result.stdout


def error_line(result, *, one_line: bool = True) -> str:
    """The single `error: ...` line of a failed command, after checking exit code 1 and no traceback.

    Progress bars (tqdm, on stderr) may precede it; nothing else may. With `one_line=False` the message
    may go on over more lines (a list of problems), and all of it is returned.
    """
    assert result.exit_code == 1, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [k for k, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert all("/s]" in line for line in lines[: errors[0]]), result.stderr  # only progress bars before it
    if one_line:
        assert errors[0] == len(lines) - 1, result.stderr
    return "\n".join(lines[errors[0] :])


def table_rows(text: str) -> list[list[str]]:
    """Cells of the body rows of the rich tables in `text`."""
    return [
        [c.strip() for c in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


# --------------------------------------------------------------------------------------------------
# root


def test_version_and_help() -> None:
    assert ok(kit("--version")).strip() == f"kit {__version__}"
    text = ok(kit("--help"))
    for command in ("train", "score", "runs", "ui", "data"):
        assert f" {command} " in text, command
    assert "Import, synthesise and inspect" in ok(kit("data", "--help"))


# --------------------------------------------------------------------------------------------------
# kit data


def test_data_synth_writes_dataset_and_logs_it(project) -> None:
    out = ok(kit("data", "synth", "--n", 8, "--seed", 1, "--size", 96, "--k", 2))
    manifest_path = project / "data" / "synthetic" / "manifest.csv"
    manifest = pd.read_csv(manifest_path)
    assert len(manifest) == 8
    assert set(manifest["split"]) == {"train", "test"}
    assert (manifest["height"] == 96).all() and (manifest["width"] == 96).all()
    train = manifest[manifest["split"] == "train"]
    assert set(train["fold"]) == {0, 1}
    assert (manifest.loc[manifest["split"] == "test", "fold"] == -1).all()
    assert (manifest["style"] >= 0).all()
    assert manifest["n_nuclei"].notna().all()
    for row in manifest.itertuples():
        assert (project / "data" / "synthetic" / row.split / row.id / "images" / f"{row.id}.png").is_file()
    assert "synthetic: images and nuclei per split" in out
    rows = {r[0]: r for r in table_rows(out)}
    assert rows["all"][1] == "8" and rows["train"][1] == str(len(train))
    assert "wrote data/synthetic" in out and "'datasets'" in out

    runs = tracking.find_runs("datasets")
    assert len(runs) == 1
    run = tracking.configure().MlflowClient().get_run(runs[0].info.run_id)
    assert run.data.params["kind"] == "synthetic" and run.data.params["n_images"] == "8"
    assert run.data.tags["kit.dataset_digest"] == sha256(manifest_path)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "synthetic"
    assert dataset_input.dataset.digest == sha256(manifest_path)[:16]


def test_data_summary_show_and_folds(with_data) -> None:
    root = with_data / "data" / "synthetic"
    out = ok(kit("data", "summary"))
    rows = {r[0]: r for r in table_rows(out)}
    assert rows["train"][1] == "8" and rows["test"][1] == "4" and rows["all"][1] == "12"
    assert "style clusters" in out

    shown = Path(ok(kit("data", "show", "synth_0003", "--data", root)).strip())
    assert shown == Path("outputs/show/synth_0003.png")
    assert shown.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_image(shown).shape[:2] == (96, 96)
    assert "no image with id 'nope'" in error_line(kit("data", "show", "nope"))

    before = pd.read_csv(root / "manifest.csv")
    out = ok(kit("data", "folds", "--k", 3))
    assert "(3 folds)" in out
    after = pd.read_csv(root / "manifest.csv")
    train = after["split"] == "train"
    assert sorted(after.loc[train, "fold"].unique()) == [0, 1, 2]
    assert after.loc[train, "fold"].value_counts().min() >= 2
    assert (after.loc[~train, "fold"] == -1).all()
    assert after["id"].tolist() == before["id"].tolist()
    assert (after["sha256_image"] == before["sha256_image"]).all()


# --------------------------------------------------------------------------------------------------
# one-line errors for bad input


def _box(y0: int, y1: int, x0: int, x1: int, shape=(24, 24)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def _dsb_sample(
    stage: Path, image_id: str, masks: dict[str, np.ndarray], shape=(24, 24), seed: int = 0
) -> Path:
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    write_png(stage / image_id / "images" / f"{image_id}.png", image)
    for name, mask in masks.items():
        write_png(stage / image_id / "masks" / name, mask)
    return stage / image_id


def _dsb_folder(tmp: Path, n: int = 3) -> Path:
    """A valid stage1_train/ with `n` images of two masks each."""
    stage = tmp / "stage1_train"
    for i in range(n):
        _dsb_sample(stage, f"img{i}", {"a.png": _box(2, 8, 2, 8), "b.png": _box(12, 20, 12, 20)}, seed=i)
    return stage


def test_import_corrupt_png(project_dir) -> None:
    stage = _dsb_folder(project_dir / "dsb")
    bad = stage / "img1" / "images" / "img1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    line = error_line(kit("data", "import", "dsb2018", stage, "--k", 2))
    assert str(bad) in line and "not a readable image" in line
    assert not (project_dir / "data" / "dsb2018").exists()  # nothing half-written


def test_import_mask_size_mismatch(project_dir) -> None:
    stage = _dsb_folder(project_dir / "dsb")
    bad = stage / "img2" / "masks" / "c.png"
    write_png(bad, _box(0, 4, 0, 4, shape=(20, 24)))
    line = error_line(kit("data", "import", "dsb2018", stage, "--k", 2))
    assert str(bad) in line and "mask size 20×24 (H×W) differs from the image size 24×24" in line


def test_import_overlapping_masks_and_resolving_them(project) -> None:
    stage = _dsb_folder(project / "dsb")
    first, second = stage / "img0" / "masks" / "a.png", stage / "img0" / "masks" / "b.png"
    write_png(second, _box(6, 12, 6, 12))  # covers 2×2 pixels of a.png
    line = error_line(kit("data", "import", "dsb2018", stage, "--k", 2))
    assert f"{second} overlaps {first} by 4 pixel(s)" in line
    assert "--resolve-overlaps" in line

    out = ok(kit("data", "import", "dsb2018", stage, "--k", 2, "--resolve-overlaps"))
    assert "wrote data/dsb2018" in out
    dataset = NucleiDataset(project / "data" / "dsb2018")
    assert len(dataset) == 3
    labels = dataset.load("img0").labels
    assert labels.max() == 2 and (labels > 0).sum() == 36 + 36 - 4
    assert "overlap-pixels-moved=4" in dataset.row("img0")["note"]


def test_import_missing_images_folder(project_dir) -> None:
    stage = _dsb_folder(project_dir / "dsb")
    write_png(stage / "noimage" / "masks" / "a.png", _box(2, 8, 2, 8))
    line = error_line(kit("data", "import", "dsb2018", stage, "--k", 2))
    assert f"{stage / 'noimage'}: no images/ folder" in line


def test_import_empty_folder(project_dir) -> None:
    empty = project_dir / "empty"
    empty.mkdir()
    line = error_line(kit("data", "import", "dsb2018", empty))
    assert f"no images found in {empty}" in line


def test_train_config_errors(project_dir) -> None:
    line = error_line(kit("train", "--exp", "nope"))
    assert "unknown experiment 'nope'" in line and "unet_tiny" in line and "unet_r34" in line
    line = error_line(kit("train", "--exp", "unet_tiny", "--set", "training.lrr=1"))
    assert "unknown key 'training.lrr'" in line and "did you mean 'lr'" in line
    assert "experiments/unet_tiny.yaml" in line
    line = error_line(kit("train", "--exp", "unet_tiny", "--set", "training.lr=abc"))
    assert "training.lr" in line and "'abc'" in line
    line = error_line(kit("train", "--exp", "unet_tiny", "--folds", "0,x"))
    assert "--folds" in line and "'0,x'" in line


def test_train_without_dataset_says_how_to_create_it(project_dir) -> None:
    line = error_line(kit("train", "--exp", "unet_tiny", "--set", "data.root=missing"))
    assert "data.root 'missing' is not a kit dataset" in line and "kit data synth" in line
    assert not (project_dir / "mlruns").exists()  # failed before any run was started


def test_train_resume_with_nothing_to_resume(project) -> None:
    line = error_line(kit("train", "--exp", "unet_tiny", "--resume"))
    assert "nothing to resume" in line and "'unet_tiny'" in line


def test_dump_config_applies_overrides(project_dir) -> None:
    import yaml

    out = ok(kit("train", "--exp", "unet_tiny", "--dump-config", "--set", "training.lr=0.01"))
    config = yaml.safe_load(out)
    assert config["name"] == "unet_tiny"
    assert config["training"]["lr"] == 0.01
    assert config["model"]["encoder"] == "resnet18"
    assert not (project_dir / "mlruns").exists()  # printing the config trains nothing


# --------------------------------------------------------------------------------------------------
# kit train, kit runs


def test_train_one_fold_then_runs_lists_it(with_data) -> None:
    out = ok(
        kit("train", "--exp", "unet_tiny", "--folds", "0", *(a for o in FAST_OVERRIDES for a in ("--set", o)))
    )
    assert "fold 0: best val mAP" in out
    assert "unet_tiny: val mAP" in out and "over 1 fold(s)" in out
    (parent,) = tracking.find_runs("unet_tiny", tags={"kit.role": "train"})
    assert parent.data.tags["kit.folds"] == "0"
    assert parent.data.tags["kit.command"] == "train --exp unet_tiny"
    assert parent.info.run_id[:8] in out

    listing = ok(kit("runs"))
    (row,) = table_rows(listing)
    assert row[:3] == ["unet_tiny", parent.info.run_id[:8], "0"]
    assert "±" in row[3] and row[4] == "2" and row[6] == "FINISHED"
    assert "no training runs yet" in ok(kit("runs", "--exp", "other"))


# --------------------------------------------------------------------------------------------------
# kit score


def _truth(root: Path) -> dict[str, np.ndarray]:
    dataset = NucleiDataset(root)
    return {i: np.array(dataset.load(i).labels) for i in dataset.ids("test")}


def _write_rows(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows(rows)
    return path


def _read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))[1:]


def test_score_perfect_and_imperfect_submissions(with_data) -> None:
    from kit.metrics import evaluate
    from kit.submission import write_submission

    truth = _truth(with_data / "data" / "synthetic")
    assert len(truth) == 4
    write_submission(with_data / "perfect.csv", truth)
    result = kit("score", "perfect.csv", "--truth", "data/synthetic", "--json")
    summary = json.loads(ok(result))  # nothing but JSON on stdout
    assert {"map", "ap_per_threshold", "f1_avg", "n_images"} <= summary.keys()
    assert summary["map"] == 1.0 and summary["f1_avg"] == 1.0 and summary["n_images"] == 4
    assert set(summary["ap_per_threshold"].values()) == {1.0}
    report = with_data / "outputs" / "score" / "perfect"
    for name in ("ap_vs_iou.png", "errors.png", "per_image.csv", "summary.json"):
        assert (report / name).is_file(), name
    assert json.loads((report / "summary.json").read_text())["map"] == 1.0
    assert sorted(pd.read_csv(report / "per_image.csv")["image_id"]) == sorted(truth)
    (run,) = tracking.find_runs("scores")
    assert run.data.metrics["map"] == 1.0

    ids = sorted(truth)
    predicted = dict(truth)
    dropped = truth[ids[0]].copy()
    dropped[dropped == dropped.max()] = 0  # one nucleus missed
    predicted[ids[0]] = dropped
    eroded = truth[ids[1]] * ndi.binary_erosion(truth[ids[1]] > 0, iterations=2)
    predicted[ids[1]] = eroded
    write_submission(with_data / "imperfect.csv", predicted)
    got = json.loads(ok(kit("score", "imperfect.csv", "--truth", "data/synthetic", "--json", "--no-track")))
    expected = evaluate([(i, truth[i], predicted[i]) for i in ids]).summary
    assert got["map"] < 1.0
    assert got["map"] == pytest.approx(expected["map"], abs=1e-12)
    assert got["ap_per_threshold"] == pytest.approx(expected["ap_per_threshold"], abs=1e-12)
    assert got["f1_avg"] == pytest.approx(expected["f1_avg"], abs=1e-12)
    assert got["n_true"] == expected["n_true"] and got["n_pred"] == expected["n_pred"]
    assert got["n_pred"] <= got["n_true"] - 1

    out = ok(kit("score", "imperfect.csv", "--truth", "data/synthetic", "--no-track"))
    assert "DSB mAP@[.5:.95]" in out and f"{expected['map']:.4f}" in out


def test_score_rejects_invalid_submissions(with_data) -> None:
    from kit.submission import write_submission

    truth = _truth(with_data / "data" / "synthetic")
    good = _read_rows(write_submission(with_data / "good.csv", truth))
    multi = next(k for k, (_, rle) in enumerate(good) if len(rle.split()) >= 4)
    image_id, rle = good[multi]

    def score(rows: list[list[str]]) -> str:
        path = _write_rows(with_data / "bad.csv", rows)
        message = error_line(kit("score", path, "--truth", "data/synthetic", "--json", "--no-track"))
        assert message.startswith(f"error: {path}: "), message  # one problem: one line
        return message

    # runs out of order
    v = rle.split()
    rows = [list(r) for r in good]
    rows[multi][1] = " ".join(v[2:4] + v[0:2] + v[4:])
    line = score(rows)
    assert f"row {multi + 2} (ImageId {image_id})" in line

    # an ImageId that is not in the truth
    line = score([*good, ["not_an_image", "1 3"]])
    assert f"row {len(good) + 2} (ImageId not_an_image): unknown ImageId" in line

    # an image left out
    missing = sorted(truth)[-1]
    line = score([r for r in good if r[0] != missing])
    assert f"ImageId {missing}: image missing" in line

    # two masks claiming the same pixel
    first_pixel = rle.split()[0]
    line = score([*good, [image_id, f"{first_pixel} 1"]])
    assert f"row {len(good) + 2} (ImageId {image_id}): mask overlaps the mask of row {multi + 2}" in line


# --------------------------------------------------------------------------------------------------
# kit ui


def test_ui_starts_mlflow_on_the_project_store(project_dir, monkeypatch) -> None:
    assert "--port" in ok(kit("ui", "--help"))
    from kit.tracking import server

    calls = []
    monkeypatch.setattr(server, "serve", lambda cmd: calls.append(cmd) or 0)  # tests/test_ui.py runs it
    out = ok(kit("ui", "--port", 5123))
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    uri = f"sqlite:///{project_dir / 'mlruns' / 'mlflow.db'}"
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5123"
    # It opens on the model-training view of the experiments, not MLflow's default GenAI view.
    assert "http://127.0.0.1:5123/#/experiments?workflowType=machine_learning" in out.replace("\n", "")
    assert (project_dir / "mlruns").is_dir()
