"""The ensemble as one model object: raw image → every base model's instances → candidates (with
re-splits) → features → predicted IoU → selection, with the same building blocks `kit ensemble` uses
on stored predictions (`kit.ensemble.candidates`, `features`, `selection`, `estimate`).

On disk (`save` / `load`): `kit_model.json` (kind "ensemble", base names), `bases/<name>/` (each a
`Segmenter` folder) and `lightgbm/` (the `IoUModel`, whose metadata holds the split thresholds,
neighbour radii, selection threshold, NMS overlap and score estimator it was tuned with).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kit.ensemble.candidates import PredictionSource, image_candidates
from kit.ensemble.domain import CalibrationDomain, median_area
from kit.ensemble.estimate import ScoreEstimator
from kit.ensemble.features import candidate_features
from kit.ensemble.model import IoUModel
from kit.ensemble.selection import select_instances
from kit.errors import ConfigError
from kit.fileio import atomic_write_text
from kit.inference.artifacts import quantize_probs
from kit.inference.segmenter import MODEL_FILE, MODEL_FORMAT, Segmentation, Segmenter, read_model_info

LIGHTGBM_DIR = "lightgbm"
BASES_DIR = "bases"
_IMAGE = "image"


class EnsembleSegmenter:
    """Base `Segmenter`s by name and the LightGBM IoU model that chooses among their instances."""

    def __init__(self, bases: Sequence[tuple[str, Segmenter]], model: IoUModel) -> None:
        meta = model.metadata
        names = [name for name, _ in bases]
        if names != list(meta.get("sources", names)):
            raise ConfigError(f"the IoU model was trained on sources {meta.get('sources')}, got {names}")
        self.bases = list(bases)
        self.model = model
        self.split_thresholds = list(meta.get("split_thresholds", []))
        self.radii = list(meta.get("neighbour_radii", [50, 100, 150, 200]))
        self.threshold = float(meta.get("threshold", 0.3))
        self.nms_overlap = float(meta.get("nms_overlap", 0.3))
        self.estimator = ScoreEstimator.from_dict(meta["estimator"]) if "estimator" in meta else None
        self.domain = CalibrationDomain.from_dict(meta["domain"]) if "domain" in meta else None

    def predict(self, image, *, details: bool = False):
        """Instance labels (int32 H×W) of a raw image, or a list for a list; with `details` a `Segmentation`
        whose scores are the kept instances' predicted IoU and with the image's estimated DSB score."""
        if isinstance(image, (list, tuple)):
            return [self.predict(im, details=details) for im in image]
        sources = []
        for name, base in self.bases:
            seg = base.predict(image, details=True)
            # Re-splits run on the maps as predict runs store them, so this object and `kit ensemble`
            # on stored predictions choose the same instances.
            stored = quantize_probs(seg.probs).astype(np.float32) / 255
            maps = dict(zip(seg.channels, stored, strict=True)) if base.task == "semantic" else {}
            sources.append(PredictionSource(name, base.postprocess, {_IMAGE: (seg.labels, maps, seg.scores)}))
        cands = image_candidates(_IMAGE, sources, self.split_thresholds)
        predicted = self.model.predict(candidate_features(cands, [n for n, _ in self.bases], self.radii))
        labels, kept = select_instances(
            cands.layers, cands.table, predicted, threshold=self.threshold, nms_overlap=self.nms_overlap
        )
        if not details:
            return labels
        scores = np.zeros(int(labels.max(initial=0)), dtype=np.float32)
        scores[kept["label"].to_numpy() - 1] = kept["predicted_iou"].to_numpy()
        estimated = self.estimator.image_score(kept["predicted_iou"].to_numpy()) if self.estimator else np.nan
        flag = self.domain.check(image, median_area(labels))[0] if self.domain else ""
        empty = np.zeros((0, *labels.shape), dtype=np.float32)
        return Segmentation(labels, empty, (), scores, float(estimated), flag)

    __call__ = predict

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the ensemble as a model folder (see the module docstring)."""
        folder = Path(folder)
        for name, base in self.bases:
            base.save(folder / BASES_DIR / name)
        self.model.save(folder / LIGHTGBM_DIR)
        info = {"format": MODEL_FORMAT, "kind": "ensemble", "bases": [name for name, _ in self.bases]}
        atomic_write_text(folder / MODEL_FILE, json.dumps(info, indent=2))
        return folder

    @classmethod
    def load(
        cls, folder: str | os.PathLike, *, device: torch.device | str | None = None
    ) -> EnsembleSegmenter:
        """An ensemble folder written by `save`."""
        folder = Path(folder)
        info = read_model_info(folder, "ensemble")
        bases = [(name, Segmenter.load(folder / BASES_DIR / name, device=device)) for name in info["bases"]]
        return cls(bases, IoUModel.load(folder / LIGHTGBM_DIR))
