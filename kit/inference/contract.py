"""The one contract every kit model keeps: raw image(s) in, instance label image(s) out.

`SegmentationModel` is the base of `kit.Segmenter` (fold networks: U-Net, FPN, Mask R-CNN) and
`kit.EnsembleSegmenter` (base models + the LightGBM IoU model), and of any model family added later.
It handles what is the same for all of them, once:

- the input: one image (H×W or H×W×C with C ≤ 4, any dtype), a list/tuple of images (any sizes), or an
  (N, H, W) / (N, H, W, C) batch array (`split_batch`);
- the thresholds: each model stores typed `thresholds` (`kit.inference.thresholds`), and a call may
  override some of them (validated before any image is touched);
- test-time augmentation chosen per call (`tta`, default the model's own);
- fixed normalisation levels per call (`intensity_ranges`: a block of a larger image is normalised as
  the whole image);
- the output: labels (int32 H×W, 0 = background) or, with `details=True`, a `Segmentation` per image;
- images of any size, block by block (`predict_blocks`, `kit.scale`), written as OME-Zarr.

A subclass implements `segment` (one raw image), `save` (a model folder that `kit.load_segmenter`
reads back) and `inference_configs` (the inference settings block-wise prediction starts from).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.inference.thresholds import Thresholds, with_overrides
from kit.inference.tta import check_tta


@dataclass
class Segmentation:
    """One image's prediction.

    labels: int32 (H, W), 0 = background, 1..N; probs: float32 (K, H, W) maps named by `channels`
    (semantic: the network's channels; instance: "mask", the highest score × mask probability per pixel;
    ensemble: none); scores: float32 (N,), the detection score of label i at index i − 1 (instance models;
    the predicted IoU for the ensemble); estimated_score: the ensemble's estimate of the image's DSB score
    (else NaN), estimate_flag: "ok" when the image is like those the estimate was calibrated on, else why not.
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


def split_batch(images: Any) -> tuple[list[np.ndarray], bool]:
    """(images, whether the input was a batch). One image: an H×W array, or H×W×C with C ≤ 4. A batch: a
    list, tuple or 1-D object array of images, an (N, H, W) array with W > 4, or an (N, H, W, C) array.
    DataError for anything else."""
    if isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.dtype == object):
        items = [np.asarray(image) for image in images]
        for image in items:
            _check_image(image)
        return items, True
    x = np.asarray(images)
    if x.ndim == 2 or (x.ndim == 3 and x.shape[2] <= 4):
        _check_image(x)
        return [x], False
    if x.ndim in (3, 4) and x.shape[0] > 0:
        return list(x), True
    raise DataError(
        f"cannot segment this input: expected an image (H×W or H×W×C with C ≤ 4) or a batch of them "
        f"((N, H, W), (N, H, W, C) or a list), got an array of shape {x.shape}"
    )


def _check_image(image: np.ndarray) -> None:
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] <= 4)) or min(image.shape[:2]) < 1:
        raise DataError(
            f"cannot segment this image: expected H×W or H×W×C with C ≤ 4, got shape {image.shape}"
        )
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise DataError(f"cannot segment this image: expected numbers, got dtype {image.dtype}")


class SegmentationModel(ABC):
    """A trained model: raw image(s) → instance label image(s); see the module docstring.

    Subclasses set `in_channels` (the channels the model reads; other images are converted),
    `thresholds` (its stored, typed thresholds) and `tta` (its default test-time augmentation; "" for
    a model that leaves it to its parts, as the ensemble leaves it to its bases).
    """

    kind: ClassVar[str]
    """The model folder kind written by `save` ("segmenter", "ensemble")."""
    in_channels: int
    thresholds: Thresholds
    tta: str

    def predict(
        self,
        images: Any,
        *,
        thresholds: Mapping[str, Any] | Thresholds | None = None,
        tta: str | None = None,
        details: bool = False,
        intensity_ranges: Mapping[int, tuple[float, float]] | None = None,
    ) -> Any:
        """Instance labels of one image (int32 H×W), or a list of them for a list of images, or an
        (N, H, W) array for a batch array. With `details`, `Segmentation`s instead (labels, probability
        maps, channel names, scores; `.instances()` gives the per-instance table).

        `thresholds` overrides some of the model's own for this call (e.g. {"seed_threshold": 0.6});
        `tta` ("none", "flips", "d4") its test-time augmentation; `intensity_ranges` ({input channels:
        (lo, hi)}) the intensities normalised to 0 and 255 instead of each image's own percentiles."""
        used = with_overrides(self.thresholds, thresholds, f"thresholds of {type(self).__name__}.predict")
        if tta is not None:
            check_tta(tta)
        items, batched = split_batch(images)
        out = [
            self.segment(image, thresholds=used, tta=tta, intensity_ranges=intensity_ranges)
            for image in items
        ]
        if details:
            return out if batched else out[0]
        labels = [seg.labels for seg in out]
        if not batched:
            return labels[0]
        if isinstance(images, np.ndarray) and images.dtype != object:
            return np.stack(labels)
        return labels

    __call__ = predict

    def predict_blocks(self, image: Any, out: str | os.PathLike | None = None, **options: Any) -> Any:
        """Predict an image of any size block by block (`kit.scale.predict_large`): a path (OME-Zarr, Zarr,
        TIFF, PNG) or an array. The result is an OME-Zarr label image at `out` (None: in memory) with a
        Parquet instance table. `options`: block, halo, context (default: `inference_configs`), workers
        or scheduler (a Dask cluster), executor, progress. Returns a `kit.scale.BlockwiseResult`
        (`.labels`: the zarr label array, read lazily; `.table`: the instances)."""
        from kit.scale import predict_large

        return predict_large(self, image, out, **options)

    @property
    @abstractmethod
    def inference_configs(self) -> list[Any]:
        """The `inference` config sections the model predicts with (`kit.config.InferenceConfig`): block
        size, halo and context of block-wise prediction come from them (the widest of several)."""

    @abstractmethod
    def segment(
        self,
        image: np.ndarray,
        *,
        thresholds: Thresholds,
        tta: str | None,
        intensity_ranges: Mapping[int, tuple[float, float]] | None = None,
    ) -> Segmentation:
        """The prediction of one raw image (H×W or H×W×C, any dtype) with these thresholds and TTA (None:
        the model's own), normalised with `intensity_ranges` when given."""

    @abstractmethod
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model as a folder (`kit_model.json`, `thresholds.json`, its weights) that
        `kit.load_segmenter(folder)` reads back."""
