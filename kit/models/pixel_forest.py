"""`pixel_forest`: ilastik's pixel classifier as a kit model (the "Random Forest" of Caicedo et al. 2019).

Every pixel gets a filter-bank feature vector, computed for the whole image at once with scipy and
scikit-image filters (`filter_bank`): per input channel, the intensity, and at each scale σ (ilastik's
0.7–10 px) the Gaussian smoothing, the Laplacian of Gaussian, the Gaussian gradient magnitude, the two
eigenvalues of the structure tensor and the two eigenvalues of the Hessian of Gaussian. A gradient-boosted
forest (LightGBM, multiclass) learns kit's three pixel classes (`kit.targets`: nucleus body, touching
border, background) from pixels sampled on the training images, the same number per class and image at
most (as Caicedo et al. balanced theirs); its class probabilities are the body/border/background maps,
and the U-Net's watershed turns them into instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from kit.errors import ConfigError
from kit.models.fitted import Evaluate, FitImage, FittedModule
from kit.models.registry import register_model
from kit.targets import TARGET_CHANNELS, make_targets

DEFAULT_SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
FEATURES_PER_SCALE = 7


def filter_bank(image: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Features (H, W, C · (1 + 7 · len(sigmas))) float32 of an H×W×C float image (module docstring).

    Per scale σ, from Gaussian derivative filters of σ (scipy's separable `gaussian_filter` with `order`):
    the smoothing G, the Laplacian Gxx + Gyy, the gradient magnitude |(Gx, Gy)|, the eigenvalues of the
    structure tensor (the products of Gx, Gy smoothed again at σ) and of the Hessian (Gxx, Gxy, Gyy), both
    in closed form. (skimage's `hessian_matrix` computes the same Hessian several times slower.)"""
    image = np.asarray(image, dtype=np.float32)
    planes = image[..., None] if image.ndim == 2 else image
    features = []
    for c in range(planes.shape[2]):
        x = planes[..., c]
        features.append(x)
        for sigma in sigmas:

            def g(order: tuple[int, int], x: np.ndarray = x, sigma: float = sigma) -> np.ndarray:
                return ndi.gaussian_filter(x, sigma, order=order, mode="reflect")

            gy, gx, gyy, gxy, gxx = g((1, 0)), g((0, 1)), g((2, 0)), g((1, 1)), g((0, 2))
            syy, sxy, sxx = (
                ndi.gaussian_filter(a, sigma, mode="reflect") for a in (gy * gy, gx * gy, gx * gx)
            )
            features += [g((0, 0)), gxx + gyy, np.hypot(gx, gy)]
            features += _symmetric_eigenvalues(syy, sxy, sxx)
            features += _symmetric_eigenvalues(gyy, gxy, gxx)
    return np.stack(features, axis=-1).astype(np.float32, copy=False)


