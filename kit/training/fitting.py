"""One fold of a model fitted outside torch (`kit.models.fitted.FittedModule`: classical, pixel_forest).

`FitTrainer` stands where `Trainer` stands for a network, with the surface the train stage uses (`fit`,
`history`, `segmenter`, `resume_from`, the `on_epoch` / `on_checkpoint` callbacks), so a fitted fold is
recorded exactly like a trained one: one "epoch" whose numbers are the fit's (`fit_*`) and the
validation mAP, the best and last checkpoints (the same fitted state), a validation overlay. The model
fits on the fold's whole training images, plus the annotated train images of `data.extra`
(`fit_images`); families whose fit is a search get `evaluate`, which scores a state on those images
with the watershed tuned over `FIT_GRID` (the search style of `kit.inference.tuning`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.config import ExperimentConfig
from kit.data.dataset import NucleiDataset
from kit.data.normalize import normalize_image
from kit.inference.contract import Segmentation
from kit.inference.segmenter import default_thresholds
from kit.inference.tuning import tune_postprocess
from kit.models.checkpoint import load_checkpoint, save_checkpoint
from kit.models.fitted import FitImage, FittedModule
from kit.models.precision import ComputeMode
from kit.training.data import FoldData, ValImage, extra_train_ids
from kit.training.distributed import DistContext
from kit.training.trainer import FitResult, Trainer, fold_segmenter, validation_map

log = logging.getLogger(__name__)

FIT_GRID: dict[str, tuple] = {
    "seed_threshold": (0.4, 0.6, 0.8),
    "min_seed_size": (8,),
    "mask_threshold": (0.5,),
    "grow_with_mask": (True,),
    "min_size": (0, 25),
    "min_area_fraction": (0.0, 0.2, 0.4),
}
"""The watershed settings a state is judged at during a search fit (a small part of `DEFAULT_GRID`:
`kit predict --oof` tunes the watershed fully afterwards)."""


def fit_images(cfg: ExperimentConfig, dataset: NucleiDataset, train_ids: Sequence[str]) -> list[FitImage]:
    """The whole training images of a fold (normalised as for the network) with their labels, then the
    annotated train images of each `data.extra` dataset."""
    sources = [(dataset, list(train_ids))]
    sources += [(NucleiDataset(e.root), extra_train_ids(e.root, k)) for k, e in enumerate(cfg.data.extra)]
    out = []
    for source, ids in sources:
        for image_id in ids:
            sample = source.load(image_id)
            out.append((normalize_image(sample.image, cfg.data.channels), np.asarray(sample.labels)))
    return out


def state_evaluator(cfg: ExperimentConfig, images: Sequence[FitImage]) -> Callable[[FittedModule], dict]:
    """Scores a model's current state on `images`: maps → watershed tuned over `FIT_GRID` from the
    config's thresholds → {"score": mean DSB score, "params": the best watershed settings}."""
    start = default_thresholds(cfg, "semantic").model_dump()

    def evaluate(model: FittedModule) -> dict[str, Any]:
        channels = model.kit_cfg["channels"]
        items = [
            (model.predict_maps(image.astype(np.float32) / 255.0), channels, labels)
            for image, labels in images
        ]
        result = tune_postprocess(items, start, FIT_GRID)
        return {"score": result.score, "params": result.params}

    return evaluate


