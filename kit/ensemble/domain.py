"""Where the score estimate can be trusted: images like those its calibration saw.

The estimate made without truth (`kit.ensemble.estimate`) is calibrated on out-of-fold images. On an
image unlike all of them it can be far off (an estimate of 0.69 where the truth gave 0.37 was seen on an
image from another source), so every estimate carries a flag. An image is *within calibration* when

- its style (the intensity-histogram features the folds are stratified by, `kit.data.folds`) lies
  within `radius` of some calibration image, `radius` being the largest leave-one-out nearest-neighbour
  distance among the calibration images times `margin`;
- the median area of its kept instances lies within [min / `size_factor`, max × `size_factor`] of the
  calibration images' medians (a different magnification moves it);
- the edge sharpness of its kept instances (`edge_sharpness`, about 1 / edge width) lies within
  [min / `sharpness_factor`, max × `sharpness_factor`] of the calibration images' (an out-of-focus or
  upsampled image has soft edges; instance shapes are then off in ways the IoU model cannot see); and
- its base models agree (`source_agreement`) at least `agreement_fraction` × the calibration images'
  median agreement (inverted contrast or a far scale makes the models fail in different ways).

The last two were chosen on held-out cases (`benchmarks/check_estimate.py`: each mnfinder style left out
of calibration in turn, and rescaled, blurred, noisy, gamma-shifted and inverted test images): on
blurred and inverted images the estimate was off by 0.27 and 0.43 and style and size said `ok`.
Otherwise the flag names what is off, and the estimate should be read as unsupported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kit.data.folds import style_features
from kit.metrics import dsb_score

IN_CALIBRATION = "ok"


@dataclass(frozen=True)
class CalibrationDomain:
    """Style features, median instance areas, edge sharpness and base-model agreement of the calibration
    (OOF) images, and the limits; an empty tuple skips its check (models saved before it existed)."""

    features: tuple[tuple[float, ...], ...]
    median_areas: tuple[float, ...]
    radius: float
    size_factor: float = 2.0
    sharpness: tuple[float, ...] = ()
    sharpness_factor: float = 1.25
    agreements: tuple[float, ...] = ()
    agreement_fraction: float = 0.5

    @classmethod
    def fit(
        cls,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        agreements: Sequence[float] = (),
        *,
        margin: float = 1.25,
        size_factor: float = 2.0,
        sharpness_factor: float = 1.25,
        agreement_fraction: float = 0.5,
    ) -> CalibrationDomain:
        """The domain of calibration `images` (raw, any dtype) with these kept-instance `labels` and
        base-model `agreements` (one per image, or none)."""
        features = np.stack([style_features(np.asarray(im)) for im in images])
        if len(features) > 1:
            d = np.linalg.norm(features[:, None] - features[None], axis=-1)
            np.fill_diagonal(d, np.inf)
            radius = float(d.min(axis=1).max()) * margin
        else:
            radius = 0.0
        return cls(
            tuple(map(tuple, features.tolist())),
            _finite(median_area(lab) for lab in labels),
            radius,
            size_factor,
            _finite(edge_sharpness(im, lab) for im, lab in zip(images, labels, strict=True)),
            sharpness_factor,
            _finite(agreements),
            agreement_fraction,
        )

    def check(
        self, image: np.ndarray, labels: np.ndarray, agreement: float = float("nan")
    ) -> tuple[str, float]:
        """(flag, style distance to the nearest calibration image) of an image whose kept instances are
        `labels` and whose base models agree `agreement`: `IN_CALIBRATION`, or why not."""
        features = np.asarray(self.features)
        distance = float(np.linalg.norm(features - style_features(np.asarray(image)), axis=1).min())
        reasons = []
        if distance > self.radius:
            reasons.append(
                f"style unlike the calibration images (distance {distance:.2f} > {self.radius:.2f})"
            )
        area = median_area(labels)
        if self.median_areas and np.isfinite(area):
            low, high = min(self.median_areas) / self.size_factor, max(self.median_areas) * self.size_factor
            if not low <= area <= high:
                reasons.append(f"nucleus size {area:.0f} px outside calibration {low:.0f}–{high:.0f} px")
        sharpness = edge_sharpness(image, labels)
        if self.sharpness and np.isfinite(sharpness):
            low = min(self.sharpness) / self.sharpness_factor
            high = max(self.sharpness) * self.sharpness_factor
            if not low <= sharpness <= high:
                what = (
                    "soft edges (blur or upsampling)" if sharpness < low else "edges sharper than calibration"
                )
                reasons.append(f"{what}: sharpness {sharpness:.2f} outside calibration {low:.2f}–{high:.2f}")
        if self.agreements and np.isfinite(agreement):
            floor = self.agreement_fraction * float(np.median(self.agreements))
            if agreement < floor:
                reasons.append(
                    f"base models disagree (agreement {agreement:.2f} < {floor:.2f}, "
                    f"{self.agreement_fraction:g} × the calibration median)"
                )
        return ("; ".join(reasons) or IN_CALIBRATION), distance

    def to_dict(self) -> dict:
        return {
            "features": [list(f) for f in self.features],
            "median_areas": list(self.median_areas),
            "radius": self.radius,
            "size_factor": self.size_factor,
            "sharpness": list(self.sharpness),
            "sharpness_factor": self.sharpness_factor,
            "agreements": list(self.agreements),
            "agreement_fraction": self.agreement_fraction,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationDomain:
        return cls(
            tuple(tuple(float(v) for v in f) for f in data["features"]),
            tuple(float(a) for a in data["median_areas"]),
            float(data["radius"]),
            float(data.get("size_factor", 2.0)),
            tuple(float(s) for s in data.get("sharpness", ())),
            float(data.get("sharpness_factor", 1.25)),
            tuple(float(a) for a in data.get("agreements", ())),
            float(data.get("agreement_fraction", 0.5)),
        )


def median_area(labels: np.ndarray) -> float:
    """Median pixel count of the instances of a label image (NaN without instances)."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(areas)) if areas.size else float("nan")


def edge_sharpness(image: np.ndarray, labels: np.ndarray) -> float:
    """Mean gradient magnitude (Gaussian, σ = 1 px) on the inner boundaries of the instances of `labels`
    over the intensity contrast between instances and background, in 1/px (about 1 / edge width; free
    of the image's intensity scale and offset). NaN without instances or background."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey[..., :3].mean(axis=2)
    inside = labels > 0
    if grey.shape != labels.shape or not inside.any() or inside.all():
        return float("nan")
    edge = find_boundaries(labels, mode="inner")
    contrast = abs(grey[inside & ~edge].mean() - grey[~inside].mean()) if (inside & ~edge).any() else 0.0
    if contrast <= 0:
        return float("nan")
    return float(ndi.gaussian_gradient_magnitude(grey, 1.0)[edge].mean() / contrast)


def source_agreement(labels: Sequence[np.ndarray]) -> float:
    """How well the base models' own instances agree: the mean DSB score of each pair's label images
    (symmetric; NaN with fewer than two models)."""
    pairs = [dsb_score(a, b) for k, a in enumerate(labels) for b in labels[k + 1 :]]
    return float(np.mean(pairs)) if pairs else float("nan")


def _finite(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values if np.isfinite(v))
