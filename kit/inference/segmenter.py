"""`Segmenter`: the fold networks of one training run as a model object (`SegmentationModel`).

`Segmenter` is kit's public model for networks (what StarDist's `predict_instances` and Cellpose's `eval`
are there): built from checkpoint files (`Segmenter.from_checkpoints`, no MLflow needed;
`kit.load_segmenter` also takes runs, experiments and model URIs), it normalises a raw image as in
training, predicts it with its fold models averaged, tiled and test-time augmented, and post-processes
it with its stored (tuned) thresholds. `kit predict` and validation during training run the same code.

`build_segmenter` makes the part after normalisation from the models' task (`kit.models.model_task`):

- semantic (U-Net, FPN): `Predictor` (tiles with Gaussian blending, TTA, fold models' maps averaged),
  then the watershed of `instances_from_probs` with `WatershedThresholds`;
- instance (Mask R-CNN): `InstancePredictor` (tiles, TTA and fold models merged by mask voting), then
  `detections_to_labels` with `DetectionThresholds`.

Both return a `Segmentation`, so the predict stage writes them in one layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.config import DetectionThresholds, ExperimentConfig, WatershedThresholds, config_from_dict
from kit.data.normalize import normalize_image
from kit.errors import ConfigError, DataError, KitError
from kit.fileio import atomic_write_text
from kit.inference.contract import Segmentation, SegmentationModel
from kit.inference.instance_predictor import InstancePredictor
from kit.inference.instances import detections_to_labels
from kit.inference.postprocess import instances_from_probs
from kit.inference.predictor import Predictor
from kit.inference.thresholds import (
    THRESHOLDS_FILE,
    Thresholds,
    as_thresholds,
    read_thresholds,
    with_overrides,
    write_thresholds,
)
from kit.models.precision import default_device
from kit.models.registry import model_task

MODEL_FILE = "kit_model.json"
MODEL_FORMAT = "kit-model-1"


class SemanticSegmenter:
    """Normalised image → `Predictor` maps → watershed instances under `WatershedThresholds`."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.in_channels = predictor.in_channels

    def __call__(
        self, image: np.ndarray, thresholds: WatershedThresholds, tta: str | None = None
    ) -> Segmentation:
        probs = self.predictor.predict_probs(image, tta)
        labels = instances_from_probs(probs, self.predictor.channels, **thresholds.model_dump())
        return Segmentation(labels, probs, self.predictor.channels)


class InstanceSegmenter:
    """Normalised image → `InstancePredictor` detections → label image under `DetectionThresholds`."""

    def __init__(self, predictor: InstancePredictor) -> None:
        self.predictor = predictor
        self.in_channels = predictor.in_channels

    def __call__(
        self, image: np.ndarray, thresholds: DetectionThresholds, tta: str | None = None
    ) -> Segmentation:
        detections = self.predictor.predict_detections(image, tta)
        labels, scores = detections_to_labels(detections, **thresholds.model_dump())
        return Segmentation(labels, detections.probability_map()[None], self.predictor.channels, scores)


def build_segmenter(
    models: Sequence[nn.Module],
    cfg: ExperimentConfig,
    *,
    tta: str = "none",
    device: torch.device | str | None = None,
) -> SemanticSegmenter | InstanceSegmenter:
    """Normalised image → `Segmentation` over `models` (all of one task) with the inference settings
    (tiling, scales, TTA merging, precision and memory format) of `cfg`; thresholds are given per call."""
    tasks = {model_task(m) for m in models}
    if len(tasks) != 1:
        raise ConfigError(f"cannot combine models of different tasks {sorted(tasks)}")
    inf = cfg.inference
    if tasks == {"instance"}:
        if list(inf.scales) != [1.0]:
            raise ConfigError(
                f"inference.scales {inf.scales}: instance models predict at native scale only; use [1.0]"
            )
        ins = cfg.instances
        predictor = InstancePredictor(
            models,
            tta=tta,
            tile=inf.tile,
            overlap=inf.overlap,
            batch_size=inf.batch_size,
            device=device,
            precision=inf.precision,
            channels_last=inf.channels_last,
            vote_iou=ins.vote_iou,
            min_vote_fraction=ins.min_vote_fraction,
        )
        return InstanceSegmenter(predictor)
    predictor = Predictor(
        models,
        tta=tta,
        scales=inf.scales,
        tile=inf.tile,
        overlap=inf.overlap,
        batch_size=inf.batch_size,
        device=device,
        precision=inf.precision,
        channels_last=inf.channels_last,
    )
    return SemanticSegmenter(predictor)


def default_thresholds(cfg: ExperimentConfig, task: str) -> Thresholds:
    """The thresholds `cfg` gives a model of `task`: its `postprocess` section (semantic models) or the
    `DetectionThresholds` of its `instances` section (instance models)."""
    if task == "instance":
        return as_thresholds(DetectionThresholds, cfg.instances, f"instances of {cfg.name}")
    return as_thresholds(WatershedThresholds, cfg.postprocess, f"postprocess of {cfg.name}")


