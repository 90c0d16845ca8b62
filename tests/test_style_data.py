"""Style data: `kit data styles`, `kit style fit/synth` datasets, mixing extra datasets into training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import (
    FAST_OVERRIDES,
    NO_MODEL,
    empty_mlflow_store,
    install_dataset,
    seed_mlflow_store,
    write_tiny_synthetic,
)
from typer.testing import CliRunner

from kit import tracking
from kit.cli import app
from kit.config import config_from_dict, load_experiment
from kit.data.dataset import NucleiDataset
from kit.data.torch_dataset import CropDataset
from kit.errors import ConfigError, DataError
from kit.fileio import read_image
from kit.style.report import styles_table
from kit.training.data import MixedCrops, extra_crop_sources

TINY_FIT = ["--steps", 6, "--crop", 32, "--base-channels", 8, "--depth", 3, "--batch-size", 2]


@pytest.fixture(scope="module")
def synthetic_src(tmp_path_factory) -> Path:
    return write_tiny_synthetic(tmp_path_factory.mktemp("style-src") / "synthetic")


@pytest.fixture
def project(project_dir, tmp_path_factory, synthetic_src) -> Path:
    """A project folder with an empty MLflow store and the tiny dataset at data/synthetic."""
    seed_mlflow_store(project_dir, empty_mlflow_store(tmp_path_factory))
    install_dataset(synthetic_src, project_dir)
    return project_dir


def kit(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result.stdout


def _artifacts(run_id: str, path: str | None = None) -> set[str]:
    client = tracking.configure().MlflowClient()
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= _artifacts(run_id, info.path) if info.is_dir else {info.path}
    return out


def test_style_fit_then_synth_writes_a_dataset_that_loads_like_any_other(project) -> None:
    ok(kit("style", "fit", "--data", "data/synthetic", "--clusters", "0", *TINY_FIT))
    fit = tracking.latest_run("style", tags={"kit.role": "style-fit", "kit.style": "0"})
    assert {"checkpoints/generator.pt", "fit_ids.txt", "samples/step_000006.png"} <= _artifacts(
        fit.info.run_id
    )
    assert set(fit.data.metrics) >= {"loss_d", "loss_g_adv", "loss_g_l1"}

    out = ok(kit("style", "synth", "--data", "data/synthetic", "--n", 3, "--size", 48, "--out", "data/synth"))
    assert "data.extra" in out
    synth = NucleiDataset("data/synth")
    assert synth.info["kind"] == "style-synthetic" and fit.info.run_id in synth.info["notes"][0]
    assert synth.ids() == synth.ids("train") == ["style0_0000", "style0_0001", "style0_0002"]
    assert (synth.manifest["note"] == "style-synthetic; generator-style=0").all()
    for image_id in synth.ids():
        sample = synth.load(image_id)
        assert sample.image.shape == (48, 48) and sample.labels.max() == synth.row(image_id)["n_nuclei"] > 0
    crops = CropDataset(synth, 32, channels=3)
    assert crops[0]["image"].shape == (32, 32, 3)
    run = tracking.latest_run("style", tags={"kit.role": "style-synth"})
    assert run.data.params["generator_run.style0"] == fit.info.run_id
    assert "synth_preview.png" in _artifacts(run.info.run_id)


def test_fit_learns_from_pseudo_labels_of_unannotated_images(project) -> None:
    from kit.stages.style import fit_styles

    dataset = NucleiDataset("data/synthetic")
    test_ids = dataset.ids("test")
    pseudo = {i: np.asarray(dataset.load(i).labels) for i in test_ids}  # stand-ins for predictions
    config = {"steps": 2, "crop": 32, "base_channels": 4, "depth": 3, "disc_layers": 2, "batch_size": 1}
    (outcome,) = fit_styles(
        dataset, styles=[1], splits=["test"], config=config, labels=pseudo, labels_source="predict run x"
    )
    style1 = dataset.manifest.query("split == 'test' and style == 1")["id"].tolist()
    assert outcome.n_images == len(style1) > 0
    run = tracking.configure().get_run(outcome.run_id)
    assert run.data.tags["kit.labels_source"] == "predict run x"
    with pytest.raises(DataError, match="no image with pseudo-labels"):
        fit_styles(dataset, styles=[1], splits=["train"], config=config, labels=pseudo)


def test_synth_without_a_fit_names_the_command_to_run(project) -> None:
    result = kit("style", "synth", "--data", "data/synthetic", "--clusters", "1")
    assert result.exit_code == 1 and "kit style fit --data data/synthetic" in result.stderr
    result = kit("style", "fit", "--data", "data/synthetic", "--clusters", "1,x")
    assert result.exit_code == 1 and "--clusters '1,x'" in result.stderr
    result = kit("style", "fit", "--data", "data/synthetic", "--splits", "tset")
    assert result.exit_code == 1 and "unknown split 'tset'" in result.stderr


def test_data_styles_writes_a_mosaic_and_a_table(project) -> None:
    out = ok(kit("data", "styles", "--data", "data/synthetic", "--per-style", 3))
    mosaic = Path("outputs/styles/synthetic.png")
    assert read_image(mosaic).ndim == 3 and "rare_in_train" in out
    run = tracking.latest_run("datasets", tags={"kit.command": "data styles"})
    assert _artifacts(run.info.run_id) == {"synthetic.png", "synthetic.csv"}


def test_styles_table_flags_test_styles_rare_in_training(synthetic_src) -> None:
    manifest = NucleiDataset(synthetic_src).manifest.copy()
    manifest.loc[(manifest["split"] == "train") & (manifest["style"] == 1), "split"] = "validation"
    table = styles_table(manifest).set_index("style")
    assert table.loc[1, "train %"] == 0 and table.loc[1, "rare_in_train"]
    assert table.loc[0, "train %"] == 100 and not table.loc[0, "rare_in_train"]
    manifest["style"] = -1
    with pytest.raises(DataError, match="kit data folds"):
        styles_table(manifest)


def write_extra(root: Path) -> Path:
    """4 annotated train images with ids extra_0..3 (k_folds=None, like a `kit style synth` output)."""
    from dataclasses import replace

    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic

    samples = [
        replace(s, id=f"extra_{i}", split="train")
        for i, s in enumerate(generate_synthetic(4, 5, size=(64, 64)))
    ]
    return write_dataset(
        samples, root, name="extra", kind="style-synthetic", source="tests", k_folds=None, progress=False
    )


def test_mixing_draws_crops_in_proportion_to_the_weights(synthetic_src, tmp_path) -> None:
    main = CropDataset(NucleiDataset(synthetic_src), 32, samples_per_epoch=30, seed=1)
    extra_root = write_extra(tmp_path / "extra")
    sources = extra_crop_sources([(str(extra_root), 0.5)], crop_size=32, channels=3, length=len(main), seed=1)
    mixed = MixedCrops([(main, 1.0), *sources], seed=1)
    assert len(mixed) == 30 and mixed.counts.tolist() == [20, 10]
    orders = []
    for epoch in range(2):
        mixed.set_epoch(epoch)
        from_extra = [mixed[i]["id"].startswith("extra_") for i in range(len(mixed))]
        assert sum(from_extra) == 10
        orders.append(from_extra)
    assert orders[0] != orders[1]
    mixed.set_epoch(0)
    np.testing.assert_array_equal(mixed[3]["image"], mixed[3]["image"])
    assert MixedCrops([(main, 1.0), (sources[0][0], 2.0)]).counts.tolist() == [10, 20]
    with pytest.raises(DataError, match=r"data.extra\[0\].root 'nowhere'"):
        extra_crop_sources([("nowhere", 1.0)], crop_size=32, channels=3, length=4, seed=0)


def test_config_accepts_extra_datasets_with_positive_weights() -> None:
    cfg = config_from_dict({"name": "x", "data": {"extra": [{"root": "data/synth", "weight": 0.5}]}})
    assert cfg.data.extra[0].root == "data/synth" and cfg.data.extra[0].weight == 0.5
    assert config_from_dict({"name": "x"}).data.extra == []
    with pytest.raises(ConfigError, match=r"data\.extra\.0\.weight"):
        config_from_dict({"name": "x", "data": {"extra": [{"root": "d", "weight": 0}]}})


def test_training_mixes_extra_data_and_styles_crops_from_test_references(project) -> None:
    from kit.stages.train import train_experiment

    write_extra(Path("data/extra"))
    cfg = load_experiment(
        "unet_tiny", [*FAST_OVERRIDES, NO_MODEL, "data.extra=[{root: data/extra, weight: 0.5}]"]
    )
    cfg.augmentation = [
        *cfg.augmentation,
        {"name": "HistogramMatching", "reference": {"split": "test", "styles": [1]}, "p": 0.5},
    ]
    outcome = train_experiment(cfg, folds=[0], progress=False)
    run = tracking.configure().get_run(outcome.folds[0].run_id)
    contexts = {t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert contexts == {"training", "training-extra"}
    assert run.data.tags["kit.dataset_digest"] == NucleiDataset("data/synthetic").digest
    bad = load_experiment("unet_tiny", FAST_OVERRIDES)
    bad.augmentation = [{"name": "FDA", "reference": {"split": "tset"}}]
    with pytest.raises(ConfigError, match="unknown split 'tset'"):
        train_experiment(bad, folds=[0], progress=False)
