"""`classical`: CellProfiler's IdentifyPrimaryObjects as a kit model (the classical baseline of Caicedo et
al. 2019, seed 003; the automatic ground truth of Sadanandan et al. 2017, seed 004). No weights, no GPU.

Maps of one image (grey = the mean of its channels, in [0, 1]):

1. smoothing: a Gaussian of `sigma` pixels; with `polarity` "auto", an image whose Otsu foreground
   covers more than half of it is taken as dark nuclei on a bright background (brightfield) and
   inverted ("bright" and "dark" fix the choice);
2. an automatic threshold T of the smoothed image: Otsu, Li, or local (the Gaussian-weighted mean over
   `block_size` pixels, never under half the Otsu threshold, so flat background stays background);
3. "mask" = sigmoid((s − T) / (`softness` · mean T)): the foreground as a soft map, so that the
   watershed's `mask_threshold` acts as CellProfiler's threshold correction factor (0.5 is exactly T);
4. "body" = the distance transform of s > T divided by its maximum within each connected component:
   1 at the centre of each blob, so the watershed's seeds (body > `seed_threshold`) are the cores of
   nuclei, and a clump splits where its neck is narrower than `seed_threshold` × its widest part
   (declumping by shape).

The U-Net's watershed (`kit.inference.postprocess.instances_from_probs`, `WatershedThresholds`) then
floods each seed over the mask along the distance transform and drops small objects: one post-processing,
tuned out of fold like any model's, for every semantic family. Fitting chooses `sigma` and the threshold
method on the fold's training images (`fit`); the default state (sigma 2, Otsu) is a usable model
without any training (`ready_untrained`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
from scipy import ndimage as ndi

from kit.errors import ConfigError
from kit.models.fitted import Evaluate, FitImage, FittedModule
from kit.models.registry import register_model

ThresholdMethod = Literal["otsu", "li", "local"]
THRESHOLD_METHODS: tuple[str, ...] = get_args(ThresholdMethod)
Polarity = Literal["auto", "bright", "dark"]
POLARITIES: tuple[str, ...] = get_args(Polarity)
CHANNELS = ("body", "mask")
DEFAULT_STATE = {"sigma": 2.0, "method": "otsu"}


def smooth_grey(image: np.ndarray, sigma: float, polarity: str = "bright") -> np.ndarray:
    """The channel mean of an H×W×C float image in [0, 1], Gaussian-smoothed with `sigma` pixels (0: not
    smoothed), inverted when the nuclei are dark (`polarity`, see the module docstring)."""
    from skimage.filters import threshold_otsu

    if polarity not in POLARITIES:
        raise ConfigError(f"unknown polarity {polarity!r}; choose one of {', '.join(POLARITIES)}")
    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=2) if grey.ndim == 3 else grey
    smoothed = ndi.gaussian_filter(grey, sigma) if sigma > 0 else grey
    if polarity == "auto" and smoothed.max() > smoothed.min():
        polarity = "dark" if np.mean(smoothed > threshold_otsu(smoothed)) > 0.5 else "bright"
    return 1.0 - smoothed if polarity == "dark" else smoothed


def threshold_map(smoothed: np.ndarray, method: str, block_size: int = 51) -> np.ndarray | float:
    """The automatic threshold of a smoothed grey image: a number (otsu, li) or a map (local)."""
    from skimage.filters import threshold_li, threshold_local, threshold_otsu

    if method not in THRESHOLD_METHODS:
        raise ConfigError(
            f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}"
        )
    if smoothed.max() <= smoothed.min():
        return float(smoothed.max()) + 1.0  # a flat image has no foreground
    if method == "otsu":
        return float(threshold_otsu(smoothed))
    if method == "li":
        return float(threshold_li(smoothed))
    local = threshold_local(smoothed, block_size | 1, method="gaussian")
    return np.maximum(local, 0.5 * float(threshold_otsu(smoothed)))


def classical_maps(
    image: np.ndarray,
    *,
    sigma: float,
    method: str,
    polarity: str = "auto",
    block_size: int = 51,
    softness: float = 0.25,
) -> np.ndarray:
    """("body", "mask") maps (2, H, W) float32 of an H×W×C float image in [0, 1] (module docstring)."""
    smoothed = smooth_grey(image, sigma, polarity)
    threshold = threshold_map(smoothed, method, block_size)
    scale = softness * max(float(np.mean(threshold)), 1e-3)
    mask = 1.0 / (1.0 + np.exp(-np.clip((smoothed - threshold) / scale, -30.0, 30.0)))
    foreground = smoothed > threshold
    distance = ndi.distance_transform_edt(foreground)
    blobs, n = ndi.label(foreground)
    body = np.zeros(smoothed.shape, dtype=np.float32)
    if n:
        peak = np.asarray(ndi.maximum(distance, blobs, index=np.arange(1, n + 1)), dtype=np.float64)
        inside = blobs > 0
        body[inside] = distance[inside] / peak[blobs[inside] - 1]
    return np.stack([body, mask.astype(np.float32)])


class Classical(FittedModule):
    """See the module docstring. `sigmas` and `methods` are what `fit` chooses from."""

    ready_untrained = True

    def __init__(
        self,
        in_channels: int,
        sigmas: Sequence[float],
        methods: Sequence[str],
        polarity: str,
        block_size: int,
        softness: float,
    ) -> None:
        super().__init__()
        unknown = sorted(set(methods) - set(THRESHOLD_METHODS))
        if unknown or not methods or not sigmas or min(sigmas) < 0:
            raise ConfigError(
                f"classical: methods must be some of {', '.join(THRESHOLD_METHODS)} (got {list(methods)}) "
                f"and sigmas non-negative numbers (got {list(sigmas)})"
            )
        if polarity not in POLARITIES:
            raise ConfigError(f"classical: polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
        if block_size < 3 or softness <= 0:
            raise ConfigError(
                f"classical: need block_size >= 3 and softness > 0, got {block_size}, {softness}"
            )
        self.sigmas, self.methods = [float(s) for s in sigmas], list(methods)
        self.polarity, self.block_size, self.softness = polarity, int(block_size), float(softness)
        self.state = dict(DEFAULT_STATE)
        self._describe("classical", in_channels, CHANNELS)

    def predict_maps(self, image: np.ndarray) -> np.ndarray:
        return classical_maps(
            image,
            sigma=self.state["sigma"],
            method=self.state["method"],
            polarity=self.polarity,
            block_size=self.block_size,
            softness=self.softness,
        )

    def fitted_state(self) -> dict[str, Any]:
        return dict(self.state)

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        self.state = {"sigma": float(state["sigma"]), "method": str(state["method"])}

    def fit(
        self, images: Sequence[FitImage], *, evaluate: Evaluate, seed: int = 0, progress: bool = False
    ) -> dict[str, Any]:
        """Coordinate search on the training images: each threshold method at the middle sigma, then each
        sigma with the best method, every state judged at its best watershed thresholds (`evaluate`)."""
        from tqdm.auto import tqdm

        sigma0 = self.sigmas[len(self.sigmas) // 2]
        candidates = [{"sigma": sigma0, "method": m} for m in self.methods]
        bar = tqdm(total=len(self.methods) + len(self.sigmas) - 1, desc="classical fit", disable=not progress)
        results: dict[tuple[float, str], dict[str, Any]] = {}

        def score(state: dict[str, Any]) -> dict[str, Any]:
            key = (state["sigma"], state["method"])
            if key not in results:
                self.load_fitted_state(state)
                results[key] = evaluate(self)
                bar.update(1)
            return results[key]

        best = max(candidates, key=lambda s: score(s)["score"])  # first maximum: the earlier on ties
        best = max(
            [best, *({"sigma": s, "method": best["method"]} for s in self.sigmas if s != sigma0)],
            key=lambda s: score(s)["score"],
        )
        bar.close()
        self.load_fitted_state(best)
        chosen = results[(best["sigma"], best["method"])]
        return {
            "sigma": best["sigma"],
            "method": best["method"],
            "score": chosen["score"],
            **chosen["params"],
        }


@register_model
def classical(
    in_channels: int = 1,
    sigmas: Sequence[float] = (1.0, 2.0, 4.0),
    methods: Sequence[ThresholdMethod] = THRESHOLD_METHODS,  # type: ignore[assignment]
    polarity: Polarity = "auto",
    block_size: int = 51,
    softness: float = 0.25,
) -> Classical:
    """The classical pipeline (module docstring); `fit` chooses the smoothing among `sigmas` and the
    threshold among `methods`; `polarity` says whether nuclei are bright, dark or either; `block_size`
    is the local threshold's window, `softness` the width of the soft mask relative to the threshold."""
    return Classical(in_channels, sigmas, methods, polarity, block_size, softness)
