"""Mask R-CNN: the model and its checkpoints, instance targets of training crops, and the whole pipeline
(`kit train` with the same trainer, MLflow logging and resume as U-Net, then `kit predict --oof` /
`--split test`, `kit evaluate`, `kit submit`) on the tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    FAST_OVERRIDES,
    empty_mlflow_store,
    inside_project,
    install_dataset,
    seed_mlflow_store,
    write_tiny_synthetic,
)

from kit import tracking
from kit.config import load_experiment
from kit.data.torch_dataset import CropDataset
from kit.errors import ConfigError
from kit.models import create_model, list_models, load_checkpoint, save_checkpoint
from kit.training.data import InstanceCrops, collate_instances

TINY = {"encoder": "test_resnet", "fpn_channels": 16, "box_head_size": 32, "max_detections": 50}


def tiny_maskrcnn(**kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("maskrcnn", **{**TINY, **kwargs}).eval()


# --------------------------------------------------------------------------------------------------
# model


@pytest.mark.parametrize("in_channels", [1, 3])
def test_maskrcnn_detects_on_any_size_without_resizing_or_pasting(in_channels: int) -> None:
    model = tiny_maskrcnn(in_channels=in_channels)
    cfg = model.kit_cfg
    assert cfg["task"] == "instance" and cfg["model_name"] == "maskrcnn"
    assert "maskrcnn" in list_models(task="instance") and "maskrcnn" not in list_models(task="semantic")
    assert (
        cfg["in_channels"] == in_channels and cfg["channels"] == ("mask",) and cfg["encoder"] == "test_resnet"
    )
    with torch.no_grad():
        (out,) = model([torch.rand(in_channels, 70, 90)])
    n = len(out["boxes"])
    assert n > 0 and out["scores"].shape == (n,)
    assert out["masks"].shape == (n, 1, 28, 28)  # per-box probabilities, pasted by kit
    assert float(out["boxes"][:, 2].max()) <= 90 and float(out["boxes"][:, 3].max()) <= 70  # native scale


def test_maskrcnn_trains_from_boxes_and_masks_including_an_empty_image() -> None:
    model = tiny_maskrcnn().train()
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 20:34] = 1
    targets = [
        {
            "boxes": torch.tensor([[20.0, 10, 33, 29]]),
            "labels": torch.ones(1, dtype=torch.int64),
            "masks": masks,
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "masks": masks[:0]},
    ]
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], targets)
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_torchvision_resnet50_keeps_torchvisions_layout() -> None:
    model = create_model("maskrcnn", in_channels=1, fpn_channels=32, box_head_size=32)
    state = model.state_dict()
    assert state["backbone.body.conv1.weight"].shape == (64, 1, 7, 7)  # grey stem
    assert (
        "backbone.fpn.inner_blocks.0.0.weight" in state
        and "roi_heads.mask_predictor.mask_fcn_logits.weight" in state
    )
    assert model.kit_cfg["encoder"] == "resnet50"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"anchor_sizes": (8, 16, 32)}, "one size per pyramid level"),
        ({"encoder": "resnet5O"}, "unknown encoder"),
        ({"in_channels": 2}, "in_channels must be 1 or 3"),
    ],
)
def test_bad_maskrcnn_settings_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model("maskrcnn", **{**TINY, **kwargs})


def test_maskrcnn_checkpoint_round_trip(tmp_path: Path) -> None:
    model = tiny_maskrcnn(in_channels=1, anchor_sizes=(4, 8, 16, 32, 64), box_nms=0.2)
    path = save_checkpoint(tmp_path / "maskrcnn.pt", model, {"name": "x"}, {"epoch": 3})
    loaded, config, extra = load_checkpoint(path)
    assert (config, extra) == ({"name": "x"}, {"epoch": 3})
    assert loaded.kit_cfg["task"] == "instance"
    assert loaded.roi_heads.nms_thresh == 0.2
    assert loaded.rpn.anchor_generator.sizes == ((4,), (8,), (16,), (32,), (64,))
    image = [torch.rand(1, 64, 64)]
    with torch.no_grad():
        expected, got = model(image)[0], loaded(image)[0]
    for key in ("boxes", "scores", "masks"):
        assert torch.equal(expected[key], got[key]), key


def test_pretrained_path_loads_the_detector_weights(tmp_path: Path) -> None:
    source = tiny_maskrcnn()
    path = save_checkpoint(tmp_path / "source.pt", source, {}, {})
    model = create_model("maskrcnn", **TINY, pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ConfigError, match=r"missing\.pth"):
        create_model("maskrcnn", **TINY, pretrained=str(tmp_path / "missing.pth"))


# --------------------------------------------------------------------------------------------------
# training crops


def test_instance_crops_build_boxes_and_masks_from_the_label_image() -> None:
    from kit.data.synthetic import generate_synthetic

    samples = generate_synthetic(2, seed=1, size=(96, 96))
    crops = CropDataset(samples, 64, channels=3, samples_per_epoch=4, seed=0)
    items = InstanceCrops(crops, None, min_area=4)
    item = items[0]
    labels = crops[0]["labels"]
    target = item["target"]
    n = len(target["boxes"])
    assert item["image"].shape == (3, 64, 64) and n > 0
    assert target["labels"].tolist() == [1] * n
    assert target["masks"].shape == (n, 64, 64) and target["masks"].dtype == torch.uint8
    ids = [i for i in np.unique(labels) if i and (labels == i).sum() >= 4]
    assert n <= len(ids)
    for box, mask in zip(target["boxes"], target["masks"].numpy().astype(bool), strict=True):
        values = np.unique(labels[mask])
        assert len(values) == 1 and values[0] > 0  # one instance per mask
        assert np.array_equal(mask, labels == values[0])  # the whole instance
        rows, cols = np.nonzero(mask)
        assert box.tolist() == [cols.min(), rows.min(), cols.max(), rows.max()]
        assert box[2] > box[0] and box[3] > box[1]  # no degenerate box
    batch = collate_instances([items[0], items[1]])
    assert len(batch["image"]) == len(batch["target"]) == len(batch["id"]) == 2


def test_instance_crops_of_an_empty_crop_have_no_instances() -> None:
    from kit.data.sample import Sample

    empty = Sample(id="empty", image=np.full((48, 48, 3), 30, np.uint8), labels=np.zeros((48, 48), np.int32))
    item = InstanceCrops(CropDataset([empty], 32, seed=0), None)[0]
    assert item["target"]["boxes"].shape == (0, 4)
    assert item["target"]["labels"].shape == (0,)
    assert item["target"]["masks"].shape == (0, 32, 32)


# --------------------------------------------------------------------------------------------------
# the whole pipeline (slow: Mask R-CNN trained, predicted, evaluated, submitted and resumed end to end)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-fold maskrcnn_tiny run (2 epochs × 2 steps) in its own project: (folder, outcome)."""
    from kit.stages.train import train_experiment

    root = seed_mlflow_store(tmp_path_factory.mktemp("maskrcnn"), empty_mlflow_store(tmp_path_factory))
    install_dataset(write_tiny_synthetic(tmp_path_factory.mktemp("src") / "synthetic"), root)
    with inside_project(root):
        outcome = train_experiment(
            load_experiment("maskrcnn_tiny", FAST_OVERRIDES), folds=[0, 1], progress=False
        )
    return root, outcome


