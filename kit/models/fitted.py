"""Semantic models fitted outside torch: classical image processing and random-forest pixel classifiers.

A `FittedModule` is a registered semantic model like a U-Net, so everything downstream is shared: it
maps a float32 (N, C, H, W) batch in [0, 1] (a `normalize_image` output / 255) to probability maps
(N, K, H, W) named by `kit_cfg["channels"]` (activation "none": they are probabilities already), goes
through the same tiling, TTA, fold averaging and watershed (`kit.inference.segmenter`), and is saved in
kit's checkpoint format. What differs:

- it is fitted, not trained by gradient: `fit(images)` sets its state from whole training images and
  their labels (`kit.training.fitting.FitTrainer` calls it once per fold, instead of epochs of
  optimiser steps);
- its state is not tensors but plain values (chosen parameters, a LightGBM model as text): the module's
  *extra state* (`fitted_state` / `load_fitted_state`, through torch's `get_extra_state`), which a
  `state_dict` carries and `torch.load(weights_only=True)` reads;
- its maps are computed in numpy/scipy (`predict_maps`, one image at a time, on the CPU).

`ready_untrained` says whether the default state is a usable model (classical: its default parameters),
so `kit predict --model classical --input DIR` works before any training.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from kit.models.weights_folder import WeightsSource

FitImage = tuple[np.ndarray, np.ndarray]
"""A normalised uint8 H×W×C image and its int label image (0 = background)."""

Evaluate = Callable[["FittedModule"], dict[str, Any]]
"""Scores a model's current state on the training images: {"score": mean DSB score at its best watershed
thresholds, "params": those thresholds}. Given by the fitter (`kit.training.fitting`), which owns the
tuning machinery, to the families whose fit is a search (`classical`)."""


class FittedModule(nn.Module):
    """Base of the models fitted outside torch; see the module docstring. Subclasses set `kit_cfg`
    through `_describe` and implement `fit`, `predict_maps`, `fitted_state` and `load_fitted_state`."""

    ready_untrained: ClassVar[bool] = False

    def _describe(self, arch: str, in_channels: int, channels: Sequence[str]) -> None:
        """The `kit_cfg` every kit model carries (the registry adds name, arguments and task)."""
        self.kit_cfg = {
            "arch": arch,
            "in_channels": int(in_channels),
            "channels": tuple(channels),
            "activation": "none",
            "output_stride": 1,
            "weights": WeightsSource("none", arch),
        }

    @abstractmethod
    def fit(
        self, images: Sequence[FitImage], *, evaluate: Evaluate, seed: int = 0, progress: bool = False
    ) -> dict[str, Any]:
        """Fit the model's state on whole training images; returns what was chosen or measured, to log
        with the fold run (numbers as metrics, everything as params)."""

    @abstractmethod
    def predict_maps(self, image: np.ndarray) -> np.ndarray:
        """Probability maps (K, H, W) float32 of one float32 H×W×C image in [0, 1]."""

    @abstractmethod
    def fitted_state(self) -> dict[str, Any]:
        """The fitted state as plain values (str, int, float, bool, lists, dicts)."""

    @abstractmethod
    def load_fitted_state(self, state: dict[str, Any]) -> None:
        """Restore a state returned by `fitted_state`."""

    @property
    def is_fitted(self) -> bool:
        """Whether the model can predict: it was fitted, or its default state is a model."""
        return self.ready_untrained or bool(self.fitted_state())

    def get_extra_state(self) -> dict[str, Any]:
        return self.fitted_state()

    def set_extra_state(self, state: Any) -> None:
        self.load_fitted_state(dict(state))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float in [0, 1] → probability maps (N, K, H, W), computed image by image on the CPU."""
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} has not been fitted; train it with `kit train`")
        images = x.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
        maps = np.stack([self.predict_maps(np.ascontiguousarray(image)) for image in images])
        return torch.from_numpy(maps.astype(np.float32, copy=False)).to(x.device)
