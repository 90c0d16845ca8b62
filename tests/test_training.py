"""Training stage: schedules, fold split, training crops, a model that learns, and `train_experiment`
tracked in MLflow (parent run, fold runs, metrics, artifacts, checkpoints, resume, leaderboard)."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import FAST_OVERRIDES, NO_MODEL, REPO_ROOT, install_dataset, sha256

from kit import tracking
from kit.config import load_experiment
from kit.data.dataset import NucleiDataset
from kit.data.torch_dataset import CropDataset
from kit.errors import ConfigError, DataError, RunNotFoundError
from kit.models import create_model, load_checkpoint
from kit.training.data import TrainingCrops, fold_ids
from kit.training.optim import lr_factor

METRICS = ("train_loss", "val_loss", "val_map", "lr", "epoch_time")


@pytest.fixture
def in_trained(in_trained_project):
    """Work inside the session's trained project (conftest): (folder, config, outcome); read only."""
    return in_trained_project.root, in_trained_project.config, in_trained_project.outcome


def _client():
    return tracking.configure().MlflowClient()


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    """All artifact file paths of a run, recursively."""
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out |= _artifact_paths(client, run_id, info.path)
        else:
            out.add(info.path)
    return out


# --------------------------------------------------------------------------------------------------
# learning-rate schedule


def test_warmup_is_linear_up_to_the_base_rate() -> None:
    factors = [lr_factor(s, 100, schedule="cosine", warmup_steps=10) for s in range(10)]
    assert factors == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(10, 100, schedule="cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(3, 100, schedule="constant", warmup_steps=4) == pytest.approx(1.0)
    assert lr_factor(50, 100, schedule="constant", warmup_steps=4) == 1.0


def test_cosine_decays_monotonically_to_min_factor() -> None:
    factors = [lr_factor(s, 100, schedule="cosine", warmup_steps=10, min_factor=0.05) for s in range(10, 101)]
    assert factors[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors))
    assert factors[-1] == pytest.approx(0.05)
    # half way through the decay the factor is half way between 1 and min_factor
    assert lr_factor(55, 100, schedule="cosine", warmup_steps=10, min_factor=0.05) == pytest.approx(0.525)
    assert lr_factor(500, 100, schedule="cosine", min_factor=0.05) == pytest.approx(
        0.05
    )  # stays at the floor


def test_step_schedule_decays_by_gamma_every_step_size() -> None:
    got = [lr_factor(s, 100, schedule="step", step_size=10, gamma=0.5) for s in (0, 9, 10, 19, 20, 35)]
    assert got == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.125])
    # after a warm-up the step counter starts at the end of warm-up
    assert lr_factor(14, 100, schedule="step", warmup_steps=5, step_size=10, gamma=0.1) == pytest.approx(1.0)
    assert lr_factor(15, 100, schedule="step", warmup_steps=5, step_size=10, gamma=0.1) == pytest.approx(0.1)


def test_unknown_schedule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown schedule 'linear'.*cosine, step, constant"):
        lr_factor(5, 100, schedule="linear")


# --------------------------------------------------------------------------------------------------
# folds and training crops


def test_fold_ids_split_annotated_train_images_by_fold(synthetic_src) -> None:
    dataset = NucleiDataset(synthetic_src)
    manifest = dataset.manifest
    annotated_train = set(manifest.loc[(manifest["split"] == "train") & manifest["n_nuclei"].notna(), "id"])
    assert len(annotated_train) == 8
    seen_val: set[str] = set()
    for fold in (0, 1):
        train, val = fold_ids(dataset, fold)
        assert set(val) == set(manifest.loc[manifest["fold"] == fold, "id"])
        assert val and train
        assert not set(train) & set(val)
        assert set(train) | set(val) == annotated_train
        seen_val |= set(val)
    assert seen_val == annotated_train  # every train image is validated exactly once over the folds
    with pytest.raises(DataError, match="fold 2 does not exist"):
        fold_ids(dataset, 2)


