"""Exact stand-ins for a kit model in the block-wise tests (a module of its own, so Dask workers started
for the tests can unpickle them by name)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from kit.data.normalize import normalize_image


@dataclass
class FakeSegmentation:
    labels: np.ndarray


class TruthModel:
    """The image *is* the truth's label image: any window's labels are the truth's, renumbered 1..n in
    the window (as a real model numbers its own instances); nuclei cut by the window come out cut."""

    def predict(self, image, *, details=False, **_):
        labels = relabel_sequential(np.asarray(image).astype(np.int64))[0].astype(np.int32)
        return FakeSegmentation(labels) if details else labels


class ThresholdModel:
    """Connected components of the normalised image above 127: a model whose result for each nucleus
    depends only on its pixels and on the normalisation levels (the whole image's when given)."""

    def predict(self, image, *, details=False, intensity_ranges=None):
        normalized = normalize_image(
            image, 1, intensity_range=None if intensity_ranges is None else intensity_ranges[1]
        )[:, :, 0]
        labels = ndi.label(normalized > 127)[0].astype(np.int32)
        return FakeSegmentation(labels) if details else labels


class DiesOnceModel(ThresholdModel):
    """`ThresholdModel` whose worker process dies (SIGKILL-like `os._exit`) the first time it predicts
    anything after the marker file exists: the run must still complete, on the other workers."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def predict(self, image, **kwargs):
        try:
            os.rename(self.marker, self.marker + ".used")
        except FileNotFoundError:
            return super().predict(image, **kwargs)
        os._exit(1)
