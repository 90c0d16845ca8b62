"""Classical style transfer in the augmentation pipeline: reference pools, metadata keys, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import write_tiny_synthetic
from scipy.stats import wasserstein_distance

from kit.augment import build_augmentation, known_transforms
from kit.augment.domain import PixelDistributionAdaptation, adapt_pixel_distribution
from kit.data.dataset import NucleiDataset
from kit.data.normalize import normalize_image
from kit.errors import ConfigError
from kit.style import ReferencePool, StyleReferences


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> NucleiDataset:
    return NucleiDataset(write_tiny_synthetic(tmp_path_factory.mktemp("style-classical") / "synthetic"))


def style_of(dataset: NucleiDataset, channels: int) -> int:
    """The style cluster of the synthetic fluorescence (1 channel) or brightfield (3 channel) images."""
    styles = dataset.manifest.loc[dataset.manifest["channels"] == channels, "style"].unique()
    assert len(styles) == 1
    return int(styles[0])


def grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64).mean(axis=2).ravel()


@pytest.mark.parametrize(
    "step",
    [
        {"name": "HistogramMatching", "blend_ratio": [1.0, 1.0]},
        {"name": "FDA", "beta_limit": [0.05, 0.1]},
        {"name": "PixelDistributionAdaptation", "blend_ratio": [1.0, 1.0]},
    ],
    ids=lambda step: step["name"],
)
def test_transfer_moves_the_histogram_toward_the_reference_and_keeps_the_mask(dataset, step) -> None:
    brightfield = style_of(dataset, 3)
    fluorescence = dataset.manifest.query("split == 'train' and channels == 1")["id"].iloc[0]
    sample = dataset.load(fluorescence)
    image, labels = normalize_image(sample.image, 3), np.array(sample.labels, dtype=np.int32)
    references = StyleReferences(dataset, channels=3)
    pool = references.pool({"split": "test", "styles": [brightfield]})
    aug = build_augmentation(
        [{**step, "reference": {"split": "test", "styles": [brightfield]}, "p": 1.0}],
        seed=0,
        references=references,
    )

    out = aug(image=image, labels=labels)

    def distance(img: np.ndarray) -> float:
        return float(np.mean([wasserstein_distance(grey(img), grey(ref)) for ref in pool.images]))

    assert distance(out["image"]) < 0.6 * distance(image)
    np.testing.assert_array_equal(out["labels"], labels)
    assert out["image"].shape == image.shape and out["image"].dtype == np.uint8


def test_pools_draw_styles_rare_in_training_more_often(dataset) -> None:
    fluorescence, brightfield = style_of(dataset, 1), style_of(dataset, 3)
    train_fluo = dataset.manifest.query(f"split == 'train' and style == {fluorescence}")["id"].tolist()
    references = StyleReferences(dataset, channels=1, train_ids=train_fluo)  # brightfield absent in training
    pool = references.pool({"split": ["train", "test"]})
    styles = (
        dataset.manifest.set_index("id")
        .loc[dataset.manifest.query("split in ['train', 'test']")["id"], "style"]
        .to_numpy()
    )
    share = {s: pool.probabilities[styles == s].sum() for s in (fluorescence, brightfield)}
    # style s is drawn ∝ 1 / (1 + n_train(s)): brightfield 1 / 1, fluorescence 1 / (1 + 4)
    assert share[brightfield] / share[fluorescence] == pytest.approx(1 + len(train_fluo))
    assert all(image.shape[2] == 1 and image.dtype == np.uint8 for image in pool.images)
    assert references.pool({"split": ["train", "test"]}) is pool


def test_reference_draws_follow_the_seed(dataset) -> None:
    references = StyleReferences(dataset, channels=3)
    spec = [{"name": "HistogramMatching", "reference": {"split": "test"}, "p": 1.0}]
    sample = dataset.load(dataset.ids("train")[0])
    image, labels = normalize_image(sample.image, 3), np.array(sample.labels, dtype=np.int32)
    a, b = (build_augmentation(spec, seed=3, references=references) for _ in range(2))
    first = [a(image=image, labels=labels)["image"] for _ in range(4)]
    assert all(np.array_equal(x, b(image=image, labels=labels)["image"]) for x in first)
    assert len({x.tobytes() for x in first}) > 1  # different references, different results
    a.reseed(3)
    np.testing.assert_array_equal(a(image=image, labels=labels)["image"], first[0])


def test_references_work_inside_compositions() -> None:
    rng = np.random.default_rng(0)
    pool = ReferencePool([rng.integers(150, 250, (40, 40, 1), dtype=np.uint8)])

    class Source:
        def pool(self, selection):
            return pool

    step = {"name": "HistogramMatching", "reference": {"split": "test"}, "blend_ratio": [1, 1], "p": 1}
    aug = build_augmentation([{"name": "OneOf", "transforms": [step], "p": 1}], seed=0, references=Source())
    out = aug(image=rng.integers(0, 50, (32, 32, 1), dtype=np.uint8), labels=np.zeros((32, 32), np.int32))
    assert out["image"].mean() > 150


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            {"name": "FDA", "reference": {"split": "tset"}},
            r"augmentation\[0\] \(FDA\): reference: unknown split 'tset'",
        ),
        ({"name": "FDA", "reference": {"split": "test", "styles": [42]}}, r"style\(s\) \[42\] have no image"),
        ({"name": "FDA", "reference": {"split": "test", "styles": "3"}}, "styles must be a list"),
        ({"name": "FDA", "reference": {"split": "test", "style": [1]}}, "unknown key 'style'"),
        ({"name": "FDA", "reference": "test"}, "must be a mapping"),
        ({"name": "HistogramMatching"}, "needs reference images"),
        (
            {"name": "PixelDistributionAdaptation", "reference": {"split": "test"}, "metadata_key": "x"},
            "set by kit",
        ),
        (
            {"name": "HistogramMatching", "reference": {"split": "test"}, "blend_ratio": [0.9, 0.1]},
            "blend_ratio",
        ),
        ({"name": "D4", "reference": {"split": "test"}}, "unknown parameter 'reference'"),
    ],
)
def test_bad_reference_specs_fail_at_build_time(dataset, item: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_augmentation([item], references=StyleReferences(dataset, channels=3))


@pytest.mark.parametrize("transform_type", ["pca", "standard", "minmax"])
@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_distribution_adaptation_matches_reference_statistics(
    transform_type: str, channels: int
) -> None:
    # albumentations 2.0.8 returns a black image here; kit's registered subclass does not
    assert known_transforms()["PixelDistributionAdaptation"] is PixelDistributionAdaptation
    rng = np.random.default_rng(0)
    image = rng.normal(40, 10, (64, 64, channels)).clip(0, 255).astype(np.uint8)
    reference = rng.normal(170, 30, (48, 80, channels)).clip(0, 255).astype(np.uint8)
    out = adapt_pixel_distribution(image, reference, transform_type, 1.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    if transform_type == "minmax":
        np.testing.assert_allclose(
            out.reshape(-1, channels).min(0), reference.reshape(-1, channels).min(0), atol=1
        )
        np.testing.assert_allclose(
            out.reshape(-1, channels).max(0), reference.reshape(-1, channels).max(0), atol=1
        )
    else:
        assert abs(out.mean() - reference.mean()) < 2 and abs(out.std() - reference.std()) < 2
    np.testing.assert_array_equal(adapt_pixel_distribution(image, reference, transform_type, 0.0), image)


def test_reference_without_a_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a dataset"):
        build_augmentation([{"name": "FDA", "reference": {"split": "test"}}])


def test_pools_shrink_large_references(tmp_path: Path) -> None:
    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic

    root = write_dataset(
        generate_synthetic(2, 0, size=(200, 100), styles=["fluorescence"], test_fraction=0.5),
        tmp_path / "d",
        name="d",
        kind="synthetic",
        source="tests",
        k_folds=None,
        progress=False,
    )
    pool = StyleReferences(NucleiDataset(root), channels=1, max_side=50).pool({"split": "test"})
    assert [image.shape for image in pool.images] == [(50, 25, 1)]