def test_fold_ids_without_folds_points_to_kit_data_folds(tmp_path) -> None:
    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic

    root = write_dataset(
        generate_synthetic(4, seed=0, size=(32, 32)),
        tmp_path / "nofolds",
        name="nofolds",
        kind="synthetic",
        source="tests",
        k_folds=None,
        progress=False,
    )
    with pytest.raises(DataError, match=r"no folds assigned.*kit data folds"):
        fold_ids(NucleiDataset(root), 0)


@pytest.fixture(scope="module")
def crop_samples():
    from kit.data.synthetic import generate_synthetic

    return generate_synthetic(4, seed=1, size=(96, 96))


def _first_with_border(dataset: TrainingCrops) -> int:
    for i in range(len(dataset)):
        if dataset[i]["targets"][1].sum() > 0:
            return i
    raise AssertionError("no crop with touching-border pixels; pick another seed")


def test_training_crops_items(crop_samples) -> None:
    crops = CropDataset(crop_samples, 64, channels=3, samples_per_epoch=8, seed=0)
    items = TrainingCrops(crops, None)
    assert len(items) == 8
    item = items[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert item["image"].max() > item["image"].min()
    assert item["targets"].shape == (3, 64, 64)
    assert set(torch.unique(item["targets"]).tolist()) <= {0.0, 1.0}
    assert torch.equal(item["targets"].sum(0), torch.ones(64, 64))
    assert torch.equal(item["weights"], torch.ones(64, 64))  # border_weight 1: uniform weights
    assert item["id"] in {s.id for s in crop_samples}
    # targets come from the crop's own labels: body = nuclei minus border, every nucleus pixel is body or border
    nuclei = torch.from_numpy(crops[0]["labels"] > 0)
    body, border = item["targets"][0].bool(), item["targets"][1].bool()
    assert body.any() and torch.equal(body, nuclei & ~border)
    assert (body | border)[nuclei].all()
    grey = TrainingCrops(CropDataset(crop_samples, 64, channels=1, seed=0), None)[0]
    assert grey["image"].shape == (1, 64, 64)


def test_training_crops_with_mask_channel_and_border_weights(crop_samples) -> None:
    crops = CropDataset(crop_samples, 64, channels=3, samples_per_epoch=16, seed=0)
    items = TrainingCrops(crops, None, include_mask=True, border_weight=5.0)
    index = _first_with_border(items)
    item, nuclei = items[index], torch.from_numpy(crops[index]["labels"] > 0)
    targets, weights = item["targets"], item["weights"]
    assert targets.shape == (4, 64, 64)
    assert torch.equal(targets[:3].sum(0), torch.ones(64, 64))
    assert torch.equal(targets[3].bool(), nuclei)  # mask = whole nuclei, the border not carved out
    assert torch.equal(targets[0].bool(), nuclei & (targets[1] == 0))
    border = targets[1] == 1
    assert torch.equal(weights > 1, border)
    assert torch.all(weights[border] == 5.0) and torch.all(weights[~border] == 1.0)


def test_training_crops_are_reproducible_per_epoch(crop_samples) -> None:
    def crops_of(epoch: int) -> torch.Tensor:
        items = TrainingCrops(CropDataset(crop_samples, 48, samples_per_epoch=4, seed=3), None)
        items.set_epoch(epoch)
        return torch.stack([items[i]["image"] for i in range(4)])

    assert torch.equal(crops_of(1), crops_of(1))
    assert not torch.equal(crops_of(0), crops_of(1))


# --------------------------------------------------------------------------------------------------
# a tiny model learns


def test_tiny_unet_overfits_one_image() -> None:
    from kit.data.synthetic import generate_synthetic
    from kit.training.losses import SegmentationLoss

    torch.manual_seed(0)
    model = create_model("unet", encoder="test_resnet", encoder_depth=3, decoder_channels=[16, 8, 8]).train()
    item = TrainingCrops(CropDataset(generate_synthetic(1, seed=3, size=(64, 64)), 64, seed=0), None)[0]
    image, targets = item["image"][None], item["targets"][None]
    assert targets[0, 0].sum() > 0  # there are nuclei to learn
    loss_fn = SegmentationLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = loss_fn(model(image), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


# --------------------------------------------------------------------------------------------------
# train_experiment in MLflow


def test_train_experiment_returns_parent_and_fold_outcomes(in_trained) -> None:
    _, _, outcome = in_trained
    assert outcome.experiment == "unet_tiny"
    assert len(outcome.parent_run_id) == 32
    assert [f.fold for f in outcome.folds] == [0, 1]
    for fold in outcome.folds:
        assert fold.epochs_run == 2
        assert 0 <= fold.best_epoch < 2
        assert 0.0 <= fold.best_val_map <= 1.0
        assert fold.run_id != outcome.parent_run_id
    assert outcome.val_maps == [f.best_val_map for f in outcome.folds]


def test_train_experiment_logs_parent_and_child_runs(in_trained) -> None:
    root, cfg, outcome = in_trained
    client = _client()
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kit.role"] == "train"
    assert parent.data.tags["kit.folds"] == "0,1"
    assert parent.data.tags["kit.experiment"] == "unet_tiny"
    assert parent.data.params["training.lr"] == str(cfg.training.lr)
    assert "cv_val_map_mean" in parent.data.metrics
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`kit.parent_run_id` = '{outcome.parent_run_id}'"
    )
    assert sorted(c.data.tags["kit.fold"] for c in children) == ["0", "1"]
    digest = sha256(root / "data" / "synthetic" / "manifest.csv")
    n_params = sum(
        p.numel()
        for p in create_model(
            "unet", encoder="resnet18", encoder_depth=3, decoder_channels=[32, 16, 8]
        ).parameters()
    )
    by_fold = {int(c.data.tags["kit.fold"]): c for c in children}
    for fold, child in by_fold.items():
        run_id = child.info.run_id
        assert run_id == outcome.folds[fold].run_id
        assert child.info.status == "FINISHED"
        tags, params = child.data.tags, child.data.params
        assert tags["kit.parent_run_id"] == outcome.parent_run_id
        assert tags["mlflow.parentRunId"] == outcome.parent_run_id
        assert tags["kit.dataset_digest"] == digest
        assert tags["kit.n_params"] == str(n_params)
        assert params["training.lr"] == str(cfg.training.lr)
        assert params["training.epochs"] == "2"
        assert params["data.crop_size"] == "64"
        assert params["fold"] == str(fold)
        assert params["epochs_run"] == "2"
        for key in METRICS:
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == [0, 1], key
            assert all(math.isfinite(m.value) for m in history), key
        assert all(0.0 <= m.value <= 1.0 for m in client.get_metric_history(run_id, "val_map"))
        assert child.data.metrics["best_val_map"] == pytest.approx(outcome.folds[fold].best_val_map)
        artifacts = _artifact_paths(client, run_id)
        assert {
            "config.yaml",
            "checkpoints/best.pt",
            "checkpoints/last.pt",
            "previews/targets_preview.png",
            "previews/augmentation_grid.png",
        } <= artifacts
        assert any(p.startswith("previews/val_overlay_") and p.endswith(".png") for p in artifacts)
        logged = client.download_artifacts(run_id, "config.yaml")
        assert load_experiment(logged).model_dump() == cfg.model_dump()


@pytest.mark.slow  # a fresh interpreter; the import contracts check the same statically (pyproject.toml)
def test_best_checkpoint_loads_without_training_code(in_trained) -> None:
    _, _, outcome = in_trained
    best = _client().download_artifacts(outcome.folds[0].run_id, "checkpoints/best.pt")
    script = (
        "import sys, torch\n"
        "from kit.models import load_checkpoint\n"
        f"model, config, extra = load_checkpoint({best!r})\n"
        "with torch.no_grad():\n"
        "    out = model(torch.rand(1, 3, 64, 64))\n"
        "assert tuple(out.shape) == (1, 3, 64, 64), out.shape\n"
        "assert config['name'] == 'unet_tiny', config['name']\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('kit.training') or m == 'mlflow')\n"
        "assert not loaded, loaded\n"
        "print('ok', extra['epoch'])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", str(outcome.folds[0].best_epoch)]
    model, _, _ = load_checkpoint(best)
    assert model.kit_cfg["channels"] == ("body", "border", "background")


def test_leaderboard_lists_the_finished_run(in_trained) -> None:
    from kit.stages.runs import leaderboard

    _, _, outcome = in_trained
    table = leaderboard()
    assert len(table) == 1
    row = table.iloc[0]
    assert row["experiment"] == "unet_tiny"
    assert row["run"] == outcome.parent_run_id[:8]
    assert row["folds"] == "0,1"
    assert row["status"] == "FINISHED"
    assert row["epochs"] == 4
    maps = outcome.val_maps
    assert row["val mAP"] == f"{np.mean(maps):.4f} ± {np.std(maps):.4f}"
    assert leaderboard("no_such_experiment").empty


# --------------------------------------------------------------------------------------------------
# resume


def _interrupt_second_epoch(monkeypatch) -> None:
    from kit.training.trainer import Trainer

    original = Trainer._train_epoch
    calls = []

    def flaky(self, epoch):
        calls.append(epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", flaky)


def _final_weights(client, run_id: str) -> dict[str, torch.Tensor]:
    model, _, extra = load_checkpoint(client.download_artifacts(run_id, "checkpoints/last.pt"))
    assert extra["epoch"] == 2
    return model.state_dict()


def test_resume_continues_an_interrupted_run(project, synthetic_src, monkeypatch) -> None:
    from kit.stages.train import train_experiment

    install_dataset(synthetic_src, project)
    overrides = ["training.epochs=3", "training.max_steps_per_epoch=2", "data.crop_size=64", NO_MODEL]
    cfg = load_experiment("unet_tiny", overrides)
    client = _client()

    with monkeypatch.context() as m:
        _interrupt_second_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            train_experiment(cfg, folds=[0], progress=False)
    runs = tracking.find_runs("unet_tiny", status=None)
    assert len(runs) == 2
    parent = next(r for r in runs if r.data.tags["kit.role"] == "train")
    child = next(r for r in runs if r.data.tags["kit.role"] == "train-fold")
    assert parent.info.status == "KILLED" and child.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [0]

    # resume from a config that would train other folds: the run's own config and folds win
    other = load_experiment("unet_tiny", [*overrides, "training.epochs=9", "training.folds=[1]"])
    outcome = train_experiment(other, resume=True, progress=False)
    assert outcome.parent_run_id == parent.info.run_id
    assert [f.fold for f in outcome.folds] == [0]
    assert outcome.folds[0].run_id == child.info.run_id
    history = client.get_metric_history(child.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    runs = tracking.find_runs("unet_tiny", status=None)
    assert len(runs) == 2, "resume must not start new fold runs"
    assert {r.info.run_id: r.info.status for r in runs} == {
        parent.info.run_id: "FINISHED",
        child.info.run_id: "FINISHED",
    }
    assert client.get_run(parent.info.run_id).data.tags["kit.folds"] == "0"
    assert client.get_run(child.info.run_id).data.params["epochs_run"] == "3"

    # the same seed without an interruption ends with the same weights
    straight = load_experiment("unet_tiny", [*overrides, "tracking.experiment=unet_tiny_straight"])
    reference = train_experiment(straight, folds=[0], progress=False)
    expected = _final_weights(client, reference.folds[0].run_id)
    got = _final_weights(client, child.info.run_id)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    straight_loss = [
        m.value
        for m in sorted(
            client.get_metric_history(reference.folds[0].run_id, "train_loss"), key=lambda m: m.step
        )
    ]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(straight_loss, rel=1e-6)


def test_resume_with_nothing_to_resume(project) -> None:
    from kit.stages.train import train_experiment

    cfg = load_experiment("unet_tiny", FAST_OVERRIDES)
    with pytest.raises(RunNotFoundError, match="nothing to resume: experiment 'unet_tiny' has no unfinished"):
        train_experiment(cfg, resume=True, progress=False)
    # a finished training run is not resumable either
    with tracking.start_run("unet_tiny", "train", tags={"kit.role": "train"}):
        pass
    with pytest.raises(RunNotFoundError, match="nothing to resume"):
        train_experiment(cfg, resume=True, progress=False)


def test_missing_dataset_is_a_data_error_with_a_hint(project_dir) -> None:
    from kit.stages.train import train_experiment

    cfg = load_experiment("unet_tiny", [*FAST_OVERRIDES, "data.root=data/missing"])
    with pytest.raises(DataError, match=r"data.root 'data/missing' is not a kit dataset.*kit data synth"):
        train_experiment(cfg, progress=False)
    assert not (project_dir / "mlruns").exists()  # failed before any run was started


BUDGET_OVERRIDES = [
    "training.epochs=1000",
    "training.max_minutes=1",
    "training.max_steps_per_epoch=2",
    "training.val_every=1000",
    "data.crop_size=64",
    NO_MODEL,
]
"""A 1-minute budget that ends training long before its epochs, validating only the budget's last one."""


def test_a_budget_that_runs_out_while_an_epoch_is_logged_still_validates_and_keeps_a_best(
    project, synthetic_src, monkeypatch
) -> None:
    """The budget can run out after an epoch was judged not to be the last (uploading its checkpoint
    takes time): training then runs one more step and validates it, so the fold keeps a best
    checkpoint that prediction can load (`kit demo --minutes 1` lost its folds this way)."""
    import kit.training.trainer as trainer_module
    from kit.stages.train import train_experiment

    install_dataset(synthetic_src, project)
    clock = [0.0]
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: clock[0])
    logged = trainer_module.Trainer._after_epoch

    def slow_logging(self, epoch, record):  # the first epoch's logging crosses the whole budget
        logged(self, epoch, record)
        clock[0] += 1000.0

    monkeypatch.setattr(trainer_module.Trainer, "_after_epoch", slow_logging)
    outcome = train_experiment(load_experiment("unet_tiny", BUDGET_OVERRIDES), folds=[0], progress=False)
    fold = outcome.folds[0]
    assert fold.epochs_run == 2  # the unvalidated epoch and one step more, validated
    val = _client().get_metric_history(fold.run_id, "val_map")
    assert [m.step for m in val] == [1]
    assert "checkpoints/best.pt" in {a.path for a in _client().list_artifacts(fold.run_id, "checkpoints")}


def test_time_budget_stops_training_and_spans_the_cosine(project, synthetic_src, monkeypatch, capsys) -> None:
    """training.max_minutes: with a clock that advances 1 s per reading, a 1-minute budget ends training
    long before its 1000 epochs, the learning rate has decayed to its floor by then, the last epoch
    is validated, and progress shows the minutes spent and left rather than an epoch total."""
    import kit.training.trainer as trainer_module
    from kit.stages.train import train_experiment

    install_dataset(synthetic_src, project)
    now = itertools.count(step=1.0)
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(now)))
    cfg = load_experiment("unet_tiny", BUDGET_OVERRIDES)
    outcome = train_experiment(cfg, folds=[0], progress=True)
    fold = outcome.folds[0]
    assert 1 < fold.epochs_run < 60
    shown = capsys.readouterr()
    lines = [line for line in shown.out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == fold.epochs_run and "/1000" not in shown.out + shown.err
    assert lines[0].startswith("epoch 1 · ") and " of 1.0 min, " in lines[0] and " left: " in lines[0]
    history = _client().get_metric_history(fold.run_id, "lr")
    lrs = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert lrs == sorted(lrs, reverse=True)  # no warm-up in unet_tiny: a pure decay
    base = cfg.training.lr
    assert lrs[0] > 0.5 * base and lrs[-1] < 0.02 * base  # the cosine ran its whole course to its floor
    val = _client().get_metric_history(fold.run_id, "val_map")
    assert [m.step for m in val] == [fold.epochs_run - 1]  # only the budget's last epoch, not every 1000th
