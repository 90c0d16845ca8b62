"""`kit train` as a library call: K folds of one experiment as one MLflow parent run with a child per fold.

Each child run logs the flattened config as params, per-epoch train/val loss, val mAP, learning rate and
epoch time, and as artifacts the resolved config, target and augmentation previews, the best and last
checkpoints (`state_dict` + config, loadable with `kit.models.load_checkpoint`) and a validation overlay.
`resume=True` continues the newest unfinished parent run: finished folds are kept, interrupted folds go
on from their last checkpoint in the same child run.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kit import tracking
from kit.config import ExperimentConfig, config_from_dict
from kit.data.dataset import NucleiDataset
from kit.data.normalize import normalize_image
from kit.data.torch_dataset import CropDataset
from kit.errors import ConfigError, DataError, RunNotFoundError
from kit.training.distributed import DistContext

log = logging.getLogger(__name__)

PARENT_ROLE = "train"
FOLD_ROLE = "train-fold"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class FoldOutcome:
    fold: int
    run_id: str
    best_val_map: float
    best_epoch: int
    epochs_run: int


@dataclass
class TrainOutcome:
    parent_run_id: str
    experiment: str
    folds: list[FoldOutcome] = field(default_factory=list)

    @property
    def val_maps(self) -> list[float]:
        return [f.best_val_map for f in self.folds]


def open_dataset(cfg: ExperimentConfig) -> NucleiDataset:
    """The experiment's dataset, with a hint when it has not been created yet."""
    root = Path(cfg.data.root)
    if not (root / "manifest.csv").is_file():
        raise DataError(
            f"data.root '{root}' is not a kit dataset (no manifest.csv); create it with `kit data synth`, "
            f"`kit data import ...`, or point the experiment at one with --set data.root=PATH"
        )
    return NucleiDataset(root)


def resolve_folds(dataset: NucleiDataset, folds: list[int] | str | None, cfg: ExperimentConfig) -> list[int]:
    """Fold numbers to train: explicit list, "all" (every fold of the manifest) or the config's list."""
    available = sorted(int(f) for f in dataset.manifest["fold"].unique() if f >= 0)
    if not available:
        raise DataError(f"{dataset.root}: no folds assigned; run `kit data folds --data {dataset.root}`")
    chosen = available if folds == "all" else list(folds) if folds is not None else list(cfg.training.folds)
    unknown = [f for f in chosen if f not in available]
    if unknown:
        raise ConfigError(f"fold(s) {unknown} not in {dataset.root} (folds: {available})")
    return chosen


def build_model(cfg: ExperimentConfig):
    """The experiment's network from the model registry (output channels from `cfg.targets` for the
    builders that take them: semantic models)."""
    from kit.models import create_model
    from kit.models.registry import model_arguments
    from kit.targets import target_channels

    kwargs = {
        "encoder": cfg.model.encoder,
        "in_channels": cfg.data.channels,
        "pretrained": cfg.model.pretrained,
    }
    if "channels" in model_arguments(cfg.model.name):
        kwargs["channels"] = target_channels(cfg.targets.include_mask)
    return create_model(cfg.model.name, **kwargs, **cfg.model.params)


def train_experiment(
    cfg: ExperimentConfig,
    *,
    folds: list[int] | str | None = None,
    resume: bool = False,
    command: str = "train",
    progress: bool = True,
) -> TrainOutcome:
    """Train the folds of `cfg`; see the module docstring."""
    dist = DistContext.from_environment()
    experiment = cfg.mlflow_experiment
    parent_id = None
    if resume:
        parent_id, cfg = _resumable_parent(experiment) if dist.is_main else (None, cfg)
        parent_id, cfg_dict = dist.broadcast_object((parent_id, cfg.to_dict()))
        cfg = config_from_dict(cfg_dict, "resumed run's config")
    dataset = open_dataset(cfg)
    fold_list = resolve_folds(dataset, folds, cfg)
    if not dist.is_main:
        for fold in fold_list:
            _train_fold(cfg, dataset, fold, dist, child_run=None, progress=False)
        return TrainOutcome(parent_run_id="", experiment=experiment)

    import mlflow

    tags = {"kit.role": PARENT_ROLE, "kit.folds": ",".join(map(str, fold_list))}
    with tracking.start_run(
        experiment, command, run_name=f"{cfg.name}", tags=tags, run_id=parent_id
    ) as parent:
        outcome = TrainOutcome(parent_run_id=parent.info.run_id, experiment=experiment)
        if parent_id is None:
            mlflow.log_text(cfg.to_yaml(), "config.yaml")
            mlflow.log_params({k: v[:500] for k, v in cfg.flat_params().items()})
            tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="training")
        for fold in fold_list:
            outcome.folds.append(_run_fold(cfg, dataset, fold, dist, parent.info.run_id, command, progress))
        maps = [m for m in outcome.val_maps if math.isfinite(m)]
        if maps:
            mlflow.log_metrics(
                {"cv_val_map_mean": float(np.mean(maps)), "cv_val_map_std": float(np.std(maps))}
            )
    return outcome


