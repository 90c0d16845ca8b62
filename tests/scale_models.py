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


def train_nuclei_unet(folder: Path, steps: int = 40):
    """unet_tiny's network trained for `steps` plain Adam steps on synthetic fluorescence nuclei (about
    10 s on one core): a real network that finds nuclei, saved as a model folder at `folder` and
    returned as a `kit.Segmenter`. The session's `trained_project` model is trained too briefly to find
    any nucleus, and block-wise vs whole-image agreement needs instances to compare."""
    import torch

    from kit.config import load_experiment
    from kit.data.normalize import image_to_tensor
    from kit.data.synthetic import generate_synthetic
    from kit.inference.segmenter import Segmenter
    from kit.targets import make_targets
    from kit.training.tasks import build_loss
    from kit.training.trainer import build_model

    torch.manual_seed(0)
    cfg = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "unet_tiny.yaml")
    model, loss_fn = build_model(cfg), build_loss(cfg)
    samples = generate_synthetic(8, seed=0, size=(96, 96), styles=["fluorescence"])
    x = torch.stack([image_to_tensor(normalize_image(s.image, 3)) for s in samples])
    y = torch.stack([torch.from_numpy(make_targets(s.labels)) for s in samples])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        batch, turns = rng.choice(len(samples), 4, replace=False), int(rng.integers(4))
        optimizer.zero_grad()
        loss_fn(
            model(torch.rot90(x[batch], turns, (2, 3))), torch.rot90(y[batch], turns, (2, 3)), None
        ).backward()
        optimizer.step()
    segmenter = Segmenter([model.eval()], cfg, device="cpu")
    segmenter.save(folder)
    return segmenter