class FitTrainer:
    """Fits one `FittedModule` on one fold; see the module docstring."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: FittedModule,
        images: Sequence[FitImage],
        val_images: Sequence[ValImage],
        *,
        work_dir: Path,
        device: torch.device,
        on_epoch: Callable[[dict[str, float], int], None] | None = None,
        on_checkpoint: Callable[[Path], None] | None = None,
        progress: bool = True,
    ) -> None:
        if not images:
            raise ValueError("a fitted model needs at least one training image")
        self.cfg, self.model, self.device = cfg, model, device
        # numpy/scipy/LightGBM compute in float32 whatever the config says; the params record that.
        self.compute = ComputeMode(device, "fp32", channels_last=False)
        self.images, self.val_images = list(images), list(val_images)
        self.on_epoch, self.on_checkpoint, self.progress = on_epoch, on_checkpoint, progress
        self.history: list[dict[str, float]] = []
        self.fitted: dict[str, str] = {}
        self.best_path, self.last_path = work_dir / "best.pt", work_dir / "last.pt"

    def resume_from(self, last_checkpoint: Path) -> None:
        """A fold whose fit finished before the interruption (its last.pt exists) is not fitted again."""
        model, _, extra = load_checkpoint(last_checkpoint)
        self.model.load_state_dict(model.state_dict())
        self.history = list(extra["training_state"]["history"])
        self.fitted = dict(extra["training_state"]["fitted"])
        if not self.best_path.exists():
            save_checkpoint(self.best_path, self.model, self.cfg.to_dict(), {"epoch": 0})

    def fit(self) -> FitResult:
        """Fit (unless resumed after the fit), validate, write the checkpoints, report the one epoch."""
        if not self.history:
            started = time.perf_counter()
            outcome = self.model.fit(
                self.images,
                evaluate=state_evaluator(self.cfg, self.images),
                seed=self.cfg.training.seed,
                progress=self.progress,
            )
            fit_time = time.perf_counter() - started
            numbers = {
                f"fit_{k}": float(v)
                for k, v in outcome.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            record = {"epoch": 0.0, **numbers, "train_time": fit_time}
            if self.val_images:
                record["val_map"], _ = validation_map(self.segmenter(), self.val_images)
                record["best_val_map"] = record["val_map"]
            record["epoch_time"] = time.perf_counter() - started
            self.history = [record]
            self.fitted = {f"fit.{k}": str(v) for k, v in outcome.items()}
            config = self.cfg.to_dict()
            state = {"history": self.history, "fitted": self.fitted}
            save_checkpoint(
                self.best_path, self.model, config, {"epoch": 0, "val_map": record.get("val_map")}
            )
            save_checkpoint(self.last_path, self.model, config, {"epoch": 0, "training_state": state})
            if self.progress:
                log.info("fitted %s in %.1f s: %s", self.model.kit_cfg["arch"], fit_time, outcome)
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.best_path)
                self.on_checkpoint(self.last_path)
            if self.on_epoch is not None:
                self.on_epoch(record, 0)
        val_map = self.history[0].get("val_map", float("nan"))
        return FitResult(
            best_epoch=0,
            best_val_map=val_map,
            epochs_run=1,
            stopped_early=False,
            history=self.history,
            best_checkpoint=self.best_path,
            last_checkpoint=self.last_path,
            fitted=self.fitted,
        )

    def segmenter(self) -> Callable[[np.ndarray], Segmentation]:
        """Normalised image → instances with the fitted state (`fold_segmenter`)."""
        return fold_segmenter(self.model, self.cfg, self.device, channels_last=False)


def fold_trainer(
    cfg: ExperimentConfig,
    model: nn.Module,
    data: FoldData,
    dataset: NucleiDataset,
    *,
    work_dir: Path,
    device: torch.device,
    dist: DistContext,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    progress: bool = True,
) -> Trainer | FitTrainer:
    """The trainer of one fold: a `FitTrainer` for a model fitted outside torch, else the network
    `Trainer` (epochs of optimiser steps on `data`'s crops)."""
    if isinstance(model, FittedModule):
        return FitTrainer(
            cfg,
            model,
            fit_images(cfg, dataset, data.train_ids),
            data.val_images,
            work_dir=work_dir,
            device=device,
            on_epoch=on_epoch,
            on_checkpoint=on_checkpoint,
            progress=progress and dist.is_main,
        )
    return Trainer(
        cfg,
        model,
        data.train_set,
        data.val_set,
        data.val_images,
        work_dir=work_dir,
        device=device,
        dist=dist,
        on_epoch=on_epoch,
        on_checkpoint=on_checkpoint,
        progress=progress,
    )
