"""Labels made by a model (seed 004): `kit.inference.autolabel` labels images from one channel and keeps
others, records its confidence and its agreement with drawn labels; a dataset whose labels are
automatic says so in its manifest and is refused as scoring truth, while older manifests read as drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage import draw

from kit.config import ExperimentConfig
from kit.data import NucleiDataset, Sample, read_manifest, write_dataset
from kit.errors import DataError
from kit.inference.autolabel import autolabel
from kit.inference.segmenter import Segmenter
from kit.metrics import dsb_score
from kit.models import build_model


def _nuclei(rng: np.random.Generator, shape=(80, 80)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for k, (r, c) in enumerate([(20, 20), (20, 60), (60, 20), (60, 60)], start=1):
        rr, cc = draw.disk((r + rng.integers(-3, 4), c + rng.integers(-3, 4)), 9, shape=shape)
        labels[rr, cc] = k
    return labels


def _two_channel_samples(rng: np.random.Generator, n: int) -> list[Sample]:
    """Channel 1 is a nuclear stain (bright nuclei), channel 0 an unrelated pattern of stripes."""
    samples = []
    for i in range(n):
        labels = _nuclei(rng)
        stain = np.where(labels > 0, 200, 20).astype(np.uint8)
        stripes = np.tile((np.arange(80) % 16 < 8).astype(np.uint8) * 200, (80, 1))
        samples.append(Sample(f"s{i}", np.dstack([stripes, stain]), labels, split="train", source=f"s{i}"))
    return samples


def _classical() -> Segmenter:
    """The untrained classical pipeline (default parameters) on grey images."""
    cfg = ExperimentConfig(name="classical", data={"channels": 1}, model={"name": "classical"})
    return Segmenter([build_model(cfg)], cfg, device="cpu")


def test_autolabel_labels_from_one_channel_and_writes_the_others() -> None:
    rng = np.random.default_rng(0)
    samples = _two_channel_samples(rng, 3)
    model = _classical()

    result = autolabel(model, samples, source="classical", label_channel=1, image_channels=[0])

    assert len(result.samples) == 3
    for original, labelled in zip(samples, result.samples, strict=True):
        expected = model.predict(original.image[..., 1])
        assert expected.max() == 4  # the stain shows the four nuclei
        np.testing.assert_array_equal(labelled.labels, expected)
        np.testing.assert_array_equal(labelled.image, original.image[..., 0])  # the other channel
        assert labelled.label_source == "classical" and 0.5 < labelled.label_score <= 1.0
    # The drawn labels are the nuclei the stain shows: the automatic ones agree with them.
    records = result.records
    assert records["agreement"].notna().all() and result.agreement > 0.8
    assert result.agreement == pytest.approx(
        np.mean([dsb_score(s.labels, a.labels) for s, a in zip(samples, result.samples, strict=True)])
    )
    # Seen through the striped channel, the same model labels stripes, not nuclei: the channel matters.
    striped = autolabel(model, samples, source="classical", label_channel=0)
    assert striped.agreement < 0.3


def test_min_score_leaves_out_unsure_images() -> None:
    rng = np.random.default_rng(1)
    samples = _two_channel_samples(rng, 2)
    empty = Sample("blank", np.zeros((80, 80, 2), np.uint8), None, split="train", source="blank")

    result = autolabel(_classical(), [*samples, empty], source="classical", label_channel=1, min_score=0.5)

    assert [s.id for s in result.samples] == ["s0", "s1"]
    blank = result.records.set_index("image_id").loc["blank"]
    assert not blank["kept"] and np.isnan(blank["label_score"]) and np.isnan(blank["agreement"])


def test_automatic_labels_are_never_scoring_truth(tmp_path) -> None:
    from kit.stages.score import load_truth

    rng = np.random.default_rng(2)
    drawn = _two_channel_samples(rng, 2)
    automatic = autolabel(
        _classical(), _two_channel_samples(rng, 2), source="classical", label_channel=1, image_channels=[1]
    )
    for k, sample in enumerate(automatic.samples):
        sample.id, sample.split = f"auto{k}", "train"
    for sample in drawn:
        sample.split, sample.image = "test", sample.image[..., 1]
    root = write_dataset(
        [*automatic.samples, *drawn],
        tmp_path / "auto",
        name="auto",
        kind="autolabel",
        source="t",
        k_folds=None,
    )

    manifest = read_manifest(root / "manifest.csv")
    rows = manifest.set_index("id")
    assert (rows.loc[["auto0", "auto1"], "label_source"] == "classical").all()
    assert rows.loc[["auto0", "auto1"], "label_score"].between(0.5, 1.0).all()
    assert (rows.loc[["s0", "s1"], "label_source"] == "").all() and rows.loc[
        ["s0", "s1"], "label_score"
    ].isna().all()

    dataset = NucleiDataset(root)
    assert dataset.automatic_labels() == ["auto0", "auto1"]
    np.testing.assert_array_equal(dataset.truth("s0"), drawn[0].labels)  # drawn labels are truth
    with pytest.raises(DataError, match=r"'auto0' has automatic labels \(classical\)"):
        dataset.truth("auto0")
    with pytest.raises(DataError, match="automatic labels"):
        load_truth(root, split="train")
    assert set(load_truth(root, split="test")) == {"s0", "s1"}

    # A manifest written before label_source / label_score existed reads as labels drawn by hand.
    old = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    old.drop(columns=["label_source", "label_score"]).to_csv(root / "manifest.csv", index=False)
    assert NucleiDataset(root).automatic_labels() == []