class Segmenter(SegmentationModel):
    """The fold networks of one run: raw image → instance label image (see the module docstring).

    `models` are the fold models of one run (averaged), `config` the experiment config they trained
    with (normalisation channels, tiling, TTA, default thresholds); `tta` overrides the config's
    `inference.tta`, and `thresholds` (a mapping of some keys, or a whole thresholds object) the
    config's thresholds, e.g. with values tuned out of fold.
    """

    kind = "segmenter"

    def __init__(
        self,
        models: Sequence[nn.Module],
        config: ExperimentConfig,
        *,
        tta: str | None = None,
        device: torch.device | str | None = None,
        thresholds: Mapping[str, Any] | Thresholds | None = None,
    ) -> None:
        if not models:
            raise ConfigError("a Segmenter needs at least one model")
        signatures = {
            (m.kit_cfg["task"], tuple(m.kit_cfg["channels"]), m.kit_cfg["in_channels"]) for m in models
        }
        if len(signatures) > 1:
            raise ConfigError(f"the models disagree on task/output/input channels {sorted(signatures)}")
        self.config = config
        self.device = default_device(device)
        self.models = [m.to(self.device).eval() for m in models]
        self.tta = tta or config.inference.tta
        self.task: str = models[0].kit_cfg["task"]
        self.thresholds = with_overrides(default_thresholds(config, self.task), thresholds)
        self.core = build_segmenter(self.models, config, tta=self.tta, device=self.device)
        self.in_channels: int = self.core.in_channels
        self.compute = self.core.predictor.compute  # the precision and memory format that run

    @classmethod
    def from_checkpoints(
        cls,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        tta: str | None = None,
        device: torch.device | str | None = None,
        thresholds: Mapping[str, Any] | Thresholds | None = None,
    ) -> Segmenter:
        """The models saved in one or several kit checkpoint files (e.g. every fold's best.pt), with the
        experiment config stored in the first. A folder stands for the `*.pt` files in it."""
        from kit.models.checkpoint import load_checkpoint

        files = _checkpoint_files(paths)
        loaded = [load_checkpoint(f, map_location=device or "cpu") for f in files]
        config = config_from_dict(loaded[0][1], f"the config stored in {files[0]}")
        return cls([m for m, _, _ in loaded], config, tta=tta, device=device, thresholds=thresholds)

    @property
    def inference_configs(self) -> list[Any]:
        return [self.config.inference]

    def segment(
        self,
        image: np.ndarray,
        *,
        thresholds: Thresholds,
        tta: str | None,
        intensity_ranges: Mapping[int, tuple[float, float]] | None = None,
    ) -> Segmentation:
        """The prediction of one raw image: normalised as in training (with `intensity_ranges` of its
        input channels when given), then the fold models."""
        levels = None if intensity_ranges is None else intensity_ranges[self.in_channels]
        try:
            normalized = normalize_image(np.asarray(image), self.in_channels, intensity_range=levels)
        except ValueError as exc:
            raise DataError(f"cannot segment this image: {exc}") from None
        return self.core(normalized, thresholds, tta or self.tta)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model as a folder (`MODEL_FILE`, `thresholds.json`, one checkpoint per fold model)."""
        from kit.models.checkpoint import save_checkpoint

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"model{i}.pt" for i in range(len(self.models))]
        for name, model in zip(names, self.models, strict=True):
            save_checkpoint(folder / name, model, self.config.to_dict())
        write_thresholds(folder, self.thresholds)
        info = {"format": MODEL_FORMAT, "kind": self.kind, "checkpoints": names, "tta": self.tta}
        atomic_write_text(folder / MODEL_FILE, json.dumps(info, indent=2))
        return folder

    @classmethod
    def load(
        cls, folder: str | os.PathLike, *, tta: str | None = None, device: torch.device | str | None = None
    ) -> Segmenter:
        """A model folder written by `save` (its TTA mode unless `tta` is given)."""
        folder = Path(folder)
        info = read_model_info(folder, cls.kind)
        return cls.from_checkpoints(
            [folder / name for name in info["checkpoints"]],
            tta=tta or info.get("tta"),
            device=device,
            thresholds=_stored_thresholds(folder, info),
        )


def _stored_thresholds(folder: Path, info: dict) -> Thresholds | Mapping[str, Any] | None:
    """The thresholds of a model folder: thresholds.json, or the `postprocess` settings of a
    `MODEL_FILE` written before thresholds had their own file."""
    if (folder / THRESHOLDS_FILE).is_file():
        return read_thresholds(folder)
    return info.get("postprocess")


def read_model_info(folder: Path, kind: str | None = None) -> dict:
    """The `MODEL_FILE` of a model folder; KitError naming the folder when it is missing or of another
    kind ("segmenter" or "ensemble")."""
    path = Path(folder) / MODEL_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KitError(f"{folder} is not a kit model folder (no readable {MODEL_FILE}: {exc})") from None
    if info.get("format") != MODEL_FORMAT or (kind is not None and info.get("kind") != kind):
        raise KitError(
            f"{path}: expected a {kind or 'kit'} model of format {MODEL_FORMAT}, got {info.get('kind')!r}"
        )
    return info


def _checkpoint_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        files.extend(sorted(item.glob("*.pt")) if item.is_dir() else [item])
    if not files:
        raise ConfigError(f"no checkpoint file in {', '.join(map(str, items)) or 'an empty list'}")
    return files
