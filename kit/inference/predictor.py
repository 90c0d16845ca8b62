"""A trained network (or several fold models, averaged) as a function: normalised image → probability maps.

Composes the building blocks in one place: tensor conversion, tiling with Gaussian blending (any size),
test-time augmentation, averaging over models. Post-processing is kept apart
(`kit.inference.postprocess.instances_from_probs`) so thresholds can be re-tuned on cached maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from kit.data.normalize import image_to_tensor
from kit.inference.tiling import model_predictor, predict_tiled
from kit.inference.tta import predict_tta
from kit.models.precision import ComputeMode
from kit.models.registry import model_device


def image_tensor(image: np.ndarray, in_channels: int, device: torch.device) -> torch.Tensor:
    """Normalised uint8 H×W×C → float32 (C, H, W) in [0, 1] on `device`; ValueError for the wrong shape."""
    if image.ndim != 3 or image.shape[2] != in_channels:
        raise ValueError(f"expected an H×W×{in_channels} image, got shape {image.shape}")
    return image_to_tensor(image).to(device)


class Predictor:
    """Probability maps (K, H, W) float32 for a normalised uint8 H×W×C image.

    `models` share channels and input channels (e.g. the K fold models of one experiment); their
    probabilities (each under its own recorded activation) are averaged. `tta` is the default test-time
    augmentation; `predict_probs` may choose another per call. `precision` and `channels_last` say how
    the networks run (`kit.models.precision`; the models are put in that memory format in place);
    tiling, TTA and the averaged maps are float32 whatever they are.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        tta: str = "none",
        scales: Sequence[float] = (1.0,),
        tile: int = 512,
        overlap: int = 64,
        batch_size: int = 4,
        device: torch.device | str | None = None,
        precision: str = "auto",
        channels_last: bool = True,
    ) -> None:
        if not models:
            raise ValueError("Predictor needs at least one model")
        self.device = torch.device(device) if device is not None else model_device(models[0])
        self.compute = ComputeMode.resolve(self.device, precision, channels_last)
        self.models = [self.compute.prepare(m).eval() for m in models]
        cfg = self.models[0].kit_cfg
        self.channels: tuple[str, ...] = tuple(cfg["channels"])
        self.in_channels: int = int(cfg["in_channels"])
        self.multiple: int = int(cfg["output_stride"])
        self._fns = [model_predictor(m, self.compute) for m in self.models]
        self.tta, self.scales = tta, tuple(scales)
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """uint8 H×W×C → float32 (1, C, H, W) in [0, 1] on the predictor's device."""
        return image_tensor(image, self.in_channels, self.device).unsqueeze(0)

    @torch.no_grad()
    def predict_probs(self, image: np.ndarray, tta: str | None = None) -> np.ndarray:
        """Averaged probability maps (K, H, W) of one normalised uint8 H×W×C image (TTA `tta`, default
        the predictor's)."""
        tta = tta or self.tta
        x = self.image_tensor(image)
        total = None
        for fn in self._fns:
            tiled = lambda t, fn=fn: predict_tiled(  # noqa: E731 - binds this model's fn
                fn,
                t,
                tile=self.tile,
                overlap=self.overlap,
                multiple=self.multiple,
                batch_size=self.batch_size,
            )
            probs = predict_tta(tiled, x, tta, self.scales)
            total = probs if total is None else total + probs
        assert total is not None
        return (total / len(self._fns))[0].float().cpu().numpy()
