"""Model input: normalize_image, CropDataset and FullImageDataset."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kit.data import NucleiDataset, Sample, normalize_image, write_dataset
from kit.data.torch_dataset import CropDataset, FullImageDataset
from kit.errors import DataError

# --------------------------------------------------------------------------------------------------
# normalize_image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_normalize_stretches_any_dtype_to_uint8(dtype):
    ramp = np.linspace(10, 200, 100 * 100).reshape(100, 100).astype(dtype)
    out = normalize_image(ramp)
    assert out.dtype == np.uint8 and out.shape == (100, 100, 3)
    assert out.min() == 0 and out.max() == 255
    assert (out[:, :, 0] == out[:, :, 2]).all()


def test_normalize_channels_alpha_and_constant_images():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    assert np.array_equal(normalize_image(rgba), normalize_image(rgba[:, :, :3]))
    grey = normalize_image(rgba, channels=1)
    assert grey.shape == (8, 9, 1)
    assert np.array_equal(grey, normalize_image(rgba[:, :, :3].astype(np.float32).mean(axis=2), channels=1))
    assert not normalize_image(np.full((5, 5), 77, np.uint16)).any()
    with pytest.raises(ValueError, match="channels"):
        normalize_image(rgba, channels=2)


def test_normalize_clips_outside_the_percentiles():
    img = np.zeros((100, 100), np.uint16)
    img[0, 0] = 65535  # one hot pixel does not decide the scale
    img[50:, :] = 1000
    out = normalize_image(img, channels=1)
    assert out[0, 0, 0] == 255 and out[60, 0, 0] == 255 and out[10, 10, 0] == 0


# --------------------------------------------------------------------------------------------------
# CropDataset


def _coord_sample(image_id: str, h: int, w: int) -> Sample:
    """Image whose pixels encode their position, so a crop can be located in the normalised image."""
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([yy * 4, xx * 4, (yy + xx) % 7], axis=2).astype(np.uint8)
    labels = (yy // 4 * 100 + xx // 4 + 1).astype(np.int32)
    return Sample(image_id, image, labels)


def _locate(crop: np.ndarray, full: np.ndarray) -> tuple[int, int]:
    size = crop.shape[0]
    for y in range(full.shape[0] - size + 1):
        for x in range(full.shape[1] - size + 1):
            if np.array_equal(full[y : y + size, x : x + size], crop):
                return y, x
    raise AssertionError("crop not found in the image")


def test_crops_are_windows_of_the_normalised_image():
    sample = _coord_sample("a", 40, 50)
    ds = CropDataset([sample], 16, samples_per_epoch=5, seed=3)
    full = normalize_image(sample.image)
    assert len(ds) == 5
    for i in range(5):
        item = ds[i]
        assert item["id"] == "a"
        assert item["image"].shape == (16, 16, 3) and item["image"].dtype == np.uint8
        assert item["labels"].shape == (16, 16) and item["labels"].dtype == np.int32
        y, x = _locate(item["image"], full)
        assert np.array_equal(item["labels"], sample.labels[y : y + 16, x : x + 16])


def test_crop_positions_are_seeded_by_seed_epoch_and_index():
    samples = [_coord_sample("a", 64, 64)]
    a, b = CropDataset(samples, 8, samples_per_epoch=4), CropDataset(samples, 8, samples_per_epoch=4)
    assert all(np.array_equal(a[i]["image"], b[i]["image"]) for i in range(4))
    before = [a[i]["labels"] for i in range(4)]
    a.set_epoch(1)
    after = [a[i]["labels"] for i in range(4)]
    assert not all(np.array_equal(p, q) for p, q in zip(before, after, strict=True))
    c = CropDataset(samples, 8, samples_per_epoch=4, seed=1)
    assert not all(np.array_equal(c[i]["labels"], before[i]) for i in range(4))


def test_short_epochs_visit_every_image_in_turn():
    ds = CropDataset([_coord_sample(f"s{i}", 10, 10) for i in range(3)], 4, samples_per_epoch=2)
    seen = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        seen += [ds[i]["id"] for i in range(len(ds))]
    assert seen == ["s0", "s1", "s2", "s0", "s1", "s2"]


def test_small_images_are_padded_with_the_median_and_background():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 30, 3), dtype=np.uint8)
    labels = np.ones((5, 30), np.int32)
    item = CropDataset([Sample("thin", image, labels)], 12)[0]
    assert item["image"].shape == (12, 12, 3) and item["labels"].shape == (12, 12)
    rows = np.flatnonzero(item["labels"].any(axis=1))
    assert len(rows) == 5 and np.all(np.diff(rows) == 1)
    median = np.median(normalize_image(image).reshape(-1, 3), axis=0).astype(np.uint8)
    pad_rows = np.setdiff1d(np.arange(12), rows)
    assert (item["image"][pad_rows] == median).all()


def test_transform_gets_image_and_labels_and_id_is_kept():
    seen = []

    def flip(item):
        seen.append(sorted(item))
        return {"image": item["image"][:, ::-1], "labels": item["labels"][:, ::-1]}

    sample = _coord_sample("a", 20, 20)
    plain = CropDataset([sample], 10)[0]
    flipped = CropDataset([sample], 10, transform=flip)[0]
    assert seen == [["image", "labels"]]
    assert flipped["id"] == "a" and np.array_equal(flipped["labels"], plain["labels"][:, ::-1])


def test_crop_dataset_checks_its_inputs():
    image = np.zeros((8, 8), np.uint8)
    with pytest.raises(DataError, match=r"without labels.*'nolabel'"):
        CropDataset([Sample("nolabel", image, None)], 4)
    with pytest.raises(DataError, match=r"no sample\(s\) with id 'x'"):
        CropDataset([Sample("a", image, np.zeros((8, 8), np.int32))], 4, ids=["x"])
    with pytest.raises(ValueError, match="crop_size"):
        CropDataset([Sample("a", image, np.zeros((8, 8), np.int32))], 0)


@pytest.fixture
def nuclei_dataset(tmp_path) -> NucleiDataset:
    samples = [_coord_sample(f"s{i}", 24 + 4 * i, 30) for i in range(3)]
    samples.append(Sample("t0", np.zeros((16, 16), np.uint16), None, split="test"))
    return NucleiDataset(
        write_dataset(samples, tmp_path / "ds", name="ds", kind="t", source="t", k_folds=None, progress=False)
    )


def test_crop_dataset_over_a_nuclei_dataset_with_a_dataloader(nuclei_dataset):
    with pytest.raises(DataError, match=r"without labels.*'t0'"):
        CropDataset(nuclei_dataset, 16)
    ds = CropDataset(nuclei_dataset, 16, ids=nuclei_dataset.ids("train"), samples_per_epoch=6)
    ds = pickle.loads(pickle.dumps(ds))  # DataLoader workers may receive a pickled copy
    batches = list(DataLoader(ds, batch_size=3))
    assert len(batches) == 2
    assert batches[0]["image"].shape == (3, 16, 16, 3) and batches[0]["image"].dtype == torch.uint8
    assert batches[0]["labels"].dtype == torch.int32 and batches[0]["id"] == ["s0", "s1", "s2"]


def test_full_image_dataset(nuclei_dataset):
    ds = FullImageDataset(nuclei_dataset)
    assert ds.ids == ["s0", "s1", "s2", "t0"]
    item = ds[1]
    assert item["image"].shape == (28, 30, 3) and item["image"].dtype == np.uint8
    assert np.array_equal(item["image"], normalize_image(nuclei_dataset.load("s1").image))
    assert item["labels"].shape == (28, 30)
    assert "labels" not in ds[3] and ds[3]["image"].shape == (16, 16, 3)
    grey = FullImageDataset(nuclei_dataset, ids=["s0"], channels=1)[0]
    assert grey["image"].shape == (24, 30, 1)
    with pytest.raises(IndexError):
        ds[4]