def _resumable_parent(experiment: str) -> tuple[str, ExperimentConfig]:
    runs = [
        r
        for r in tracking.find_runs(experiment, tags={"kit.role": PARENT_ROLE}, status=None, max_results=50)
        if r.info.status != "FINISHED"
    ]
    if not runs:
        raise RunNotFoundError(f"nothing to resume: experiment '{experiment}' has no unfinished training run")
    run = runs[0]
    import mlflow

    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml")
    cfg = config_from_dict(yaml.safe_load(text), f"config.yaml of run {run.info.run_id}")
    cfg.training.folds = [
        int(f) for f in run.data.tags.get("kit.folds", "").split(",") if f
    ] or cfg.training.folds
    return run.info.run_id, cfg


def _run_fold(
    cfg: ExperimentConfig,
    dataset: NucleiDataset,
    fold: int,
    dist: DistContext,
    parent_id: str,
    command: str,
    progress: bool,
) -> FoldOutcome:

    existing = tracking.find_runs(
        cfg.mlflow_experiment, tags={"kit.parent_run_id": parent_id, "kit.fold": str(fold)}, status=None
    )
    previous = existing[0] if existing else None
    if previous is not None and previous.info.status == "FINISHED":
        best = previous.data.metrics.get("best_val_map", float("nan"))
        log.info("fold %d already finished in run %s", fold, previous.info.run_id)
        return FoldOutcome(
            fold, previous.info.run_id, best, int(previous.data.params.get("best_epoch", -1)), -1
        )
    tags = {"kit.role": FOLD_ROLE, "kit.fold": str(fold)}
    with tracking.start_run(
        cfg.mlflow_experiment,
        command,
        run_name=f"{cfg.name}-fold{fold}",
        tags=tags,
        parent_run_id=parent_id,
        run_id=previous.info.run_id if previous is not None else None,
    ) as child:
        resume_run_id = previous.info.run_id if previous is not None else None
        result = _train_fold(
            cfg, dataset, fold, dist, child_run=child, progress=progress, resume_run_id=resume_run_id
        )
        return FoldOutcome(fold, child.info.run_id, result.best_val_map, result.best_epoch, result.epochs_run)


def _train_fold(
    cfg: ExperimentConfig,
    dataset: NucleiDataset,
    fold: int,
    dist: DistContext,
    *,
    child_run: Any | None,
    progress: bool,
    resume_run_id: str | None = None,
):
    import torch

    from kit.augment import build_augmentation
    from kit.models import model_task
    from kit.style.references import StyleReferences
    from kit.training.data import InstanceCrops, MixedCrops, TrainingCrops, extra_crop_sources, fold_ids
    from kit.training.trainer import Trainer

    train_ids, val_ids = fold_ids(dataset, fold, cfg.data.train_splits)
    seed = cfg.training.seed
    augmentation = (
        build_augmentation(
            [s.model_dump() for s in cfg.augmentation],
            seed=seed,
            references=StyleReferences(dataset, channels=cfg.data.channels, train_ids=train_ids),
        )
        if cfg.augmentation
        else None
    )
    target_kwargs = {
        "include_mask": cfg.targets.include_mask,
        "min_radius": cfg.targets.border_min_radius,
        "max_radius": cfg.targets.border_max_radius,
    }
    crops = CropDataset(
        dataset,
        cfg.data.crop_size,
        ids=train_ids,
        channels=cfg.data.channels,
        samples_per_epoch=cfg.data.samples_per_epoch,
        seed=seed * 7919 + fold,
    )
    if cfg.data.extra:
        extra = extra_crop_sources(
            [(e.root, e.weight) for e in cfg.data.extra],
            crop_size=cfg.data.crop_size,
            channels=cfg.data.channels,
            length=len(crops),
            seed=crops.seed,
        )
        crops = MixedCrops([(crops, 1.0), *extra], seed=crops.seed)
    torch.manual_seed(seed)  # the same initial weights for the same training.seed (resume relies on it)
    model = build_model(cfg)
    if model_task(model) == "instance":
        train_set, val_set = InstanceCrops(crops, augmentation), None  # no val loss: see kit.training.tasks
    else:
        train_set = TrainingCrops(
            crops, augmentation, border_weight=cfg.targets.border_weight, **target_kwargs
        )
        val_crops = CropDataset(
            dataset, cfg.data.crop_size, ids=val_ids, channels=cfg.data.channels, seed=seed * 7919 + fold + 1
        )
        val_set = TrainingCrops(val_crops, None, border_weight=cfg.targets.border_weight, **target_kwargs)
    val_samples = [dataset.load(i) for i in val_ids]
    val_images = [
        (s.id, normalize_image(s.image, cfg.data.channels), np.asarray(s.labels)) for s in val_samples
    ]
    with tempfile.TemporaryDirectory(prefix=f"kit-{cfg.name}-fold{fold}-") as tmp:
        work_dir = Path(tmp)
        on_epoch = on_checkpoint = None
        if child_run is not None:
            import mlflow

            if resume_run_id is None:
                _log_fold_start(cfg, dataset, fold, model, train_ids, val_ids, crops, augmentation, work_dir)

            def on_epoch(record: dict[str, float], epoch: int) -> None:
                mlflow.log_metrics(
                    {k: v for k, v in record.items() if k != "epoch" and math.isfinite(v)}, step=epoch
                )

            def on_checkpoint(path: Path) -> None:
                mlflow.log_artifact(str(path), CHECKPOINT_DIR)

        trainer = Trainer(
            cfg,
            model,
            train_set,
            val_set,
            val_images,
            work_dir=work_dir,
            device=dist.device(),
            dist=dist,
            on_epoch=on_epoch,
            on_checkpoint=on_checkpoint,
            progress=progress,
        )
        resume_from = _download_checkpoints(resume_run_id, work_dir) if resume_run_id else None
        resume_from = dist.broadcast_object(resume_from)
        if resume_from is not None:
            trainer.resume_from(resume_from)
        result = trainer.fit()
        if child_run is not None:
            _log_fold_end(trainer, result, val_images, work_dir)
        return result