def _symmetric_eigenvalues(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> list[np.ndarray]:
    """The eigenvalues (larger first) of the 2×2 symmetric matrices [[a, b], [b, d]] at every pixel."""
    mean, spread = (a + d) / 2, np.hypot((a - d) / 2, b)
    return [mean + spread, mean - spread]


def sample_pixels(
    classes: np.ndarray, per_class: int, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Flat indices of up to `per_class` pixels of each class of an H×W class map, drawn without
    replacement (all of a class that has fewer)."""
    flat = classes.ravel()
    picked = []
    for k in range(n_classes):
        where = np.flatnonzero(flat == k)
        if where.size > per_class:
            where = rng.choice(where, per_class, replace=False)
        picked.append(where)
    return np.concatenate(picked)


class PixelForest(FittedModule):
    """See the module docstring; unfitted until `fit`."""

    def __init__(
        self,
        in_channels: int,
        sigmas: Sequence[float],
        samples_per_class: int,
        num_leaves: int,
        rounds: int,
        learning_rate: float,
        num_threads: int,
    ) -> None:
        super().__init__()
        if (
            not sigmas
            or min(sigmas) <= 0
            or samples_per_class < 1
            or num_leaves < 2
            or rounds < 1
            or num_threads < 0
        ):
            raise ConfigError(
                "pixel_forest: need positive sigmas, samples_per_class >= 1, num_leaves >= 2, rounds >= 1 and "
                f"num_threads >= 0; got sigmas={list(sigmas)}, samples_per_class={samples_per_class}, "
                f"num_leaves={num_leaves}, rounds={rounds}, num_threads={num_threads}"
            )
        self.sigmas = [float(s) for s in sigmas]
        self.samples_per_class, self.num_leaves = int(samples_per_class), int(num_leaves)
        self.rounds, self.learning_rate, self.num_threads = (
            int(rounds),
            float(learning_rate),
            int(num_threads),
        )
        self.booster: Any = None
        self._describe("pixel_forest", in_channels, TARGET_CHANNELS)

    @property
    def is_fitted(self) -> bool:
        return self.booster is not None

    @property
    def n_features(self) -> int:
        return self.kit_cfg["in_channels"] * (1 + FEATURES_PER_SCALE * len(self.sigmas))

    def fit(
        self, images: Sequence[FitImage], *, evaluate: Evaluate, seed: int = 0, progress: bool = False
    ) -> dict[str, Any]:
        """Sample pixels of each class on every image, then boost a multiclass forest on their features."""
        import lightgbm as lgb
        from tqdm.auto import tqdm

        rng = np.random.default_rng(seed)
        rows, targets = [], []
        for image, labels in tqdm(images, desc="pixel features", unit="image", disable=not progress):
            classes = make_targets(np.asarray(labels)).argmax(axis=0)
            picked = sample_pixels(classes, self.samples_per_class, len(TARGET_CHANNELS), rng)
            features = filter_bank(np.asarray(image, dtype=np.float32) / 255.0, self.sigmas)
            rows.append(features.reshape(-1, features.shape[-1])[picked])
            targets.append(classes.ravel()[picked])
        x, y = np.concatenate(rows), np.concatenate(targets)
        present = np.bincount(y, minlength=len(TARGET_CHANNELS))
        if np.count_nonzero(present) < 2:
            raise ConfigError(
                f"pixel_forest: the training images hold only one pixel class ({dict(zip(TARGET_CHANNELS, present.tolist(), strict=True))})"
            )
        params = {
            "objective": "multiclass",
            "num_class": len(TARGET_CHANNELS),
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "min_data_in_leaf": 20,
            "seed": seed,
            "num_threads": self.num_threads,
            "deterministic": True,
            "verbose": -1,
        }
        self.booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=self.rounds)
        accuracy = float(np.mean(self.booster.predict(x, num_threads=self.num_threads).argmax(axis=1) == y))
        return {
            "n_pixels": int(y.size),
            **{f"n_pixels_{name}": int(n) for name, n in zip(TARGET_CHANNELS, present, strict=True)},
            "n_features": self.n_features,
            "train_pixel_accuracy": accuracy,
        }

    def predict_maps(self, image: np.ndarray) -> np.ndarray:
        features = filter_bank(image, self.sigmas)
        h, w, f = features.shape
        probs = self.booster.predict(features.reshape(-1, f), num_threads=self.num_threads)
        return probs.reshape(h, w, -1).transpose(2, 0, 1).astype(np.float32)

    def fitted_state(self) -> dict[str, Any]:
        return {} if self.booster is None else {"booster": self.booster.model_to_string()}

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_str=state["booster"]) if state.get("booster") else None


@register_model
def pixel_forest(
    in_channels: int = 1,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    samples_per_class: int = 2000,
    num_leaves: int = 31,
    rounds: int = 100,
    learning_rate: float = 0.1,
    num_threads: int = 1,
) -> PixelForest:
    """The pixel classifier (module docstring): features at `sigmas`, up to `samples_per_class` pixels
    of each class per training image, `rounds` boosting rounds of trees with `num_leaves` leaves, on
    `num_threads` OpenMP threads (0: all cores; one by default, as the ensemble's boosters: on a busy
    machine LightGBM's threads spinning against each other cost far more than they gain)."""
    return PixelForest(in_channels, sigmas, samples_per_class, num_leaves, rounds, learning_rate, num_threads)
