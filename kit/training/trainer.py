"""The training loop of one fold: optimiser steps on random crops, validation mAP each epoch,
best/last checkpoints, early stopping, a wall-clock budget (`training.max_minutes`), resume, mixed
precision and channels-last (`training.precision`, `training.channels_last`, on CPU and CUDA:
`kit.models.precision`), DDP under torchrun.

What differs between model tasks (batching, the loss of a batch, validation loss) is in
`kit.training.tasks`; validation images go through the same `build_segmenter` as `kit predict`.

MLflow stays outside: the loop reports each epoch's numbers through `on_epoch` and writes checkpoints
to `work_dir`; the stage (`kit.stages.train`) logs them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from kit.config import ExperimentConfig
from kit.inference.contract import Segmentation
from kit.inference.segmenter import build_segmenter, default_thresholds
from kit.metrics import dsb_score
from kit.models.checkpoint import load_checkpoint, save_checkpoint
from kit.models.precision import ComputeMode
from kit.training.data import AugmentedCrops, TrainingCrops, ValImage, worker_init
from kit.training.distributed import DistContext
from kit.training.optim import build_optimizer, build_scheduler
from kit.training.tasks import training_task


@dataclass
class FitResult:
    """What a finished fit leaves behind."""

    best_epoch: int
    best_val_map: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    fitted: dict[str, str] = field(default_factory=dict)
    """What a fitted model (`kit.training.fitting`) chose, as params to log; empty for networks."""


def validation_map(
    segment: Callable[[np.ndarray], Any], images: Sequence[ValImage]
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean DSB score over whole validation images and the predicted label images by id; `segment` maps
    an image to a `kit.inference.segmenter.Segmentation`."""
    scores, predicted = [], {}
    for image_id, image, labels in images:
        pred = segment(image).labels
        predicted[image_id] = pred
        scores.append(dsb_score(labels, pred))
    return (float(np.mean(scores)) if scores else float("nan")), predicted


def fold_segmenter(
    model: nn.Module, cfg: ExperimentConfig, device: torch.device, *, channels_last: bool
) -> Callable[[np.ndarray], Segmentation]:
    """Normalised image → instances of one fold model as it stands, with the experiment's inference
    settings and thresholds (no TTA; `inference.precision`, as `kit predict` will run it) in the memory
    format `channels_last`: what validation scores."""
    inference = cfg.inference.model_copy(update={"channels_last": channels_last})
    core = build_segmenter([model], cfg.model_copy(update={"inference": inference}), device=device)
    thresholds = default_thresholds(cfg, model.kit_cfg["task"])
    return lambda image: core(image, thresholds)


