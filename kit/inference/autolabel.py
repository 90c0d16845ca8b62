"""Training labels made by a model instead of by hand (Sadanandan et al. 2017, seed 004: ground truth
from a fluorescence channel, a network trained on another channel of the same fields).

`autolabel` runs any kit model (`SegmentationModel`: a trained experiment, an ensemble, or the untrained
`classical` pipeline) over samples and returns them with the predicted label images as their labels,
marked as automatic (`Sample.label_source`, with the model's confidence in `label_score`), so a dataset
written from them trains models (as `data.root` or through `data.extra`) but never scores one
(`kit.data.dataset.NucleiDataset.truth`). The model may see one channel (`label_channel`, e.g. the
nuclear stain) while the written images keep other channels (`image_channels`). Where a sample already
had drawn labels, the automatic ones are scored against them (`agreement`): how far automatic labels
are from a human's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from kit.data.sample import Sample
from kit.errors import DataError
from kit.inference.contract import Segmentation, SegmentationModel
from kit.metrics import dsb_score

RECORD_COLUMNS = ("image_id", "split", "n_instances", "label_score", "kept", "agreement")


def label_confidence(seg: Segmentation) -> float:
    """How sure the model is of one image's labels, in [0, 1]: the ensemble's estimated DSB score when it
    made one; else the mean detection score of the instances (instance models); else the mean, over the
    instances' pixels, of the "mask" map if the model has one, otherwise of its foreground map (body).
    NaN for an image without instances. Only the ensemble's estimate is calibrated; the others rank images."""
    if math.isfinite(seg.estimated_score):
        return float(seg.estimated_score)
    inside = seg.labels > 0
    if not inside.any():
        return float("nan")
    if seg.scores is not None and seg.scores.size:
        return float(np.mean(seg.scores))
    maps = dict(zip(seg.channels, seg.probs, strict=True))
    confidence = maps.get("mask", seg.foreground())
    return float(np.mean(confidence[inside])) if confidence is not None else float("nan")


def select_channels(image: np.ndarray, channels: Sequence[int] | None, what: str) -> np.ndarray:
    """`image` (H×W or H×W×C) reduced to `channels` (one channel gives H×W); all of it when None."""
    if channels is None:
        return image
    planes = image[..., None] if image.ndim == 2 else image
    bad = [c for c in channels if not 0 <= c < planes.shape[2]]
    if bad or not channels:
        raise DataError(
            f"{what}: channel(s) {bad or list(channels)} do not exist in an image of {planes.shape[2]}"
        )
    picked = planes[..., list(channels)]
    return picked[..., 0] if picked.shape[2] == 1 else picked


@dataclass
class AutolabelResult:
    """The samples with automatic labels (those scoring at least `min_score`) and one record per image
    (`RECORD_COLUMNS`: instances, confidence, kept, agreement with its drawn labels or NaN)."""

    samples: list[Sample]
    records: pd.DataFrame

    @property
    def agreement(self) -> float:
        """Mean DSB score of the automatic labels against the drawn ones, over the images that had both."""
        return (
            float(self.records["agreement"].mean()) if self.records["agreement"].notna().any() else math.nan
        )


def autolabel(
    model: SegmentationModel,
    samples: Iterable[Sample],
    *,
    source: str,
    label_channel: int | None = None,
    image_channels: Sequence[int] | None = None,
    min_score: float | None = None,
    progress: bool = False,
) -> AutolabelResult:
    """Label every sample with `model` (see the module docstring). `source` names the model in
    `label_source`; `label_channel` is the channel the model sees (all when None); `image_channels` the
    channels the returned images keep (all when None); samples whose confidence (`label_confidence`) is
    under `min_score`, or NaN, are left out (and recorded as not kept)."""
    from tqdm.auto import tqdm

    if image_channels is not None and len(image_channels) not in (1, 3, 4):
        raise DataError(
            f"image channels {list(image_channels)}: a kit dataset stores images of 1, 3 or 4 channels"
        )
    kept, records = [], []
    for sample in tqdm(samples, desc="autolabel", unit="image", disable=not progress):
        image = np.asarray(sample.image)
        seen = image if label_channel is None else select_channels(image, [label_channel], sample.source)
        seg = model.predict(seen, details=True)
        score = label_confidence(seg)
        keep = min_score is None or (math.isfinite(score) and score >= min_score)
        drawn = sample.labels is not None and not sample.label_source
        records.append(
            {
                "image_id": sample.id,
                "split": sample.split,
                "n_instances": int(seg.labels.max(initial=0)),
                "label_score": score,
                "kept": keep,
                "agreement": dsb_score(np.asarray(sample.labels), seg.labels) if drawn else math.nan,
            }
        )
        if keep:
            kept.append(
                replace(
                    sample,
                    image=select_channels(image, image_channels, sample.source),
                    labels=seg.labels,
                    note="; ".join(filter(None, [sample.note, "autolabel"])),
                    label_source=source,
                    label_score=score,
                )
            )
    return AutolabelResult(kept, pd.DataFrame(records, columns=list(RECORD_COLUMNS)))