def _download_checkpoints(run_id: str, work_dir: Path) -> Path | None:
    """Fetch an interrupted fold's best.pt and last.pt into `work_dir`; the path of last.pt, or None when
    the fold was interrupted before its first checkpoint (it then starts over)."""
    import shutil

    import mlflow

    try:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=CHECKPOINT_DIR, dst_path=str(work_dir / "resumed")
            )
        )
    except Exception:  # MLflow raises different types per store for a missing artifact
        return None
    if (folder / "best.pt").is_file():
        shutil.copy2(folder / "best.pt", work_dir / "best.pt")
    return folder / "last.pt" if (folder / "last.pt").is_file() else None


def _log_fold_start(
    cfg, dataset, fold, model, train_ids, val_ids, crops, augmentation, work_dir: Path
) -> None:
    import mlflow

    from kit.augment import augmentation_grid
    from kit.models import model_task
    from kit.targets import make_targets, target_channels, targets_preview

    n_params = sum(p.numel() for p in model.parameters())
    mlflow.set_tags(
        {
            "kit.n_params": str(n_params),
            "kit.train_ids": str(len(train_ids)),
            "kit.val_ids": str(len(val_ids)),
            **model.kit_cfg["weights"].tags(),
        }
    )
    mlflow.log_params({k: v[:500] for k, v in cfg.flat_params().items()})
    mlflow.log_params({"fold": fold, "n_train_images": len(train_ids), "n_val_images": len(val_ids)})
    for extra in cfg.data.extra:  # before the main dataset, whose digest must stay the run's dataset tag
        tracking.log_dataset(
            Path(extra.root) / "manifest.csv", name=Path(extra.root).name, context="training-extra"
        )
    tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="training")
    mlflow.log_text(cfg.to_yaml(), "config.yaml")
    mlflow.log_text("\n".join(val_ids), "val_ids.txt")
    if model_task(model) == "semantic":  # instance targets are the label image itself (augmentation grid)
        first = crops[0]
        targets = make_targets(first["labels"], include_mask=cfg.targets.include_mask)
        preview = targets_preview(
            first["image"],
            first["labels"],
            targets,
            work_dir / "targets_preview.png",
            target_channels(cfg.targets.include_mask),
        )
        mlflow.log_artifact(str(preview), "previews")
    if augmentation is not None:
        samples = [(crops[i]["image"], crops[i]["labels"]) for i in range(min(3, len(crops)))]
        grid = augmentation_grid(samples, augmentation, work_dir / "augmentation_grid.png")
        mlflow.log_artifact(str(grid), "previews")


def _log_fold_end(trainer, result, val_images, work_dir: Path) -> None:
    import mlflow

    from kit.metrics import save_overlay
    from kit.models.checkpoint import load_checkpoint

    mlflow.log_params(
        {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
        }
    )
    if result.best_checkpoint is None or not val_images:
        return
    best, _, _ = load_checkpoint(result.best_checkpoint, map_location=trainer.device)
    trainer.model.load_state_dict(best.state_dict())
    image_id, image, labels = val_images[0]
    pred = trainer.segmenter()(image).labels
    overlay = save_overlay(work_dir / f"val_overlay_{image_id}.png", image, labels, pred)
    mlflow.log_artifact(str(overlay), "previews")
