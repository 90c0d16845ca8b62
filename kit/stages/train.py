"""`kit train` as a library call: K folds of one experiment as one MLflow parent run with a child per fold.

Each child run logs the flattened config as params, per-epoch train/val loss, val mAP, learning rate and
epoch time, the initial weights' source (`kit.weights*` tags), and as artifacts the resolved config, target
and augmentation previews, the best and last checkpoints (`state_dict` + config, loadable with
`kit.models.load_checkpoint`) and a validation overlay. `resume=True` continues the newest unfinished
parent run: finished folds are kept, interrupted folds go on from their last checkpoint in the same child
run. Run layout: `kit.tracking.schema`.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kit import tracking
from kit.config import ExperimentConfig, config_from_dict
from kit.data.dataset import NucleiDataset, open_dataset
from kit.errors import ConfigError, DataError, RunNotFoundError
from kit.tracking.schema import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    VAL_IDS_FILE,
    Role,
    Tag,
    find_role_runs,
    role_tags,
)
from kit.training.distributed import DistContext

log = logging.getLogger(__name__)

EpochHook = Callable[[int, Mapping[str, float], int], None]
"""Called with (fold, the epoch's numbers, epoch) after each epoch is logged; raising `kit.errors.StopRun`
stops training, and the runs end KILLED."""


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


def train_experiment(
    cfg: ExperimentConfig,
    *,
    folds: list[int] | str | None = None,
    resume: bool = False,
    command: str = "train",
    progress: bool = True,
    parent_run_id: str | None = None,
    on_epoch: EpochHook | None = None,
) -> TrainOutcome:
    """Train the folds of `cfg`; see the module docstring. `parent_run_id` nests the train run under
    another run (a search trial); `on_epoch` sees each fold's epochs (`EpochHook`)."""
    dist = DistContext.from_environment()
    experiment = cfg.mlflow_experiment
    parent_id = None
    if resume:
        parent_id, cfg = _resumable_parent(experiment) if dist.is_main else (None, cfg)
        parent_id, cfg_dict = dist.broadcast_object((parent_id, cfg.to_dict()))
        cfg = config_from_dict(cfg_dict, "resumed run's config")
    from kit.models import weights_source

    weights_source(cfg.model.name, cfg.model.encoder, cfg.model.pretrained)  # fail fast, before any data
    dataset = open_dataset(cfg.data.root)
    fold_list = resolve_folds(dataset, folds, cfg)
    if not dist.is_main:
        for fold in fold_list:
            _train_fold(cfg, dataset, fold, dist, logger=None, progress=False)
        return TrainOutcome(parent_run_id="", experiment=experiment)

    import mlflow

    tags = role_tags(Role.TRAIN, **{Tag.FOLDS: ",".join(map(str, fold_list))})
    with tracking.start_run(
        experiment, command, run_name=cfg.name, tags=tags, run_id=parent_id, parent_run_id=parent_run_id
    ) as parent:
        outcome = TrainOutcome(parent_run_id=parent.info.run_id, experiment=experiment)
        if parent_id is None:
            mlflow.log_text(cfg.to_yaml(), CONFIG_FILE)
            mlflow.log_params({k: v[:500] for k, v in cfg.flat_params().items()})
            tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="training")
        for fold in fold_list:
            outcome.folds.append(
                _run_fold(cfg, dataset, fold, dist, parent.info.run_id, command, progress, on_epoch)
            )
        maps = [m for m in outcome.val_maps if math.isfinite(m)]
        if maps:
            mlflow.log_metrics(
                {"cv_val_map_mean": float(np.mean(maps)), "cv_val_map_std": float(np.std(maps))}
            )
        if cfg.tracking.log_model:
            from kit.hub import log_train_model

            log_train_model(parent.info.run_id)
    return outcome


