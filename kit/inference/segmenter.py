"""A trained model as an object: image → instance label image, for every model family.

`Segmenter` is kit's public model (what StarDist's `predict_instances` and Cellpose's `eval` are there):
built from checkpoint files (`Segmenter.from_checkpoints`, no MLflow needed; `kit.load_segmenter` also
takes runs, experiments and model URIs), it normalises a raw image as in training, predicts it with its
fold models averaged, tiled and test-time augmented, and post-processes it with the run's (tuned)
settings. `kit predict` and validation during training run the same code.

`build_segmenter` reads the models' task (`kit.models.model_task`):

- semantic (U-Net, FPN): `Predictor` (tiles with Gaussian blending, TTA, fold models' maps averaged),
  then the watershed of `instances_from_probs` with `cfg.postprocess`;
- instance (Mask R-CNN): `InstancePredictor` (tiles, TTA and fold models merged by mask voting), then
  `detections_to_labels` with `cfg.instances`.

Both return a `Segmentation`, so the predict stage writes them in one layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from kit.config import ExperimentConfig, config_from_dict
from kit.data.normalize import normalize_image
from kit.errors import ConfigError, DataError, KitError
from kit.fileio import atomic_write_text
from kit.inference.instance_predictor import InstancePredictor
from kit.inference.instances import detections_to_labels
from kit.inference.postprocess import instances_from_probs
from kit.inference.predictor import Predictor
from kit.models.registry import model_task


@dataclass
class Segmentation:
    """One image's prediction.

    labels: int32 (H, W), 0 = background, 1..N; probs: float32 (K, H, W) maps named by `channels`
    (semantic: the network's channels; instance: "mask", the highest score × mask probability per pixel);
    scores: float32 (N,), the detection score of label i at index i − 1 (instance models; the predicted
    IoU for the ensemble); estimated_score: the ensemble's estimate of the image's DSB score (else NaN),
    estimate_flag: "ok" when the image is like those the estimate was calibrated on, else why not.
    """

    labels: np.ndarray
    probs: np.ndarray
    channels: tuple[str, ...]
    scores: np.ndarray | None = None
    estimated_score: float = float("nan")
    estimate_flag: str = ""

    def foreground(self) -> np.ndarray | None:
        """The map instance tables average inside each instance: "body", else "mask", else None."""
        for name in ("body", "mask"):
            if name in self.channels:
                return self.probs[self.channels.index(name)]
        return None

    def instances(self) -> pd.DataFrame:
        """One row per instance: label, area (pixels), mean_prob (of `foreground`), score (detection
        score of instance models; NaN for semantic ones)."""
        flat = self.labels.ravel()
        areas = np.bincount(flat)
        ids = np.flatnonzero(areas)
        ids = ids[ids > 0]
        body = self.foreground()
        sums = np.bincount(flat, weights=body.ravel(), minlength=areas.size) if body is not None else None
        return pd.DataFrame(
            {
                "label": ids.astype(np.int64),
                "area": areas[ids].astype(np.int64),
                "mean_prob": sums[ids] / areas[ids] if sums is not None else np.nan,
                "score": self.scores[ids - 1] if self.scores is not None else np.nan,
            }
        )


class SemanticSegmenter:
    """`Predictor` maps → watershed instances (`instances_from_probs` with `postprocess` kwargs)."""

    def __init__(self, predictor: Predictor, postprocess: dict) -> None:
        self.predictor, self.postprocess = predictor, postprocess
        self.in_channels = predictor.in_channels

    def __call__(self, image: np.ndarray) -> Segmentation:
        probs = self.predictor.predict_probs(image)
        labels = instances_from_probs(probs, self.predictor.channels, **self.postprocess)
        return Segmentation(labels, probs, self.predictor.channels)


class InstanceSegmenter:
    """`InstancePredictor` detections → label image (`detections_to_labels` with `instances` kwargs)."""

    def __init__(self, predictor: InstancePredictor, instances: dict) -> None:
        self.predictor, self.instances = predictor, instances
        self.in_channels = predictor.in_channels

    def __call__(self, image: np.ndarray) -> Segmentation:
        detections = self.predictor.predict_detections(image)
        labels, scores = detections_to_labels(detections, **self.instances)
        return Segmentation(labels, detections.probability_map()[None], self.predictor.channels, scores)


def build_segmenter(
    models: Sequence[nn.Module],
    cfg: ExperimentConfig,
    *,
    mode: str | None = None,
    tta: str = "none",
    device: torch.device | str | None = None,
    amp: bool = True,
    postprocess: dict | None = None,
) -> SemanticSegmenter | InstanceSegmenter:
    """A segmenter over `models` (all of one task) with the inference and post-processing settings of
    `cfg`. `mode` is the loss mode semantic models trained with (default `cfg.training.loss.mode`);
    `postprocess` replaces the post-processing settings (`cfg.postprocess` for semantic models,
    `instance_settings(cfg)` for instance models), e.g. with values tuned out of fold."""
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
            amp=amp,
            vote_iou=ins.vote_iou,
            min_vote_fraction=ins.min_vote_fraction,
        )
        return InstanceSegmenter(predictor, postprocess or instance_settings(cfg))
    predictor = Predictor(
        models,
        mode=mode or cfg.training.loss.mode,
        tta=tta,
        scales=inf.scales,
        tile=inf.tile,
        overlap=inf.overlap,
        batch_size=inf.batch_size,
        device=device,
        amp=amp,
    )
    return SemanticSegmenter(predictor, postprocess or cfg.postprocess.model_dump(exclude={"tuned"}))


def instance_settings(cfg: ExperimentConfig) -> dict:
    """The `detections_to_labels` settings of `cfg.instances`."""
    keys = {"score_threshold", "mask_threshold", "min_size", "min_area_fraction", "overlap"}
    return cfg.instances.model_dump(include=keys)


def postprocess_settings(cfg: ExperimentConfig, task: str) -> dict:
    """The post-processing settings of a model of `task`: the watershed's (`cfg.postprocess`) for
    semantic models, `instance_settings` for instance models."""
    if task == "instance":
        return instance_settings(cfg)
    return cfg.postprocess.model_dump(exclude={"tuned"})


class Segmenter:
    """A trained model: raw image → instance label image (see the module docstring).

    `models` are the fold models of one run (averaged), `config` the experiment config they trained
    with (normalisation channels, tiling, TTA, post-processing); `tta` and `postprocess` override the
    config's `inference.tta` and `postprocess` settings (e.g. thresholds tuned out of fold).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        config: ExperimentConfig,
        *,
        tta: str | None = None,
        device: torch.device | str | None = None,
        postprocess: dict | None = None,
    ) -> None:
        if not models:
            raise ConfigError("a Segmenter needs at least one model")
        signatures = {
            (m.kit_cfg["task"], tuple(m.kit_cfg["channels"]), m.kit_cfg["in_channels"]) for m in models
        }
        if len(signatures) > 1:
            raise ConfigError(f"the models disagree on task/output/input channels {sorted(signatures)}")
        self.config = config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.models = [m.to(self.device).eval() for m in models]
        self.tta = tta or config.inference.tta
        self.task: str = models[0].kit_cfg["task"]
        self.postprocess = {**postprocess_settings(config, self.task), **(postprocess or {})}
        self.core = build_segmenter(
            self.models,
            config,
            tta=self.tta,
            device=self.device,
            postprocess=self.postprocess,
        )
        self.in_channels: int = self.core.in_channels

    @classmethod
    def from_checkpoints(
        cls,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        tta: str | None = None,
        device: torch.device | str | None = None,
        postprocess: dict | None = None,
    ) -> Segmenter:
        """The models saved in one or several kit checkpoint files (e.g. every fold's best.pt), with the
        experiment config stored in the first. A folder stands for the `*.pt` files in it."""
        from kit.models.checkpoint import load_checkpoint

        files = _checkpoint_files(paths)
        loaded = [load_checkpoint(f, map_location=device or "cpu") for f in files]
        config = config_from_dict(loaded[0][1], f"the config stored in {files[0]}")
        return cls([m for m, _, _ in loaded], config, tta=tta, device=device, postprocess=postprocess)

    def segment(self, image: np.ndarray) -> Segmentation:
        """Instances of an image already normalised (`normalize_image`, uint8 H×W×`in_channels`)."""
        return self.core(image)

    def predict(self, image, *, details: bool = False):
        """Instance labels (int32 H×W, 0 = background) of a raw image (H×W or H×W×C, any dtype), or a
        list of labels for a list of images. With `details`, a `Segmentation` instead (labels,
        probability maps, channel names, scores; `.instances()` gives the per-instance table)."""
        if isinstance(image, (list, tuple)):
            return [self.predict(im, details=details) for im in image]
        try:
            normalized = normalize_image(np.asarray(image), self.in_channels)
        except ValueError as exc:
            raise DataError(f"cannot segment this image: {exc}") from None
        out = self.segment(normalized)
        return out if details else out.labels

    __call__ = predict

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model as a folder (`MODEL_FILE` + one checkpoint per fold model) that `load` reads."""
        from kit.models.checkpoint import save_checkpoint

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"model{i}.pt" for i in range(len(self.models))]
        for name, model in zip(names, self.models, strict=True):
            save_checkpoint(folder / name, model, self.config.to_dict())
        info = {
            "format": MODEL_FORMAT,
            "kind": "segmenter",
            "checkpoints": names,
            "tta": self.tta,
            "postprocess": self.postprocess,
        }
        atomic_write_text(folder / MODEL_FILE, json.dumps(info, indent=2))
        return folder

    @classmethod
    def load(
        cls, folder: str | os.PathLike, *, tta: str | None = None, device: torch.device | str | None = None
    ) -> Segmenter:
        """A model folder written by `save` (its TTA mode unless `tta` is given)."""
        folder = Path(folder)
        info = read_model_info(folder, "segmenter")
        return cls.from_checkpoints(
            [folder / name for name in info["checkpoints"]],
            tta=tta or info.get("tta"),
            device=device,
            postprocess=info.get("postprocess"),
        )


MODEL_FILE = "kit_model.json"
MODEL_FORMAT = "kit-model-1"


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
