"""Importers: DSB2018 folders and zips, mnfinder RGBA decoding and wheel import (no download)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kit.data import NucleiDataset, decode_rgba_mask, fetch_mnfinder_wheel, import_dsb2018, import_mnfinder
from kit.errors import DataError
from kit.fileio import write_png

# --------------------------------------------------------------------------------------------------
# DSB2018


def _box_mask(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def _write_dsb_sample(stage: Path, image_id: str, image: np.ndarray, masks: list[np.ndarray] | None) -> None:
    write_png(stage / image_id / "images" / f"{image_id}.png", image)
    for k, mask in enumerate(masks or []):
        write_png(stage / image_id / "masks" / f"{k:x}f3a9.png", mask)


@pytest.fixture
def dsb_root(tmp_path) -> Path:
    """stage1_train/{rgba,greyrgb} with masks and stage1_test/plain without."""
    rng = np.random.default_rng(0)
    root = tmp_path / "dsb"
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    rgba[:, :, 3] = 255
    rgba[0, 0, 3] = 10  # not fully opaque
    grey = np.repeat(rng.integers(0, 256, (16, 18, 1), dtype=np.uint8), 3, axis=2)
    _write_dsb_sample(
        root / "stage1_train",
        "rgba",
        rgba,
        [_box_mask((20, 24), 2, 6, 2, 6), _box_mask((20, 24), 10, 15, 10, 20)],
    )
    _write_dsb_sample(root / "stage1_train", "greyrgb", grey, [_box_mask((16, 18), 0, 4, 0, 4)])
    _write_dsb_sample(root / "stage1_test", "plain", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), None)
    return root


def _zip_folder(folder: Path, zip_path: Path, *, with_root: bool) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder.parent if with_root else folder).as_posix())
    return zip_path


def test_dsb_stage_folder_normalises_images_and_reads_masks(dsb_root, tmp_path):
    out = import_dsb2018(dsb_root / "stage1_train", tmp_path / "out", k_folds=None)
    ds = NucleiDataset(out)
    assert ds.ids("train") == ["greyrgb", "rgba"]
    rgba = ds.load("rgba")
    assert rgba.image.shape == (20, 24, 3) and rgba.labels.max() == 2
    assert rgba.labels[3, 3] == 1 and rgba.labels[12, 15] == 2
    assert ds.row("rgba")["note"] == "alpha-dropped-not-opaque"
    assert ds.row("greyrgb")["note"] == "grey-as-rgb" and ds.row("greyrgb")["channels"] == 3
    info = json.loads((out / "dataset.json").read_text())
    assert info["kind"] == "dsb2018"
    assert info["image_notes"] == {"alpha-dropped-not-opaque": {"images": 1}, "grey-as-rgb": {"images": 1}}
    assert any("grey-as-rgb" in note for note in info["notes"])


def test_dsb_parent_folder_and_zips_give_the_same_dataset(dsb_root, tmp_path):
    reference = NucleiDataset(import_dsb2018(dsb_root, tmp_path / "ref", k_folds=None)).manifest
    assert reference.set_index("id")["split"].to_dict() == {
        "greyrgb": "train",
        "rgba": "train",
        "plain": "test",
    }
    assert reference.set_index("id").loc["plain", "sha256_masks"] == ""

    parent_zip = _zip_folder(dsb_root, tmp_path / "parent.zip", with_root=False)
    nested = tmp_path / "kaggle"
    nested.mkdir()
    for stage in ("stage1_train", "stage1_test"):
        _zip_folder(dsb_root / stage, nested / f"{stage}.zip", with_root=False)
    nested_zip = _zip_folder(nested, tmp_path / "kaggle.zip", with_root=False)
    columns = ["id", "split", "sha256_image", "sha256_masks", "note"]
    for source in (parent_zip, nested, nested_zip):
        manifest = NucleiDataset(import_dsb2018(source, tmp_path / "o", k_folds=None)).manifest
        assert manifest[columns].equals(reference[columns]), source


def test_dsb_zip_of_a_stage_folder_uses_the_split_argument(dsb_root, tmp_path):
    stage_zip = _zip_folder(dsb_root / "stage1_test", tmp_path / "stage1_test.zip", with_root=False)
    ds = NucleiDataset(import_dsb2018(stage_zip, tmp_path / "o", split="test", k_folds=None))
    assert ds.ids("test") == ["plain"] and ds.load("plain").labels is None
    # no image has masks/: the default split gives way to test, said in dataset.json's remarks
    ds = NucleiDataset(import_dsb2018(stage_zip, tmp_path / "o2", k_folds=None))
    assert ds.ids("test") == ["plain"] and ds.ids("train") == []
    remarks = json.loads((tmp_path / "o2" / "dataset.json").read_text())["remarks"]
    assert remarks == [
        f"no masks/ folder in {stage_zip}: 1 image(s) imported as the test split (no truth, no folds)"
    ]


def test_dsb_missing_masks_in_train_names_the_folder(dsb_root, tmp_path):
    shutil.rmtree(dsb_root / "stage1_train" / "greyrgb" / "masks")
    with pytest.raises(DataError, match=r"stage1_train/greyrgb: no masks/ folder"):
        import_dsb2018(dsb_root, tmp_path / "o", k_folds=None)


def test_dsb_missing_images_folder(dsb_root, tmp_path):
    shutil.rmtree(dsb_root / "stage1_train" / "rgba" / "images")
    with pytest.raises(DataError, match=r"stage1_train/rgba: no images/ folder"):
        import_dsb2018(dsb_root, tmp_path / "o", k_folds=None)


def test_dsb_corrupt_mask_in_zip_names_the_member(dsb_root, tmp_path):
    (dsb_root / "stage1_train" / "rgba" / "masks" / "0f3a9.png").write_bytes(b"garbage")
    stage_zip = _zip_folder(dsb_root / "stage1_train", tmp_path / "train.zip", with_root=True)
    with pytest.raises(
        DataError, match=r"train\.zip:stage1_train/rgba/masks/0f3a9\.png: not a readable image"
    ):
        import_dsb2018(stage_zip, tmp_path / "o", k_folds=None)


def test_dsb_overlapping_masks(dsb_root, tmp_path):
    masks = dsb_root / "stage1_train" / "greyrgb" / "masks"
    write_png(masks / "1f3a9.png", _box_mask((16, 18), 2, 6, 2, 6))  # overlaps 0f3a9 by 2×2 px
    with pytest.raises(DataError, match=r"1f3a9\.png overlaps .*0f3a9\.png by 4 pixel.*--resolve-overlaps"):
        import_dsb2018(dsb_root, tmp_path / "o", k_folds=None)
    ds = NucleiDataset(import_dsb2018(dsb_root, tmp_path / "o", resolve_overlaps=True, k_folds=None))
    assert ds.row("greyrgb")["note"] == "grey-as-rgb; overlap-pixels-moved=4"
    assert ds.load("greyrgb").labels.max() == 2


def test_dsb_labels_from_csv(dsb_root, tmp_path):
    seen = {}

    def reader(csv, sizes):
        seen.update(sizes)
        return {
            image_id: np.ones(shape, np.int32) for image_id, shape in sizes.items() if image_id != "greyrgb"
        }

    csv = tmp_path / "labels.csv"
    with pytest.raises(DataError, match=r"labels\.csv: no rows for 1 image\(s\): greyrgb"):
        import_dsb2018(dsb_root, tmp_path / "o", labels_csv=csv, labels_csv_reader=reader, k_folds=None)
    assert seen == {"greyrgb": (16, 18), "rgba": (20, 24)}  # the train images only

    def full_reader(csv, sizes):
        return {image_id: np.ones(shape, np.int32) for image_id, shape in sizes.items()}

    ds = NucleiDataset(
        import_dsb2018(dsb_root, tmp_path / "o", labels_csv=csv, labels_csv_reader=full_reader, k_folds=None)
    )
    assert ds.load("rgba").labels.all() and ds.row("rgba")["n_nuclei"] == 1
    assert ds.load("plain").labels is None

    test_only = dsb_root / "stage1_test"
    ds = NucleiDataset(
        import_dsb2018(
            test_only,
            tmp_path / "t",
            split="test",
            labels_csv=csv,
            labels_csv_reader=full_reader,
            k_folds=None,
        )
    )
    assert ds.row("plain")["n_nuclei"] == 1


def test_dsb_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found in .*empty"):
        import_dsb2018(tmp_path / "empty", tmp_path / "o", k_folds=None)
    with pytest.raises(DataError, match=r"nothing\.zip: no such file"):
        import_dsb2018(tmp_path / "nothing.zip", tmp_path / "o", k_folds=None)


# --------------------------------------------------------------------------------------------------
# mnfinder


def _rgba(shape, blobs: list[tuple[tuple[int, int, int], tuple[slice, slice]]]) -> np.ndarray:
    out = np.zeros((*shape, 4), np.uint8)
    for colour, box in blobs:
        out[box] = (*colour, 255)
    return out


def test_decode_rgba_mask_splits_colours_and_components():
    s = np.s_
    rgba = _rgba(
        (20, 20),
        [
            ((255, 188, 9), s[1:5, 1:5]),  # two colours touching ...
            ((255, 188, 10), s[1:5, 5:9]),  # ... stay apart
            ((255, 200, 40), s[10:13, 1:4]),  # one colour reused for two separate blobs
            ((255, 200, 40), s[10:13, 15:18]),
            ((255, 255, 0), s[15:19, 8:12]),  # blue = 0 is still a nucleus
            ((255, 1, 1), s[0:1, 17:20]),  # a 3-px speck: dropped
            ((9, 9, 9), s[6:8, 12:14]),  # diagonal neighbours of one colour join (8-connectivity)
            ((9, 9, 9), s[8:10, 14:16]),
        ],
    )
    rgba[19, 0] = (0, 0, 0, 0)
    labels = decode_rgba_mask(rgba)
    assert labels.dtype == np.int32 and labels.max() == 6
    assert labels[2, 2] != labels[2, 6] and labels[2, 2] > 0 and labels[2, 6] > 0
    assert labels[11, 2] != labels[11, 16] and labels[11, 2] > 0
    assert labels[16, 9] > 0 and labels[0, 18] == 0
    assert labels[6, 12] == labels[9, 15] > 0
    assert sorted(np.bincount(labels.ravel())[1:].tolist()) == [8, 9, 9, 16, 16, 16]


def test_decode_rgba_mask_min_size_and_bad_input():
    rgba = _rgba((5, 5), [((1, 2, 3), np.s_[0:2, 0:2])])
    assert decode_rgba_mask(rgba, min_size=5).max() == 0
    assert decode_rgba_mask(rgba, min_size=4).max() == 1
    with pytest.raises(ValueError, match="RGBA"):
        decode_rgba_mask(rgba[:, :, :3])


def _tif(image: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, image)
    return buf.getvalue()


def _png(image: np.ndarray, tmp: Path) -> bytes:
    write_png(tmp, image)
    return tmp.read_bytes()


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch) -> Path:
    """A wheel-shaped zip in <tmp>/cache/mnfinder with 4 images, one of them in train and test."""
    rng = np.random.default_rng(0)
    shared = rng.integers(0, 4096, (16, 20), dtype=np.uint16)
    two = _rgba((16, 20), [((255, 188, 1), np.s_[1:5, 1:5]), ((255, 188, 2), np.s_[8:12, 8:14])])
    one = _rgba((16, 20), [((255, 255, 0), np.s_[2:9, 2:9])])
    files = {
        "training-data/f1/images/1": (rng.integers(0, 256, (16, 20), dtype=np.uint8), two),
        "training-data/f1/images/2": (shared, two),
        "validation-data/f1/images/1": (rng.integers(0, 4096, (16, 20), dtype=np.uint16), one),
        "test-data/misc 2/images/a.lif - b": (shared, one),
    }
    wheel = tmp_path / "cache" / "mnfinder" / "mnfinder-1.2.3-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    scratch = tmp_path / "scratch.png"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("mnfinder/mnfinder.py", "# code")
        for stem, (image, mask) in files.items():
            zf.writestr(f"mnfinder/{stem}.tif", _tif(image))
            zf.writestr(f"mnfinder/{stem}.png", _png(np.zeros((16, 20), np.uint8), scratch))  # preview
            zf.writestr(f"mnfinder/{stem.replace('/images/', '/nucleus_masks/')}.png", _png(mask, scratch))
            zf.writestr(f"mnfinder/{stem.replace('/images/', '/mn_masks/')}.png", _png(mask, scratch))

    def no_download(*args, **kwargs):
        raise AssertionError("the cached wheel must be reused")

    monkeypatch.setattr(subprocess, "run", no_download)
    return wheel


def test_import_mnfinder_pairs_decodes_and_drops_the_train_duplicate(fake_wheel, tmp_path, caplog):
    out = import_mnfinder(tmp_path / "mn", cache_dir=tmp_path / "cache", k_folds=None, progress=False)
    ds = NucleiDataset(out)
    assert ds.ids() == ["train_f1_1", "validation_f1_1", "test_misc_2_a.lif_-_b"]
    assert ds.row("train_f1_1")["n_nuclei"] == 2 and ds.row("test_misc_2_a.lif_-_b")["n_nuclei"] == 1
    assert ds.row("validation_f1_1")["dtype"] == "uint16" and ds.row("train_f1_1")["dtype"] == "uint8"
    info = json.loads((out / "dataset.json").read_text())
    dropped = [n for n in info["notes"] if n.startswith("duplicate dropped")]
    assert len(dropped) == 1 and "train_f1_2" in dropped[0] and "test_misc_2_a.lif_-_b" in dropped[0]
    assert "2 vs 1 nuclei" in dropped[0]
    assert "duplicate dropped" in caplog.text
    assert info["counts"]["train"] == {"images": 1, "annotated": 1, "nuclei": 2}


def test_fetch_mnfinder_wheel_downloads_once(tmp_path, monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        folder = Path(cmd[cmd.index("-d") + 1])
        (folder / "mnfinder-1.2.3-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    first = fetch_mnfinder_wheel(tmp_path)
    second = fetch_mnfinder_wheel(tmp_path)
    assert first == second == tmp_path / "mnfinder" / "mnfinder-1.2.3-py3-none-any.whl"
    assert len(calls) == 1 and calls[0][1:6] == ["-m", "pip", "download", "--no-deps", "mnfinder==1.2.3"]


def test_fetch_mnfinder_wheel_failure_explains_the_manual_fix(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        stderr = "WARNING: retrying\nERROR: No matching distribution found for mnfinder==1.2.3\n"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(DataError, match=r"No matching distribution found.*copy it into .*mnfinder"):
        fetch_mnfinder_wheel(tmp_path)
