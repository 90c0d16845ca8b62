"""Augmentation: config → pipeline, label/image alignment, copy-paste, errors at build time, grid PNG."""

from __future__ import annotations

import inspect
import warnings

import albumentations as A
import numpy as np
import pytest
from skimage.draw import disk

from kit.augment import (
    DSB_STRONG,
    LIGHT,
    CopyPasteNuclei,
    augmentation_grid,
    build_augmentation,
    copy_paste_nuclei,
    known_transforms,
)
from kit.augment.copy_paste import isolated_nuclei, plan_copy_paste
from kit.errors import ConfigError


def scattered_discs(shape: tuple[int, int] = (128, 128), n: int = 30, seed: int = 0) -> np.ndarray:
    """Label image of random discs (ids 1..n, later discs overwrite earlier ones, some touch)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for label in range(1, n + 1):
        centre = rng.integers(8, np.array(shape) - 8)
        labels[disk(tuple(centre), int(rng.integers(3, 9)), shape=shape)] = label
    return labels


def geometric_only(spec: list[dict]) -> list[dict]:
    """The dual (geometric) entries of `spec`, always applied, with nearest interpolation for the image."""
    registry = known_transforms()
    out = []
    for item in spec:
        cls = registry[item["name"]]
        if issubclass(cls, A.DualTransform):
            nearest = (
                {"interpolation": 0} if "interpolation" in inspect.signature(cls.__init__).parameters else {}
            )
            out.append({**item, **nearest, "p": 1.0})
    return out


@pytest.mark.parametrize("seed", range(6))
def test_geometric_pipeline_keeps_image_and_labels_aligned(seed: int) -> None:
    labels = scattered_discs(seed=seed)
    image = np.repeat(labels.astype(np.uint8)[..., None], 3, axis=2)  # pixel value == label id
    spec = geometric_only(DSB_STRONG)
    assert {item["name"] for item in spec} >= {"CopyPasteNuclei", "D4", "Affine", "ElasticTransform"}
    out = build_augmentation(spec, seed=seed)(image=image, labels=labels)
    img, lab = out["image"], out["labels"]
    assert lab.dtype == np.int32 and img.dtype == np.uint8 and lab.shape == img.shape[:2]
    original = np.isin(lab, np.unique(labels))
    for channel in range(3):
        np.testing.assert_array_equal(img[..., channel][original], lab[original])
    new_ids = np.setdiff1d(np.unique(lab), np.unique(labels))
    assert (new_ids > labels.max()).all()
    for new_id in new_ids:  # a pasted nucleus carries the pixels (= id) of one original nucleus
        values = np.unique(img[lab == new_id])
        assert len(values) == 1 and values[0] in np.unique(labels)


def test_rotations_put_labels_on_the_same_pixels_as_the_image() -> None:
    # OpenCV rounds nearest-neighbour sample positions differently for int32 than for uint8 arrays,
    # which shifts a few label pixels per rotated image unless labels travel as float32.
    labels = scattered_discs()
    image = labels.astype(np.uint8)[..., None]
    aug = build_augmentation(
        [{"name": "Affine", "rotate": [-45, 45], "scale": [0.8, 1.25], "interpolation": 0, "p": 1}]
    )
    for seed in range(30):
        aug.reseed(seed)
        out = aug(image=image, labels=labels)
        np.testing.assert_array_equal(out["image"][..., 0], out["labels"])


def test_strong_pipeline_keeps_large_ids_exactly() -> None:
    labels = scattered_discs() * 1000 + np.where(scattered_discs() > 0, 7, 0)  # ids up to ~30 007
    image = np.random.default_rng(0).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    aug = build_augmentation(DSB_STRONG, seed=3)
    for _ in range(10):
        lab = aug(image=image, labels=labels)["labels"]
        ids = np.unique(lab)
        assert np.isin(ids[ids <= labels.max()], np.unique(labels)).all()


def test_seeded_pipelines_repeat_and_reseed_restarts() -> None:
    labels = scattered_discs()
    image = np.random.default_rng(1).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    a, b = build_augmentation(DSB_STRONG, seed=11), build_augmentation(DSB_STRONG, seed=11)
    first = [a(image=image, labels=labels) for _ in range(3)]
    for out in first:
        again = b(image=image, labels=labels)
        np.testing.assert_array_equal(out["image"], again["image"])
        np.testing.assert_array_equal(out["labels"], again["labels"])
    a.reseed(11)
    np.testing.assert_array_equal(a(image=image, labels=labels)["image"], first[0]["image"])


def test_single_channel_images_pass_every_transform() -> None:
    labels = scattered_discs()
    image = np.random.default_rng(2).integers(0, 256, (*labels.shape, 1), dtype=np.uint8)
    spec = [{**item, "p": 1.0} for item in DSB_STRONG]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = build_augmentation(spec, seed=0)(image=image, labels=labels)
    assert out["image"].shape == image.shape and out["image"].dtype == np.uint8


def test_light_recipe_is_a_dihedral_transform() -> None:
    labels = scattered_discs()
    out = build_augmentation(LIGHT, seed=5)(
        image=np.repeat(labels.astype(np.uint8)[..., None], 3, 2), labels=labels
    )
    assert sorted(np.unique(out["labels"])) == sorted(np.unique(labels))
    assert np.bincount(out["labels"].ravel()).tolist() == np.bincount(labels.ravel()).tolist()


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'ElasticTransfrom'.*did you mean 'ElasticTransform'"):
        build_augmentation([{"name": "D4"}, {"name": "ElasticTransfrom", "alpha": 50}])
    with pytest.raises(
        ConfigError, match=r"augmentation\[0\] \(OneOf\)\.transforms\[1\].*did you mean 'Blur'"
    ):
        build_augmentation([{"name": "OneOf", "transforms": [{"name": "D4"}, {"name": "Blurr"}]}])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"name": "ElasticTransform", "alpha": -1}, r"ElasticTransform\).*alpha.*greater than or equal to 0"),
        ({"name": "D4", "p": 2}, r"D4\).*p.*less than or equal to 1"),
        ({"name": "Affine", "rotat": 10}, r"unknown parameter 'rotat' \(did you mean 'rotate'\?\)"),
        ({"name": "RandomRotate90", "k": 1}, r"RandomRotate90\): unknown parameter 'k'"),
        ({"name": "Affine", "mask_interpolation": 1}, "nearest"),
        ({"name": "CopyPasteNuclei", "margin": 1, "rim": 2}, "rim"),
        ({"name": "CopyPaste", "n_range": [3, 1]}, "n_range"),
        ({"name": "OneOf", "transforms": []}, "non-empty"),
        ({"p": 1.0}, "'name'"),
    ],
)
def test_bad_specs_fail_at_build_time(item: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_augmentation([item])


def test_call_checks_inputs() -> None:
    aug = build_augmentation(LIGHT)
    with pytest.raises(ValueError, match="H×W×C"):
        aug(image=np.zeros((8, 8), np.uint8), labels=np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="integer"):
        aug(image=np.zeros((8, 8, 3), np.uint8), labels=np.zeros((8, 8), np.float32))


def isolated_scene() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((96, 96), np.int32)
    labels[disk((20, 20), 6)] = 1  # isolated source
    labels[disk((20, 60), 5)] = 2  # 2 and 3 touch: not sources
    labels[disk((20, 70), 5)] = 3
    labels[0:6, 40:50] = 4  # touches the image edge: not a source
    labels[disk((60, 30), 2)] = 5  # too small
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (96, 96, 3), dtype=np.uint8)
    image[labels > 0] = rng.integers(150, 256, (np.count_nonzero(labels), 3), dtype=np.uint8)
    return image, labels


def test_sources_are_isolated_whole_and_large_enough() -> None:
    _, labels = isolated_scene()
    assert isolated_nuclei(labels, margin=2, min_area=16) == [1]


def test_copy_paste_adds_exact_non_overlapping_nuclei() -> None:
    image, labels = isolated_scene()
    rng = np.random.default_rng(4)
    pastes = plan_copy_paste(labels, rng, 3, margin=2, rim=1)
    assert len(pastes) == 3
    out_image, out_labels = copy_paste_nuclei(image, labels, np.random.default_rng(4), 3, margin=2, rim=1)
    assert out_labels.dtype == labels.dtype and out_image.dtype == image.dtype
    assert sorted(np.unique(out_labels)) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    pasted = out_labels > labels.max()
    assert not (labels[pasted] > 0).any()  # overlaps no original nucleus
    np.testing.assert_array_equal(out_labels[~pasted], labels[~pasted])
    for paste in pastes:
        np.testing.assert_array_equal(out_image[paste.dst][paste.nucleus], image[paste.src][paste.nucleus])
        assert (out_labels[paste.dst][paste.nucleus] == paste.new_id).all()
        # margin: the window holds only this nucleus and background around it
        assert set(np.unique(out_labels[paste.dst])) == {0, paste.new_id}
    changed = np.any(out_image != image, axis=2)
    touched = np.zeros_like(changed)
    for paste in pastes:
        touched[paste.dst] |= paste.alpha > 0
    assert not (changed & ~touched).any()  # only nuclei and their blended rims change


def test_copy_paste_without_sources_changes_nothing() -> None:
    image, labels = isolated_scene()
    labels[labels == 1] = 0
    out_image, out_labels = copy_paste_nuclei(image, labels, np.random.default_rng(0), 5)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_labels, labels)


def test_copy_paste_transform_checks_arguments() -> None:
    with pytest.raises(ValueError, match="rim"):
        CopyPasteNuclei(margin=1, rim=2)
    with pytest.raises(ValueError):
        CopyPasteNuclei(min_area=0)


def test_augmentation_grid_writes_png(tmp_path) -> None:
    image, labels = isolated_scene()
    path = augmentation_grid(
        [(image, labels), (image[..., :1], labels)],
        build_augmentation(DSB_STRONG, seed=0),
        tmp_path / "g.png",
        3,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
