"""The seeds' families through the CLI, exactly as unet_* and maskrcnn_*: `kit train` (a train run with a
fold child) → `kit predict --oof` / `--split test` → `kit evaluate` → `kit register`, the three stacked by
`kit ensemble`, compared by `kit compare` (values checked against `kit evaluate` of each), and the
classical pipeline used untrained (`kit predict --model classical --input DIR`, and labelling a folder)
and trained as the labeller of `kit data autolabel`, whose dataset trains but is refused as truth. Tiny
settings: plumbing, not accuracy."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO_ROOT, empty_mlflow_store, inside_project, install_dataset, seed_mlflow_store
from typer.testing import CliRunner

FAMILIES = ("classical", "pixel_forest", "deepcell")
TINY = {
    "classical": {
        "model": {"params": {"sigmas": [1.0], "methods": ["otsu"]}},
        "postprocess": {"min_size": 4, "min_area_fraction": 0.0},
        "tracking": {"log_model": True},
    },
    "pixel_forest": {
        "model": {"params": {"sigmas": [1.0, 3.5], "samples_per_class": 300, "rounds": 20}},
        "inference": {"tile": 256},
    },
    "deepcell": {
        "model": {"params": {"widths": [8, 8, 8, 8, 8], "dense": 16}},
        "data": {"crop_size": 48, "samples_per_epoch": 8},
        "augmentation": [],
        "training": {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 4, "early_stopping_patience": None},
        "postprocess": {"seed_threshold": 0.2, "mask_threshold": 0.3, "min_size": 4},
    },
}
ENSEMBLE = [
    "ensemble.bases=[classical,pixel_forest,deepcell]",
    "ensemble.split_thresholds=[0.7]",
    "ensemble.n_bags=1",
    "ensemble.n_folds=2",
    "ensemble.lightgbm.num_boost_round=10",
    "ensemble.lightgbm.min_data_in_leaf=3",
    "data.root=data/synthetic",
    "tracking.log_model=false",
]


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _kit(*args: str) -> str:
    from kit.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"kit {' '.join(args)}:\n{result.output}"
    return result.output


@pytest.fixture(scope="module")
def families(synthetic_src, tmp_path_factory):
    """A project with the tiny synthetic data where each family is trained on fold 0 and predicted out of
    fold and on the test split, then ensembled: the project folder."""
    root = tmp_path_factory.mktemp("families") / "project"
    root.mkdir()
    seed_mlflow_store(root, empty_mlflow_store(tmp_path_factory))
    install_dataset(synthetic_src, root)
    with inside_project(root):
        for name in FAMILIES:
            raw = yaml.safe_load((REPO_ROOT / "experiments" / f"{name}.yaml").read_text())
            common = {"data": {"root": "data/synthetic", "channels": 3}, "tracking": {"log_model": False}}
            (root / "experiments" / f"{name}.yaml").write_text(
                yaml.safe_dump(_merge(_merge(raw, common), TINY[name]))
            )
            _kit("train", "--exp", name, "--folds", "0")
            _kit("predict", "--exp", name, "--oof")
            _kit("predict", "--exp", name, "--split", "test")
        _kit("ensemble", "--exp", "ensemble", *(x for o in ENSEMBLE for x in ("--set", o)))
    return root


@pytest.fixture
def in_families(families, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(families)
    return families


@pytest.mark.slow
def test_each_family_trains_predicts_evaluates_and_registers(in_families) -> None:
    from kit.hub import load_segmenter
    from kit.models.classical import Classical
    from kit.models.deepcell import DeepCellFCN
    from kit.models.pixel_forest import PixelForest
    from kit.tracking.schema import find_predict_run, find_train_run, fold_runs

    kinds = {"classical": Classical, "pixel_forest": PixelForest, "deepcell": DeepCellFCN}
    for name in FAMILIES:
        train = find_train_run(name)
        (fold,) = fold_runs(train)
        assert fold.data.tags["kit.fold"] == "0" and "val_map" in fold.data.metrics
        assert find_predict_run(name, "oof").data.tags["kit.train_run_id"] == train.info.run_id
        model = load_segmenter(name, device="cpu")  # from the train run's checkpoint, tuned thresholds
        assert isinstance(model.models[0], kinds[name])
        assert "DSB mAP" in _kit("evaluate", "--exp", name, "--kind", "test")
    params = fold_runs(find_train_run("classical"))[0].data.params
    assert params["fit.sigma"] == "1.0" and params["fit.method"] == "otsu"  # what the fit chose, logged
    assert "fit_n_pixels" in fold_runs(find_train_run("pixel_forest"))[0].data.metrics
    assert "models:/classical-model/1" in _kit("register", "--exp", "classical", "--name", "classical-model")


@pytest.mark.slow
def test_the_three_families_stack_in_kit_ensemble(in_families, tmp_path) -> None:
    from kit.inference.artifacts import read_index
    from kit.tracking.schema import find_predict_run, find_role_runs, run_folder

    (run,) = find_role_runs("ensemble", "ensemble")
    assert run.data.tags["kit.base_experiments"] == "classical,pixel_forest,deepcell"
    test_run = find_predict_run("ensemble", "test")
    assert test_run.data.tags["kit.ensemble_run_id"] == run.info.run_id
    assert "DSB mAP" in _kit(
        "evaluate", "--exp", "ensemble", "--kind", "test", "--set", "data.root=data/synthetic"
    )
    # Compared with others, an ensemble's seconds per image are its own plus its bases'.
    _kit("compare", "ensemble", "classical", "--set", "data.root=data/synthetic", "--out", str(tmp_path))
    row = pd.read_csv(tmp_path / "compare.csv").iloc[0]
    runs = [test_run, *(find_predict_run(name, "test") for name in FAMILIES)]
    total = sum(read_index(run_folder(r)).set_index("image_id")["seconds"] for r in runs)
    assert row["experiment"] == "ensemble" and row["s_per_image"] == pytest.approx(total.mean())


@pytest.mark.slow
def test_compare_writes_its_table_and_plots_checked_against_evaluate(in_families, tmp_path) -> None:
    from kit.config import load_experiment
    from kit.inference.artifacts import read_index
    from kit.metrics import SIZE_BINS
    from kit.stages.evaluate import evaluate_experiment
    from kit.tracking import configure
    from kit.tracking.schema import find_predict_run, find_role_runs, run_folder

    output = _kit("compare", *FAMILIES, "--kind", "test", "--out", str(tmp_path / "cmp"))
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert list(table["experiment"]) == list(FAMILIES) and (table["images"] == 4).all()
    assert table["n_pred"].iloc[0] > 0 and table["map"].nunique() > 1  # something real to compare
    printed = {line.split()[0]: line for line in output.splitlines() if line.strip()}
    for name, value in zip(table["experiment"], table["map"], strict=True):  # one line per experiment
        assert f" {value:.3f} [" in printed[name]
    for row in table.to_dict("records"):
        name = row["experiment"]
        alone = evaluate_experiment(
            load_experiment(name), kind="test", out=tmp_path / name, n_bootstrap=1000, track=False
        ).evaluation.summary
        assert row["map"] == pytest.approx(alone["map"])
        assert [row["map_ci_low"], row["map_ci_high"]] == pytest.approx(alone["map_ci95"])
        for key in ("f1_avg", "n_pred", "merges", "splits", "extra_0.7", "precision_0.7", "recall_0.7"):
            assert row[key] == pytest.approx(alone[key]), key
        assert [row[f"missed_{b}"] for b in SIZE_BINS] == [alone["missed_0.7"][b] for b in SIZE_BINS]
        seconds = read_index(run_folder(find_predict_run(name, "test")))["seconds"]
        assert row["s_per_image"] == pytest.approx(seconds.mean()) and row["s_per_image"] > 0
    assert table["map_diff"].iloc[0] == 0.0
    assert table["map_diff"].iloc[1] == pytest.approx(table["map"].iloc[1] - table["map"].iloc[0])
    curves = pd.read_csv(tmp_path / "cmp" / "compare_curves.csv")
    assert len(curves) == 3 * 10 and curves["f1"].between(0, 1).all()
    first = curves[curves["experiment"] == "classical"].set_index("threshold")
    assert first["ap"].mean() == pytest.approx(table["map"].iloc[0])
    for name in (
        "compare_ap_vs_iou.png",
        "compare_f1_vs_iou.png",
        "compare_errors.png",
        "compare_gallery.png",
    ):
        assert (tmp_path / "cmp" / name).stat().st_size > 1000
    # One MLflow run holds the comparison and its files.
    run = find_role_runs("classical", "evaluate", max_results=50)[0]
    assert run.data.params["compare"] == "pixel_forest,deepcell"
    logged = {a.path for a in configure().MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert {"report/compare.csv", "report/compare_gallery.png", "report/compare_f1_vs_iou.png"} <= logged


@pytest.mark.slow
def test_autolabel_writes_the_models_predictions_and_is_refused_as_truth(in_families) -> None:
    from kit.cli import app
    from kit.data import NucleiDataset
    from kit.hub import load_segmenter
    from kit.tracking import find_runs

    output = _kit(
        "data", "autolabel", "--from", "classical", "--data", "data/synthetic", "--out", "data/auto"
    )
    assert "agreement with the drawn labels" in " ".join(output.split())
    auto, source = NucleiDataset("data/auto"), NucleiDataset("data/synthetic")
    model = load_segmenter("classical", device="cpu")
    train, test = auto.ids("train"), auto.ids("test")
    assert sorted(train) == sorted(source.ids("train")) and sorted(test) == sorted(source.ids("test"))
    labelled = 0
    for image_id in train:
        expected = model.predict(source.load(image_id).image)
        np.testing.assert_array_equal(auto.load(image_id).labels, expected)
        labelled += int(expected.max() > 0)
    assert labelled >= len(train) // 2  # the comparison holds nuclei
    rows = auto.manifest.set_index("id")
    assert rows.loc[train, "label_source"].str.startswith("classical").all()
    assert (rows.loc[test, "label_source"] == "").all()  # the test split keeps its drawn truth
    np.testing.assert_array_equal(auto.truth(test[0]), source.truth(test[0]))
    (run,) = find_runs("datasets", tags={"kit.role": "autolabel"})
    assert 0 <= run.data.metrics["agreement_map"] <= 1 and run.data.metrics["n_labelled"] == len(train)

    # Out-of-fold images of data/auto carry automatic labels: evaluating against them is refused.
    result = CliRunner().invoke(
        app, ["evaluate", "--exp", "classical", "--kind", "oof", "--set", "data.root=data/auto"]
    )
    assert result.exit_code == 1 and "automatic labels" in result.output and "Traceback" not in result.output


def test_classical_predicts_new_images_before_any_training(project, synthetic_src, tmp_path) -> None:
    from helpers import predicted_labels

    from kit.data import NucleiDataset
    from kit.tracking.schema import find_predict_run

    dataset = NucleiDataset(synthetic_src)
    folder = tmp_path / "new_images"
    folder.mkdir()
    chosen = dataset.ids()[:2]
    for image_id in chosen:
        shutil.copy(dataset.image_path(image_id), folder)

    output = _kit("predict", "--model", "classical", "--input", str(folder))

    assert "2 image(s)" in output
    _, labels = predicted_labels(find_predict_run("predictions", "input"))
    assert sorted(labels) == sorted(chosen) and all(lab.max() > 0 for lab in labels.values())

    # The same untrained pipeline labels a folder of unlabelled images as a new training set.
    _kit("data", "autolabel", "--from", "classical", "--input", str(folder), "--out", "data/auto")
    auto = NucleiDataset("data/auto")
    assert sorted(auto.ids("train")) == sorted(chosen) and auto.automatic_labels() == auto.ids()
    for image_id in chosen:
        np.testing.assert_array_equal(auto.load(image_id).labels, labels[image_id])


def test_the_printed_comparison_fits_a_terminal_and_keeps_names_whole() -> None:
    from rich.console import Console

    from kit.commands._common import frame_table
    from kit.commands.predict import compare_view

    table = pd.DataFrame(
        {
            "experiment": ["unet_lite0", "maskrcnn_lite0", "unet_lite0_autolabels"],
            "map": [0.6243, 0.3697, 0.6011],
            "map_ci_low": [0.543, 0.297, 0.52],
            "map_ci_high": [0.694, 0.447, 0.66],
            "map_diff": [0.0, -0.2546, -0.0232],
            "f1_avg": [0.787, 0.537, 0.77],
            "missed_rate_0.7": [0.12, 0.4, 0.15],
            "extra_0.7": [31, 80, 40],
            "merges": [4, 9, 6],
            "splits": [2, 3, 1],
            "s_per_image": [0.812, 2.31, 0.8],
        }
    )
    console = Console(width=80, record=True)
    console.print(frame_table(compare_view(table), whole=("experiment", "mAP [95% CI]"), compact=True))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {line.split()[0]: line for line in lines if line.strip()}
    assert "0.624 [0.54–0.69]" in rows["unet_lite0"] and "-0.255" in rows["maskrcnn_lite0"]
    assert "unet_lite0_autolabels" in rows and "40%" in rows["maskrcnn_lite0"]