def _resumable_parent(experiment: str) -> tuple[str, ExperimentConfig]:
    """The newest unfinished train run whose process is gone (killed, failed, or stale), and its config.
    A run still training in another process is never taken over."""
    unfinished = [
        r
        for r in find_role_runs(experiment, Role.TRAIN, status=None, max_results=50)
        if r.info.status != "FINISHED"
    ]
    runs = [r for r in unfinished if not tracking.is_live(r)]
    if not runs:
        busy = ""
        if unfinished:
            tags = unfinished[0].data.tags
            busy = (
                f" (run {unfinished[0].info.run_id} is still training: process "
                f"{tags.get(tracking.PID_TAG, '?')} on {tags.get(tracking.HOST_TAG, '?')})"
            )
        raise RunNotFoundError(
            f"nothing to resume: experiment '{experiment}' has no unfinished training run whose process "
            f"has ended{busy}"
        )
    run = runs[0]
    import mlflow

    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{CONFIG_FILE}")
    cfg = config_from_dict(yaml.safe_load(text), f"{CONFIG_FILE} of run {run.info.run_id}")
    cfg.training.folds = [
        int(f) for f in run.data.tags.get(Tag.FOLDS, "").split(",") if f
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
    on_epoch: EpochHook | None = None,
) -> FoldOutcome:
    """Train one fold in its child run (continuing an interrupted one, skipping a finished one)."""
    existing = find_role_runs(
        cfg.mlflow_experiment,
        Role.TRAIN_FOLD,
        status=None,
        **{Tag.PARENT_RUN: parent_id, Tag.FOLD: str(fold)},
    )
    previous = existing[0] if existing else None
    if previous is not None and previous.info.status == "FINISHED":
        best = previous.data.metrics.get("best_val_map", float("nan"))
        log.info("fold %d already finished in run %s", fold, previous.info.run_id)
        return FoldOutcome(
            fold, previous.info.run_id, best, int(previous.data.params.get("best_epoch", -1)), -1
        )
    resume_run_id = previous.info.run_id if previous is not None else None
    with tracking.start_run(
        cfg.mlflow_experiment,
        command,
        run_name=f"{cfg.name}-fold{fold}",
        tags=role_tags(Role.TRAIN_FOLD, **{Tag.FOLD: str(fold)}),
        parent_run_id=parent_id,
        run_id=resume_run_id,
    ) as child:
        logger = _FoldLogger(cfg, dataset, fold, resumed=resume_run_id is not None, on_epoch=on_epoch)
        result = _train_fold(
            cfg, dataset, fold, dist, logger=logger, progress=progress, resume_run_id=resume_run_id
        )
        return FoldOutcome(fold, child.info.run_id, result.best_val_map, result.best_epoch, result.epochs_run)


def _train_fold(
    cfg: ExperimentConfig,
    dataset: NucleiDataset,
    fold: int,
    dist: DistContext,
    *,
    logger: _FoldLogger | None,
    progress: bool,
    resume_run_id: str | None = None,
):
    """Fit one fold (every rank runs this; only rank 0 has a `logger`); the trainer's FitResult."""
    import torch

    from kit.models import build_model
    from kit.training.data import fold_data
    from kit.training.fitting import fold_trainer

    data = fold_data(cfg, dataset, fold)
    torch.manual_seed(cfg.training.seed)  # the same initial weights for the same seed (resume relies on it)
    model = build_model(cfg)
    with tempfile.TemporaryDirectory(prefix=f"kit-{cfg.name}-fold{fold}-") as tmp:
        work_dir = Path(tmp)
        trainer = fold_trainer(
            cfg,
            model,
            data,
            dataset,
            work_dir=work_dir,
            device=dist.device(),
            dist=dist,
            on_epoch=logger.epoch if logger else None,
            on_checkpoint=logger.checkpoint if logger else None,
            progress=progress,
        )
        if logger is not None:
            logger.start(model, data, work_dir, _compute_params(cfg, trainer.compute))
        resume_from = _download_checkpoints(resume_run_id, work_dir) if resume_run_id else None
        resume_from = dist.broadcast_object(resume_from)
        if resume_from is not None:
            trainer.resume_from(resume_from)
            if logger is not None:
                logger.report_history(trainer.history)
        result = trainer.fit()
        if logger is not None:
            logger.end(trainer, result, data.val_images, work_dir)
        return result


def _compute_params(cfg: ExperimentConfig, training: Any) -> dict[str, str]:
    """The precision and memory format a fold trained with (`training`, the trainer's `ComputeMode`) and
    validated with (the experiment's inference settings on the same device)."""
    from kit.models.precision import ComputeMode

    inference = ComputeMode.resolve(training.device, cfg.inference.precision, training.channels_last)
    return {**training.params("training"), **inference.params("inference")}


def _download_checkpoints(run_id: str, work_dir: Path) -> Path | None:
    """Fetch an interrupted fold's best.pt and last.pt into `work_dir`; the path of last.pt, or None when
    the fold was interrupted before its first checkpoint (it then starts over)."""
    import mlflow

    try:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=CHECKPOINT_DIR, dst_path=str(work_dir / "resumed")
            )
        )
    except Exception:  # MLflow raises different types per store for a missing artifact
        return None
    best, last = folder.parent / BEST_CHECKPOINT, folder.parent / LAST_CHECKPOINT
    if not last.is_file():
        return None
    from kit.errors import KitError
    from kit.models.checkpoint import load_checkpoint

    try:  # a kill during the upload can leave a truncated copy in the store
        load_checkpoint(last)
    except KitError as exc:
        log.warning("run %s: %s is unreadable, the fold starts over (%s)", run_id, LAST_CHECKPOINT, exc)
        return None
    if best.is_file():
        shutil.copy2(best, work_dir / best.name)
    return last


