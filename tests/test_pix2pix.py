"""Learned style transfer: condition images, layouts from masks, a tiny pix2pix fit, rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kit.data.normalize import normalize_image
from kit.data.synthetic import generate_synthetic
from kit.errors import ConfigError, DataError
from kit.models import create_model, load_checkpoint, save_checkpoint
from kit.style.layouts import LayoutSampler, condition_image, dihedral, nucleus_groups
from kit.style.pix2pix import (
    Generator,
    PatchDiscriminator,
    Pix2PixConfig,
    create_generator,
    load_generator,
    render,
    save_generator,
    train_pix2pix,
)
from kit.style.synth import synthesize_samples

TINY = {
    "base_channels": 8,
    "depth": 3,
    "disc_layers": 2,
    "crop": 48,
    "batch_size": 4,
    "lr": 2e-3,
    "log_every": 10,
}


@pytest.fixture(scope="module")
def fluorescence() -> list:
    return generate_synthetic(4, seed=0, size=(96, 96), styles=["fluorescence"])


@pytest.fixture(scope="module")
def fitted(fluorescence):
    pairs = [(normalize_image(s.image, 1), np.asarray(s.labels)) for s in fluorescence]
    logged, sampled = [], []
    result = train_pix2pix(
        pairs,
        Pix2PixConfig(channels=1, steps=40, sample_every=20, **TINY),
        on_log=lambda step, losses: logged.append((step, losses)),
        on_sample=lambda step, generator: sampled.append((step, generator.training)),
    )
    return result, logged, sampled


def touching_squares() -> np.ndarray:
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2
    return labels


def test_condition_image_marks_foreground_boundaries_and_centres() -> None:
    labels = touching_squares()
    cond = condition_image(labels)
    assert cond.shape == (20, 30, 3) and cond.dtype == np.float32
    assert cond.min() >= 0 and cond.max() <= 1
    np.testing.assert_array_equal(cond[..., 0], labels > 0)
    assert cond[10, 14, 1] == 1 and cond[10, 15, 1] == 1  # the shared edge is a boundary on both sides
    assert cond[10, 10, 1] == 0 and (cond[..., 1][labels == 0] == 0).all()
    for label in (1, 2):  # distance peaks at 1 inside each nucleus, lowest on its rim
        inside = cond[..., 2][labels == label]
        assert inside.max() == 1 and inside.min() < 0.3


def test_nucleus_groups_skip_groups_cut_by_the_edge() -> None:
    labels = touching_squares()
    labels[0:3, 0:3] = 3  # touches the image edge
    groups = nucleus_groups(labels)
    assert len(groups) == 1 and sorted(np.unique(groups[0])) == [1, 2] and groups[0].shape == (10, 20)
    assert [dihedral(groups[0], k).shape for k in range(8)] == [(10, 20), (20, 10)] * 4


def test_layouts_rearrange_whole_nuclei_without_touching_groups(fluorescence) -> None:
    sources = [s.labels for s in fluorescence]
    sampler = LayoutSampler(sources, margin=2)
    areas = {int(a) for labels in sources for a in np.bincount(labels.ravel())[1:]}
    rng = np.random.default_rng(0)
    for _ in range(5):
        layout = sampler.sample((80, 64), rng)
        assert layout.shape == (80, 64) and layout.dtype == np.int32
        ids = np.unique(layout)[1:]
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
        inner = [
            a for label, a in enumerate(np.bincount(layout.ravel())[1:], 1) if not _on_edge(layout, label)
        ]
        assert inner and all(a in areas for a in inner)  # whole nuclei keep their source area
        assert 0.5 * min(sampler.coverages) < (layout > 0).mean() < 1.5 * max(sampler.coverages)


def _on_edge(labels: np.ndarray, label: int) -> bool:
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return bool((edge == label).any())


def test_layouts_need_a_whole_nucleus() -> None:
    with pytest.raises(DataError, match="no whole nucleus"):
        LayoutSampler([np.ones((8, 8), np.int32)])


@pytest.mark.parametrize(("depth", "size"), [(1, (8, 6)), (3, (48, 32)), (5, (64, 96))])
def test_networks_keep_the_spatial_size(depth: int, size: tuple[int, int]) -> None:
    generator = Generator(out_channels=3, base_channels=4, depth=depth)
    out = generator(torch.zeros(2, 3, *size))
    assert out.shape == (2, 3, *size) and out.abs().max() <= 1
    logits = PatchDiscriminator(image_channels=3, base_channels=4, layers=2)(
        torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 64)
    )
    assert logits.shape[:2] == (2, 1) and logits.shape[2] > 1


def test_tiny_pix2pix_learns_bright_fluorescent_nuclei(fitted, fluorescence) -> None:
    result, logged, sampled = fitted
    assert [step for step, _ in logged] == [10, 20, 30, 40]
    assert set(logged[0][1]) == {"loss_d", "loss_g_adv", "loss_g_l1"}
    assert logged[-1][1]["loss_g_l1"] < 0.5 * logged[0][1]["loss_g_l1"]
    assert sampled == [(20, False), (40, False)]

    labels = fluorescence[0].labels[:70, :58]  # not a multiple of 2**depth
    image = render(result.generator, labels)
    assert image.shape == (70, 58, 1) and image.dtype == np.uint8
    assert image[labels > 0].mean() > image[labels == 0].mean() + 60


def test_synthesised_samples_carry_their_layout_as_labels(fitted, fluorescence) -> None:
    sampler = LayoutSampler([s.labels for s in fluorescence])
    samples = synthesize_samples(
        fitted[0].generator, sampler, 3, size=(64, 64), rng=np.random.default_rng(1), style=2, source="test"
    )
    assert [s.id for s in samples] == ["style2_0000", "style2_0001", "style2_0002"]
    for s in samples:
        assert s.image.shape == (64, 64) and s.labels.shape == (64, 64) and s.split == "train"
        assert s.note == "style-synthetic; generator-style=2"
        assert s.image[s.labels > 0].mean() > s.image[s.labels == 0].mean()


def test_generator_checkpoint_round_trip(fitted, tmp_path: Path) -> None:
    result = fitted[0]
    path = save_generator(result.generator, result.config, tmp_path / "g.pt", style=2, ids=["a"])
    generator, meta = load_generator(path)
    assert meta == {"style": 2, "ids": ["a"]}
    labels = touching_squares()
    np.testing.assert_array_equal(render(generator, labels), render(result.generator, labels))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a kit pix2pix generator"):
        load_generator(tmp_path / "bad.pt")


def test_generator_checkpoint_is_a_kit_checkpoint(fitted, tmp_path: Path) -> None:
    """One checkpoint format: a generator file is a `kit.models.checkpoint` file, and a segmentation
    model's checkpoint is not taken for a generator."""
    result = fitted[0]
    path = save_generator(result.generator, result.config, tmp_path / "g.pt", style=2)
    generator, config, extra = load_checkpoint(path, create=create_generator)
    assert isinstance(generator, Generator) and not generator.training
    assert Pix2PixConfig(**config) == result.config and extra == {"style": 2}
    unet = create_model("unet", encoder="test_resnet", decoder_channels=(16, 16, 16, 16, 16))
    other = save_checkpoint(tmp_path / "unet.pt", unet, {})
    with pytest.raises(DataError, match=r"not a kit pix2pix generator.*holds model 'unet'"):
        load_generator(other)


def test_config_and_inputs_are_checked() -> None:
    with pytest.raises(ConfigError, match="multiple of 2\\*\\*depth"):
        Pix2PixConfig(crop=100, depth=3)
    with pytest.raises(DataError, match="uint8 H×W×1"):
        train_pix2pix(
            [(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.int32))],
            Pix2PixConfig(channels=1, **TINY),
        )
