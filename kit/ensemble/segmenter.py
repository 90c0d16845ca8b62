"""The ensemble as one model object: raw image → every base model's instances → candidates (with
re-splits) → `FittedEnsemble.select`, the same selection `kit ensemble` makes on stored predictions.

On disk (`save` / `load`): `kit_model.json` (kind "ensemble", base names), `thresholds.json` (its
`SelectionThresholds`), `bases/<name>/` (each a `Segmenter` folder) and `lightgbm/` (the `IoUModel`,
whose metadata holds the split thresholds, neighbour radii, score estimator and calibration domain).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kit.config import SelectionThresholds
from kit.ensemble.candidates import Candidates, PredictionSource, image_candidates
from kit.ensemble.fit import FittedEnsemble
from kit.ensemble.model import IoUModel
from kit.errors import ConfigError
from kit.fileio import atomic_write_text
from kit.inference.artifacts import quantize_probs
from kit.inference.contract import Segmentation, SegmentationModel
from kit.inference.segmenter import MODEL_FILE, MODEL_FORMAT, Segmenter, read_model_info
from kit.inference.thresholds import THRESHOLDS_FILE, read_thresholds, write_thresholds

LIGHTGBM_DIR = "lightgbm"
BASES_DIR = "bases"
_IMAGE = "image"


class EnsembleSegmenter(SegmentationModel):
    """Base `Segmenter`s by name and the fitted IoU model that chooses among their instances. Its
    `thresholds` are the selection's (`SelectionThresholds`); `tta` given to a call goes to every base
    (by default each base uses its own)."""

    kind = "ensemble"

    def __init__(
        self,
        bases: Sequence[tuple[str, Segmenter]],
        model: IoUModel,
        thresholds: SelectionThresholds | None = None,
    ) -> None:
        if not bases:
            raise ConfigError("an ensemble needs at least one base model")
        self.fitted = FittedEnsemble.from_model(model)
        names = [name for name, _ in bases]
        if names != (self.fitted.sources or names):
            raise ConfigError(f"the IoU model was trained on sources {self.fitted.sources}, got {names}")
        self.fitted.sources = names
        self.bases = list(bases)
        self.model = model
        self.thresholds = thresholds or self.fitted.thresholds
        self.in_channels = self.bases[0][1].in_channels
        self.tta = ""

    @property
    def inference_configs(self) -> list[Any]:
        return [base.config.inference for _, base in self.bases]

    def candidates(
        self,
        image: np.ndarray,
        *,
        tta: str | None = None,
        intensity_ranges: Mapping[int, tuple[float, float]] | None = None,
    ) -> Candidates:
        """Every base's prediction of the raw image, as the candidates (with re-splits) the IoU model
        chooses among."""
        sources = []
        for name, base in self.bases:
            seg = base.predict(image, tta=tta, details=True, intensity_ranges=intensity_ranges)
            # Re-splits run on the maps as predict runs store them, so this object and `kit ensemble`
            # on stored predictions choose the same instances.
            stored = quantize_probs(seg.probs).astype(np.float32) / 255
            maps = dict(zip(seg.channels, stored, strict=True)) if base.task == "semantic" else {}
            sources.append(
                PredictionSource(name, base.thresholds.model_dump(), {_IMAGE: (seg.labels, maps, seg.scores)})
            )
        return image_candidates(_IMAGE, sources, self.fitted.split_thresholds)

    def segment(
        self,
        image: np.ndarray,
        *,
        thresholds: SelectionThresholds,
        tta: str | None,
        intensity_ranges: Mapping[int, tuple[float, float]] | None = None,
    ) -> Segmentation:
        """The selection among the bases' instances (`candidates`); the `Segmentation`'s scores are the
        kept instances' predicted IoU, with the image's estimated score and its calibration flag."""
        cands = self.candidates(image, tta=tta, intensity_ranges=intensity_ranges)
        chosen = self.fitted.select(cands, image, thresholds)
        labels, kept = chosen.labels, chosen.kept
        scores = np.zeros(int(labels.max(initial=0)), dtype=np.float32)
        scores[kept["label"].to_numpy() - 1] = kept["predicted_iou"].to_numpy()
        empty = np.zeros((0, *labels.shape), dtype=np.float32)
        return Segmentation(labels, empty, (), scores, chosen.estimated, chosen.flag)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the ensemble as a model folder (see the module docstring)."""
        folder = Path(folder)
        for name, base in self.bases:
            base.save(folder / BASES_DIR / name)
        self.model.save(folder / LIGHTGBM_DIR)
        write_thresholds(folder, self.thresholds)
        info = {"format": MODEL_FORMAT, "kind": self.kind, "bases": [name for name, _ in self.bases]}
        atomic_write_text(folder / MODEL_FILE, json.dumps(info, indent=2))
        return folder

    @classmethod
    def load(
        cls, folder: str | os.PathLike, *, device: torch.device | str | None = None
    ) -> EnsembleSegmenter:
        """An ensemble folder written by `save`."""
        folder = Path(folder)
        info = read_model_info(folder, cls.kind)
        bases = [(name, Segmenter.load(folder / BASES_DIR / name, device=device)) for name in info["bases"]]
        stored = read_thresholds(folder) if (folder / THRESHOLDS_FILE).is_file() else None
        if stored is not None and not isinstance(stored, SelectionThresholds):
            raise ConfigError(f"{folder / THRESHOLDS_FILE}: an ensemble needs selection thresholds")
        return cls(bases, IoUModel.load(folder / LIGHTGBM_DIR), stored)