class _FoldLogger:
    """What a fold's child run records: params, tags and previews at the start, each epoch's numbers,
    each checkpoint, and the best epoch and a validation overlay at the end."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        dataset: NucleiDataset,
        fold: int,
        *,
        resumed: bool,
        on_epoch: EpochHook | None = None,
    ) -> None:
        self.cfg, self.dataset, self.fold, self.resumed = cfg, dataset, fold, resumed
        self.on_epoch = on_epoch

    def start(self, model: Any, data: Any, work_dir: Path, compute: dict[str, str]) -> None:
        """Params (with `compute`: the precision that ran), tags, dataset inputs, config, val_ids.txt and
        previews (not again on resume)."""
        if self.resumed:
            return
        import mlflow

        cfg = self.cfg
        mlflow.set_tags(
            {
                "kit.n_params": str(sum(p.numel() for p in model.parameters())),
                "kit.train_ids": str(len(data.train_ids)),
                "kit.val_ids": str(len(data.val_ids)),
                **model.kit_cfg["weights"].tags(),
            }
        )
        mlflow.log_params({k: v[:500] for k, v in cfg.flat_params().items()})
        mlflow.log_params(
            {"fold": self.fold, "n_train_images": len(data.train_ids), "n_val_images": len(data.val_ids)}
        )
        mlflow.log_params(compute)
        for extra in cfg.data.extra:  # before the main dataset, whose digest must stay the run's dataset tag
            tracking.log_dataset(
                Path(extra.root) / "manifest.csv", name=Path(extra.root).name, context="training-extra"
            )
        tracking.log_dataset(self.dataset.root / "manifest.csv", name=self.dataset.name, context="training")
        mlflow.log_text(cfg.to_yaml(), CONFIG_FILE)
        mlflow.log_text("\n".join(data.val_ids), VAL_IDS_FILE)
        for preview in _previews(cfg, model, data, work_dir):
            mlflow.log_artifact(str(preview), "previews")

    def epoch(self, record: dict[str, float], epoch: int) -> None:
        self._log_epoch(record, epoch)
        if self.on_epoch is not None:
            self.on_epoch(self.fold, record, epoch)

    def _log_epoch(self, record: dict[str, float], epoch: int) -> None:
        import mlflow

        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch" and math.isfinite(v)}, step=epoch)

    def report_history(self, history: list[dict[str, float]]) -> None:
        """On resume: log the epochs of the restored history the run lacks (a kill can fall between an
        epoch's checkpoint and its numbers), so every epoch is in the run exactly once."""
        import mlflow

        run_id = mlflow.active_run().info.run_id
        logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "epoch_time")}
        for record in history:
            if int(record["epoch"]) not in logged:
                self._log_epoch(record, int(record["epoch"]))

    def checkpoint(self, path: Path) -> None:
        import mlflow

        mlflow.log_artifact(str(path), CHECKPOINT_DIR)

    def end(self, trainer: Any, result: Any, val_images: list, work_dir: Path) -> None:
        """Best epoch, epochs run, early stop, and a TP/FP/FN overlay of the first validation image."""
        import mlflow

        from kit.metrics import save_overlay
        from kit.models.checkpoint import load_checkpoint

        mlflow.log_params(
            {
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                **{k: v[:500] for k, v in result.fitted.items()},
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


def _previews(cfg: ExperimentConfig, model: Any, data: Any, work_dir: Path) -> list[Path]:
    """The targets of the first crop (semantic models) and an augmentation grid, as PNG files."""
    from kit.augment import augmentation_grid
    from kit.models import model_task
    from kit.targets import make_targets, target_channels, targets_preview

    out = []
    crops = data.crops
    if model_task(model) == "semantic":  # instance targets are the label image itself (augmentation grid)
        first = crops[0]
        targets = make_targets(first["labels"], include_mask=cfg.targets.include_mask)
        out.append(
            targets_preview(
                first["image"],
                first["labels"],
                targets,
                work_dir / "targets_preview.png",
                target_channels(cfg.targets.include_mask),
            )
        )
    if data.augmentation is not None:
        samples = [(crops[i]["image"], crops[i]["labels"]) for i in range(min(3, len(crops)))]
        out.append(augmentation_grid(samples, data.augmentation, work_dir / "augmentation_grid.png"))
    return out