@pytest.fixture
def cfg(trained, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(trained[0])
    return load_experiment("maskrcnn_tiny")


@pytest.mark.slow
def test_tiny_maskrcnn_trains_with_the_shared_trainer_and_logging(cfg, trained) -> None:
    _, outcome = trained
    client = tracking.configure().MlflowClient()
    assert [f.fold for f in outcome.folds] == [0, 1]
    for fold in outcome.folds:
        assert fold.epochs_run == 2 and 0.0 <= fold.best_val_map <= 1.0
        run = client.get_run(fold.run_id)
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "train_loss_mask", "train_loss_objectness", "val_map", "lr", "epoch_time"):
            assert [m.step for m in client.get_metric_history(fold.run_id, key)] == [0, 1], key
        assert "val_loss" not in run.data.metrics  # see kit.training.tasks
        artifacts = {a.path for a in client.list_artifacts(fold.run_id, "checkpoints")}
        assert artifacts == {"checkpoints/best.pt", "checkpoints/last.pt"}
        previews = {a.path for a in client.list_artifacts(fold.run_id, "previews")}
        assert "previews/augmentation_grid.png" in previews
        assert any(p.startswith("previews/val_overlay_") for p in previews)
    model, config, _ = load_checkpoint(
        client.download_artifacts(outcome.folds[0].run_id, "checkpoints/best.pt")
    )
    assert model.kit_cfg["task"] == "instance" and config["name"] == "maskrcnn_tiny"


