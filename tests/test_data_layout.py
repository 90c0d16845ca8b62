"""The on-disk layout: masks → labels with checks, sample folders, whole datasets, manifest, NucleiDataset."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from kit.data import (
    MANIFEST_COLUMNS,
    NucleiDataset,
    Sample,
    masks_to_labels,
    read_manifest,
    read_sample_dir,
    write_dataset,
    write_sample_dir,
)
from kit.errors import DataError
from kit.fileio import sha256_file, write_png


def _disk(shape, center, radius) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _random_labels(rng: np.random.Generator, shape, n: int) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for k in range(1, n + 1):
        center = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[_disk(shape, center, int(rng.integers(2, 6))) & (labels == 0)] = k
    return labels


def _samples(rng: np.random.Generator) -> list[Sample]:
    rgb = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (33, 47), dtype=np.uint16)
    return [
        Sample(
            "rgb_a", rgb, _random_labels(rng, (40, 52), 12), split="train", source="gen", note="grey-as-rgb"
        ),
        Sample("grey_b", grey16, _random_labels(rng, (33, 47), 4), split="validation", source="gen"),
        Sample("empty_c", grey16[:20, :20].copy(), np.zeros((20, 20), np.int32), split="train", source="gen"),
        Sample("unknown_d", rgb[:30, :30].copy(), None, split="test", source="gen"),
    ]


# --------------------------------------------------------------------------------------------------
# masks_to_labels


def test_masks_to_labels_accepts_binary_encodings_in_order():
    shape = (10, 12)
    a, b, c, d = (np.zeros(shape, bool) for _ in range(4))
    a[0:2, 0:2] = True
    b[3:5, 3:5] = True
    c[6:8, 0:3] = True
    d[8:10, 8:12] = True
    rgb = np.repeat((c * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    rgba = np.concatenate(
        [np.repeat((d * 255).astype(np.uint8)[:, :, None], 3, axis=2), np.full((*shape, 1), 255, np.uint8)],
        axis=2,
    )
    masks = [("a.png", a), ("b.png", b.astype(np.uint8)), ("c.png", rgb), ("d.png", rgba)]
    labels, moved = masks_to_labels(masks, shape)
    assert labels.dtype == np.int32 and moved == 0
    for k, m in enumerate((a, b, c, d), start=1):
        assert np.array_equal(labels == k, m)


def test_masks_to_labels_two_nonzero_values_and_empty_masks(caplog):
    shape = (6, 6)
    full_grey = np.full(shape, 7, np.uint8)
    full_grey[0, 0] = 200  # {7, 200}: no zero, so 7 is background
    with caplog.at_level(logging.WARNING):
        labels, _ = masks_to_labels([("e.png", np.zeros(shape, np.uint8)), ("g.png", full_grey)], shape)
    assert labels.max() == 1 and labels[0, 0] == 1 and labels.sum() == 1
    assert "1 empty mask" in caplog.text and "e.png" in caplog.text


def test_mask_size_mismatch_names_file_and_both_sizes():
    with pytest.raises(DataError, match=r"m7\.png.*5×4.*6×4"):
        masks_to_labels([("m7.png", np.ones((5, 4), np.uint8))], (6, 4))


def test_non_binary_mask_names_file():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :3] = [1, 128, 255]
    with pytest.raises(DataError, match=r"bad\.png: not a binary mask \(4 distinct values"):
        masks_to_labels([("bad.png", mask)], (4, 4))


def test_colour_mask_with_different_channels_is_rejected():
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[0, 0] = [255, 0, 0]
    with pytest.raises(DataError, match=r"red\.png: colour mask"):
        masks_to_labels([("red.png", mask)], (4, 4))


def test_overlap_names_both_files_and_pixel_count():
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[0:4, 0:4] = True
    b[2:6, 2:6] = True
    with pytest.raises(DataError, match=r"second\.png overlaps first\.png by 4 pixel.*--resolve-overlaps"):
        masks_to_labels([("first.png", a), ("second.png", b)], (8, 8))


def test_resolve_overlaps_gives_pixels_to_nearest_centroid():
    a = np.zeros((1, 12), bool)
    b = np.zeros((1, 12), bool)
    a[0, 0:7] = True  # centroid x = 3
    b[0, 4:12] = True  # centroid x = 7.5; overlap x = 4, 5, 6
    labels, moved = masks_to_labels([("a.png", a), ("b.png", b)], (1, 12), resolve_overlaps=True)
    assert moved == 3
    assert labels[0].tolist() == [1] * 6 + [2] * 6  # x = 6 is nearer 7.5 than 3


def test_resolve_overlaps_relabels_a_swallowed_mask():
    big = np.ones((5, 5), bool)
    small = np.zeros((5, 5), bool)
    small[0, 0] = True  # its own centroid: small keeps it
    inner = np.zeros((5, 5), bool)
    inner[2, 2] = True  # distance 0 to both centroids: the earlier mask (big) keeps it, inner vanishes
    labels, moved = masks_to_labels(
        [("big", big), ("small", small), ("inner", inner)], (5, 5), resolve_overlaps=True
    )
    assert moved == 2
    assert sorted(np.unique(labels).tolist()) == [1, 2]
    assert labels[0, 0] == 2 and labels[2, 2] == 1


# --------------------------------------------------------------------------------------------------
# sample folders


def test_sample_round_trip_keeps_label_order_with_many_masks(tmp_path):
    rng = np.random.default_rng(1)
    labels = _random_labels(rng, (30, 30), 14)
    labels[labels == 3] = 40  # gaps are renumbered in increasing order
    sample = Sample("s1", rng.integers(0, 256, (30, 30), dtype=np.uint8), labels)
    folder = write_sample_dir(tmp_path / "train", sample)
    assert (folder / "masks" / "s1_11.png").is_file()
    back = read_sample_dir(folder, "train")
    assert np.array_equal(back.image, sample.image)
    ids = np.unique(labels[labels > 0])
    expected = np.searchsorted(ids, labels) + 1
    expected[labels == 0] = 0
    assert np.array_equal(back.labels, expected)


def test_missing_images_folder(tmp_path):
    (tmp_path / "abc" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match=r"abc: no images/ folder"):
        read_sample_dir(tmp_path / "abc", "train")


def test_missing_masks_folder_is_unknown_truth_or_an_error(tmp_path):
    write_sample_dir(tmp_path, Sample("x", np.zeros((4, 4), np.uint8), None))
    assert read_sample_dir(tmp_path / "x", "test").labels is None
    with pytest.raises(DataError, match=r"x: no masks/ folder; a train image needs"):
        read_sample_dir(tmp_path / "x", "train", require_masks=True)


def test_corrupt_png_names_file(tmp_path):
    write_sample_dir(tmp_path, Sample("x", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.int32)))
    bad = tmp_path / "x" / "masks" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        read_sample_dir(tmp_path / "x", "train")


def test_two_images_in_images_folder(tmp_path):
    write_sample_dir(tmp_path, Sample("x", np.zeros((4, 4), np.uint8), None))
    write_png(tmp_path / "x" / "images" / "other.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"expected exactly one image file in images/, found 2"):
        read_sample_dir(tmp_path / "x", "test")


# --------------------------------------------------------------------------------------------------
# whole datasets


def test_dataset_round_trip_is_exact(tmp_path):
    samples = _samples(np.random.default_rng(0))
    out = write_dataset(
        samples,
        tmp_path / "ds",
        name="ds",
        kind="synthetic",
        source="test",
        notes=["n1"],
        k_folds=None,
        progress=False,
    )
    ds = NucleiDataset(out)
    assert ds.ids() == [s.id for s in samples]
    assert ds.ids("train") == ["rgb_a", "empty_c"] and ds.ids("test") == ["unknown_d"]
    for s in samples:
        back = ds.load(s.id)
        assert back.image.dtype == s.image.dtype and np.array_equal(back.image, s.image)
        if s.labels is None:
            assert back.labels is None and ds.mask_paths(s.id) is None
        else:
            assert np.array_equal(back.labels, s.labels)
    m = ds.manifest
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    row = ds.row("grey_b")
    assert (row["height"], row["width"], row["channels"], row["dtype"]) == (33, 47, 1, "uint16")
    assert row.n_nuclei == samples[1].labels.max() and row.style == -1 and row.fold == -1
    assert row.sha256_image == sha256_file(ds.image_path("grey_b"))
    assert ds.row("empty_c").n_nuclei == 0 and pd.isna(ds.row("unknown_d").n_nuclei)
    assert ds.row("unknown_d").sha256_masks == ""
    assert ds.digest == sha256_file(out / "manifest.csv")
    info = json.loads((out / "dataset.json").read_text())
    assert info["kind"] == "synthetic" and info["notes"] == ["n1"]
    assert info["counts"]["train"] == {"images": 2, "annotated": 2, "nuclei": int(samples[0].labels.max())}
    assert info["image_notes"] == {"grey-as-rgb": {"images": 1}}
    assert not list(tmp_path.glob(".ds.*"))


def test_dataset_cache_returns_read_only_arrays(tmp_path):
    out = write_dataset(
        _samples(np.random.default_rng(0)),
        tmp_path / "ds",
        name="ds",
        kind="t",
        source="t",
        k_folds=None,
        progress=False,
    )
    ds = NucleiDataset(out, cache_size=1)
    first = ds.load("rgb_a")
    assert ds.load("rgb_a") is first
    assert not first.image.flags.writeable
    ds.load("grey_b")
    assert ds.load("rgb_a") is not first
    with pytest.raises(DataError, match="no image with id 'nope'"):
        ds.load("nope")


def test_write_dataset_assigns_styles_and_folds(tmp_path):
    rng = np.random.default_rng(3)
    samples = [
        Sample(f"t{i}", rng.integers(0, 256, (16, 16), dtype=np.uint8), _random_labels(rng, (16, 16), 2))
        for i in range(6)
    ]
    samples.append(Sample("q", samples[0].image, None, split="test"))
    ds = NucleiDataset(
        write_dataset(samples, tmp_path / "ds", name="ds", kind="t", source="t", k_folds=2, progress=False)
    )
    train = ds.manifest[ds.manifest.split == "train"]
    assert sorted(train.fold.unique().tolist()) == [0, 1]
    assert ds.row("q").fold == -1 and (ds.manifest["style"] >= 0).all()
    assert len(ds.ids("train", fold=0)) + len(ds.ids("train", fold=1)) == 6


def test_empty_input_and_duplicate_ids(tmp_path):
    with pytest.raises(DataError, match=r"no images found in /some/where"):
        write_dataset(
            [], tmp_path / "ds", name="ds", kind="t", source="/some/where", k_folds=None, progress=False
        )
    s = Sample("same", np.zeros((4, 4), np.uint8), None, split="test", source="a")
    with pytest.raises(DataError, match=r"duplicate image id 'same'"):
        write_dataset([s, s], tmp_path / "ds", name="ds", kind="t", source="t", k_folds=None, progress=False)
    with pytest.raises(DataError, match=r"not a safe folder name"):
        write_dataset(
            [Sample("../x", s.image, None, split="test")],
            tmp_path / "ds",
            name="ds",
            kind="t",
            source="t",
            k_folds=None,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_existing_dataset_untouched(tmp_path):
    samples = _samples(np.random.default_rng(0))
    out = write_dataset(
        samples, tmp_path / "ds", name="ds", kind="t", source="t", k_folds=None, progress=False
    )
    digest = NucleiDataset(out).digest

    def broken():
        yield samples[0]
        raise DataError("boom")

    with pytest.raises(DataError, match="boom"):
        write_dataset(broken(), out, name="ds", kind="t", source="t", k_folds=None, progress=False)
    assert NucleiDataset(out).digest == digest
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    write_dataset(samples[:1], out, name="ds", kind="t", source="t", k_folds=None, progress=False)
    assert NucleiDataset(out).ids() == ["rgb_a"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("precious")
    with pytest.raises(DataError, match="not a kit dataset"):
        write_dataset(
            _samples(np.random.default_rng(0)),
            tmp_path / "docs",
            name="d",
            kind="t",
            source="t",
            k_folds=None,
            progress=False,
        )
    assert (tmp_path / "docs" / "thesis.txt").read_text() == "precious"


# --------------------------------------------------------------------------------------------------
# manifest


@pytest.fixture
def manifest_path(tmp_path):
    out = write_dataset(
        _samples(np.random.default_rng(0)),
        tmp_path / "ds",
        name="ds",
        kind="t",
        source="t",
        k_folds=None,
        progress=False,
    )
    return out / "manifest.csv"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns=["fold"]), r"missing column\(s\) fold"),
        (lambda f: f.assign(split=["train", "valid", "train", "test"]), r"unknown split\(s\) 'valid'"),
        (lambda f: f.assign(height=["40", "x", "20", "30"]), r"column height needs whole numbers.*'grey_b'"),
        (lambda f: f.assign(id=["a", "a", "b", "c"]), r"duplicate id\(s\) 'a'"),
        (lambda f: f.assign(sha256_image="abc"), r"malformed sha256"),
        (lambda f: f.assign(dtype="float64"), r"unsupported dtype\(s\) 'float64'"),
    ],
)
def test_malformed_manifest_names_file_and_problem(manifest_path, edit, message):
    frame = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    edit(frame).to_csv(manifest_path, index=False)
    with pytest.raises(DataError, match=rf"manifest\.csv: .*{message}"):
        read_manifest(manifest_path)


def test_unreadable_manifest_and_missing_dataset(tmp_path, manifest_path):
    manifest_path.write_text('id,split\n"unclosed,train\n')
    with pytest.raises(DataError, match=r"manifest\.csv: "):
        read_manifest(manifest_path)
    with pytest.raises(DataError, match=r"not a kit dataset \(no manifest\.csv\)"):
        NucleiDataset(tmp_path / "nowhere")