class Trainer:
    """Fits one model on one fold; see the module docstring."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: nn.Module,
        train_set: AugmentedCrops,
        val_set: TrainingCrops | None,
        val_images: Sequence[ValImage],
        *,
        work_dir: Path,
        device: torch.device,
        dist: DistContext,
        on_epoch: Callable[[dict[str, float], int], None] | None = None,
        on_checkpoint: Callable[[Path], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg, self.tcfg = cfg, cfg.training
        self.device, self.dist = device, dist
        self.work_dir = work_dir
        self.on_epoch, self.on_checkpoint = on_epoch, on_checkpoint
        self.progress = progress and dist.is_main
        self.compute = ComputeMode.resolve(device, self.tcfg.precision, self.tcfg.channels_last)
        self.model = self.compute.prepare_training(model)
        self.net = dist.wrap(self.model)
        self.task = training_task(self.model, cfg, self.compute)
        self.train_set, self.val_set, self.val_images = train_set, val_set, list(val_images)
        self.sampler = (
            DistributedSampler(train_set, shuffle=True, seed=self.tcfg.seed) if dist.enabled else None
        )
        self.loader = DataLoader(
            train_set,
            batch_size=self.tcfg.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            worker_init_fn=worker_init,
            collate_fn=self.task.collate,
            # Drop a ragged last batch only when this process still gets at least one full batch.
            drop_last=len(self.sampler if self.sampler is not None else train_set) >= self.tcfg.batch_size,
            pin_memory=device.type == "cuda",
        )
        self.steps_per_epoch = len(self.loader)
        if self.tcfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, self.tcfg.max_steps_per_epoch)
        total = self.steps_per_epoch * self.tcfg.epochs
        self.budget_s = self.tcfg.max_minutes * 60.0 if self.tcfg.max_minutes else None
        self.spent_s = 0.0  # wall time of earlier fit() calls (a resumed run), for the time budget
        self._fit_started: float | None = None
        self._time_fraction = 0.0
        self.optimizer = build_optimizer(
            self.model, self.tcfg.optimizer, self.tcfg.lr, self.tcfg.weight_decay
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            total,
            schedule=self.tcfg.schedule,
            warmup_steps=round(self.tcfg.warmup_epochs * self.steps_per_epoch),
            step_size=self.tcfg.step_size * self.steps_per_epoch,
            gamma=self.tcfg.gamma,
            time_fraction=self.time_fraction,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.compute.needs_grad_scaler)
        self.best_epoch, self.best_val_map, self.best_val_loss = -1, -math.inf, math.inf
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.best_path, self.last_path = work_dir / "best.pt", work_dir / "last.pt"

    # -- time budget ----------------------------------------------------------------------------------
    def elapsed_s(self) -> float:
        """Wall time this fold has trained and validated, over resumes."""
        running = time.perf_counter() - self._fit_started if self._fit_started is not None else 0.0
        return self.spent_s + running

    def time_fraction(self) -> float:
        """The share of `training.max_minutes` spent at the last `_tick` (0 without a time budget)."""
        return self._time_fraction

    def _tick(self) -> float:
        """Update `time_fraction` from the clock; under DDP every rank takes rank 0's, so all stop at the
        same step."""
        if self.budget_s:
            self._time_fraction = self.dist.broadcast_object(self.elapsed_s() / self.budget_s)
        return self._time_fraction

    def progress_label(self, epoch: int) -> str:
        """What the progress bar says of `epoch` (0-based): "epoch 3/40", or under a time budget the epoch
        and the minutes spent and left, "epoch 3 · 1.2 of 5.0 min, 3.8 left" (the epoch count is not
        known in advance then)."""
        if not self.budget_s:
            return f"epoch {epoch + 1}/{self.tcfg.epochs}"
        spent, budget = self.elapsed_s() / 60, self.budget_s / 60
        return f"epoch {epoch + 1} · {spent:.1f} of {budget:.1f} min, {max(budget - spent, 0):.1f} left"

    # -- checkpoints ------------------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "elapsed_s": self.elapsed_s(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_epoch": self.best_epoch,
            "best_val_map": self.best_val_map,
            "best_val_loss": self.best_val_loss,
            "history": self.history,
        }

    def resume_from(self, last_checkpoint: Path) -> None:
        """Continue after the epoch saved in `last_checkpoint` (a `last.pt` written by this trainer)."""
        model, _, extra = load_checkpoint(last_checkpoint, map_location=self.device)
        self.model.load_state_dict(model.state_dict())
        state = extra["training_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved without loss scaling (not fp16)
            self.scaler.load_state_dict(state["scaler"])
        self.best_epoch, self.best_val_map = int(state["best_epoch"]), float(state["best_val_map"])
        self.best_val_loss = float(state["best_val_loss"])
        self.history = list(state["history"])
        self.spent_s = float(state.get("elapsed_s", 0.0))
        self.start_epoch = int(state["epoch"]) + 1
        if self.best_epoch >= 0 and not self.best_path.exists():
            # The best weights live in their own file; without it, the last weights stand in for them.
            save_checkpoint(self.best_path, self.model, self.cfg.to_dict(), {"epoch": self.best_epoch})

    # -- loop -------------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train from `start_epoch` to the configured number of epochs (or early stop)."""
        patience = self.tcfg.early_stopping_patience
        stopped_early = False
        self._fit_started = time.perf_counter()
        for epoch in range(self.start_epoch, self.tcfg.epochs):
            # Only a resumed run can find its budget spent here: later epochs stop through `last`, so the
            # budget's last epoch is always validated (logging it may itself cross the budget).
            if epoch == self.start_epoch and self._tick() >= 1.0:
                break
            started = time.perf_counter()
            torch.manual_seed(self.tcfg.seed * 1000 + epoch)
            self.train_set.set_epoch(epoch)
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            train_loss, parts, n_images = self._train_epoch(epoch)
            train_time = time.perf_counter() - started
            record: dict[str, float] = {
                "train_loss": train_loss,
                **{f"train_{name}": value for name, value in parts.items()},
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_time": train_time,
                "train_images_per_s": n_images * self.dist.world_size / max(train_time, 1e-9),
            }
            last = epoch + 1 == self.tcfg.epochs or self._tick() >= 1.0
            if (epoch + 1) % self.tcfg.val_every == 0 or last:
                record.update(self._validate())
            record["epoch_time"] = time.perf_counter() - started
            self.dist.barrier()
            if self.dist.is_main:
                self._after_epoch(epoch, record)
            self.dist.barrier()
            if patience and epoch - max(self.best_epoch, 0) >= patience and self.best_epoch >= 0:
                stopped_early = True
                break
            if last:
                break
        self.spent_s, self._fit_started = self.elapsed_s(), None
        return FitResult(
            best_epoch=self.best_epoch,
            best_val_map=self.best_val_map,
            epochs_run=len(self.history),
            stopped_early=stopped_early,
            history=self.history,
            best_checkpoint=self.best_path if self.best_path.exists() else None,
            last_checkpoint=self.last_path if self.last_path.exists() else None,
        )

    def _train_epoch(self, epoch: int) -> tuple[float, dict[str, float], int]:
        """One pass over `steps_per_epoch` batches; returns (mean loss, mean of each logged loss part,
        images seen by this process)."""
        self.net.train()
        losses: list[float] = []
        parts: dict[str, list[float]] = {}
        n_images = 0
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=self.progress_label(epoch),
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for step, batch in enumerate(self.loader):
            if step >= self.steps_per_epoch or (self._tick() >= 1.0 and step > 0):
                break
            loss, step_parts = self.task.loss(self.net, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower training.lr "
                    f"(now {self.tcfg.lr}) or enable training.grad_clip"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.tcfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            losses.append(loss.item())
            for name, value in step_parts.items():
                parts.setdefault(name, []).append(value)
            n_images += len(batch["id"])
            bar.update(1)
            bar.set_postfix(
                loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}"
            )
        bar.close()
        mean_parts = {name: float(np.mean(values)) for name, values in parts.items()}
        return (float(np.mean(losses)) if losses else float("nan")), mean_parts, n_images

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        if not self.dist.is_main:
            return {}
        self.model.eval()
        out: dict[str, float] = {}
        if self.val_set is not None and len(self.val_set):
            self.val_set.set_epoch(0)  # the same crops every epoch, so val_loss is comparable
            val_loss = self.task.val_loss(self.model, self.val_set)
            if val_loss is not None:
                out["val_loss"] = val_loss
        if self.val_images:
            out["val_map"], _ = validation_map(self.segmenter(), self.val_images)
        return out

    def segmenter(self) -> Callable[[np.ndarray], Segmentation]:
        """Normalised image → instances over the current weights (`fold_segmenter`), in training's memory
        format: the predictor puts its models in its format in place, and the weights being trained must
        not move."""
        return fold_segmenter(self.model, self.cfg, self.device, channels_last=self.compute.channels_last)

    def _after_epoch(self, epoch: int, record: dict[str, float]) -> None:
        record = {"epoch": float(epoch), **record}
        validated = "val_map" in record or "val_loss" in record
        # Ranked by val mAP, ties (e.g. 0.0 in the first epochs) broken by the lower val loss.
        key = (record.get("val_map", -math.inf), -record.get("val_loss", math.inf))
        improved = validated and key > (self.best_val_map, -self.best_val_loss)
        if improved:
            self.best_epoch, self.best_val_map, self.best_val_loss = epoch, key[0], -key[1]
        if validated:
            record["best_val_map"] = float(self.best_val_map)
        self.history.append(record)
        config = self.cfg.to_dict()
        if improved:
            save_checkpoint(
                self.best_path, self.model, config, {"epoch": epoch, "val_map": record.get("val_map")}
            )
        save_checkpoint(
            self.last_path, self.model, config, {"epoch": epoch, "training_state": self._state(epoch)}
        )
        if self.progress:
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in record.items() if k in ("train_loss", "val_loss", "val_map")
            )
            tqdm.write(f"{self.progress_label(epoch)}: {shown} ({record['epoch_time']:.1f} s)")
        # Best before last, both before the epoch's numbers: whatever a hard kill interrupts, the newest
        # last.pt has its best.pt beside it, and a resumed run can re-report the numbers its history holds.
        if self.on_checkpoint is not None:
            if improved:
                self.on_checkpoint(self.best_path)
            self.on_checkpoint(self.last_path)
        if self.on_epoch is not None:
            self.on_epoch(record, epoch)