@pytest.mark.slow
def test_predict_oof_and_test_split_write_label_images(cfg, trained) -> None:
    from kit.inference.artifacts import read_labels, read_probs
    from kit.stages.predict import predict_experiment
    from kit.tracking.schema import run_folder

    fold_runs = {str(f.fold): f.run_id for f in trained[1].folds}
    oof = predict_experiment(cfg, oof=True, progress=False)
    assert len(oof.index) == 8
    for row in oof.index.itertuples(index=False):
        assert row.model_runs == fold_runs[row.folds]  # one model, the one that did not train on it
    test = predict_experiment(cfg, split="test", tta="flips", progress=False)
    assert set(test.index["folds"]) == {"0;1"}
    root = run_folder(tracking.configure().get_run(test.run_id))
    for row in test.index.itertuples(index=False):
        labels = read_labels(root / row.labels)
        assert labels.shape == (row.height, row.width) and labels.max() == row.n_instances
        probs, channels = read_probs(root / row.probs)
        assert channels == ("mask",) and probs.shape == (1, row.height, row.width)
    instances = test.instances
    assert len(instances) == test.index["n_instances"].sum()
    assert instances["score"].between(cfg.instances.score_threshold, 1).all()


@pytest.mark.slow
def test_evaluate_and_submit_work_as_for_unet(cfg, trained, tmp_path) -> None:
    from kit.stages.evaluate import evaluate_experiment
    from kit.stages.predict import predict_experiment
    from kit.stages.submit import submit_experiment

    predict_experiment(cfg, oof=True, progress=False)
    evaluation = evaluate_experiment(
        cfg, kind="oof", n_bootstrap=0, n_worst=1, out=tmp_path / "report", track=False
    )
    assert evaluation.evaluation.summary["n_images"] == 8
    predict_experiment(cfg, split="test", progress=False)
    outcome = submit_experiment(cfg, "tiny", out_dir=tmp_path, track=False)
    assert outcome.n_images == 4 and outcome.path.is_file()


@pytest.mark.slow
def test_an_interrupted_maskrcnn_run_resumes(tmp_path_factory, monkeypatch) -> None:
    from kit.stages.train import train_experiment
    from kit.training.trainer import Trainer

    root = seed_mlflow_store(tmp_path_factory.mktemp("resume"), empty_mlflow_store(tmp_path_factory))
    install_dataset(write_tiny_synthetic(tmp_path_factory.mktemp("src") / "synthetic"), root)
    with inside_project(root):
        cfg = load_experiment("maskrcnn_tiny", [*FAST_OVERRIDES, "training.max_steps_per_epoch=1"])
        original, calls = Trainer._train_epoch, []

        def interrupted(self, epoch):
            calls.append(epoch)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return original(self, epoch)

        with monkeypatch.context() as m:
            m.setattr(Trainer, "_train_epoch", interrupted)
            with pytest.raises(KeyboardInterrupt):
                train_experiment(cfg, folds=[0], progress=False)
        from kit.tracking.schema import Role, find_role_runs

        [killed_parent] = find_role_runs("maskrcnn_tiny", Role.TRAIN, status=None)
        [killed_fold] = find_role_runs("maskrcnn_tiny", Role.TRAIN_FOLD, status=None)
        assert killed_parent.info.status == killed_fold.info.status == "KILLED"
        outcome = train_experiment(cfg, resume=True, progress=False)
        history = (
            tracking.configure().MlflowClient().get_metric_history(outcome.folds[0].run_id, "train_loss")
        )
        # The same runs went on: no second parent or fold run was made.
        assert outcome.parent_run_id == killed_parent.info.run_id
        assert outcome.folds[0].run_id == killed_fold.info.run_id
        assert len(find_role_runs("maskrcnn_tiny", Role.TRAIN_FOLD, status=None)) == 1
    assert outcome.folds[0].epochs_run == 2
    assert sorted(m.step for m in history) == [0, 1]
