"""Image → instances for every model family: the one call validation in training and `kit predict` make.

`build_segmenter` reads the models' task (`kit.models.model_task`):

- semantic (U-Net, FPN): `Predictor` (tiles with Gaussian blending, TTA, fold models' maps averaged),
  then the watershed of `instances_from_probs` with `cfg.postprocess`;
- instance (Mask R-CNN): `InstancePredictor` (tiles, TTA and fold models merged by mask voting), then
  `detections_to_labels` with `cfg.instances`.

Both return a `Segmentation`, so the predict stage writes them in one layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kit.config import ExperimentConfig
from kit.errors import ConfigError
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
    scores: float32 (N,), the detection score of label i at index i − 1 (instance models only).
    """

    labels: np.ndarray
    probs: np.ndarray
    channels: tuple[str, ...]
    scores: np.ndarray | None = None

    def foreground(self) -> np.ndarray | None:
        """The map instance tables average inside each instance: "body", else "mask", else None."""
        for name in ("body", "mask"):
            if name in self.channels:
                return self.probs[self.channels.index(name)]
        return None


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
    `postprocess` replaces `cfg.postprocess` for semantic models (e.g. tuned values)."""
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
        kwargs = ins.model_dump(include={"score_threshold", "mask_threshold", "min_size", "overlap"})
        return InstanceSegmenter(predictor, kwargs)
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
