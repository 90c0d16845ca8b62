"""Where the score estimate can be trusted: the images its calibration saw.

The estimate made without truth (`kit.ensemble.estimate`) is calibrated on out-of-fold images. On an
image unlike all of them it can be far off (an estimate of 0.69 where the truth gave 0.37 was seen on an
image from another source), so every estimate carries a flag. An image is *within calibration* when

- its style (the intensity-histogram features the folds are stratified by, `kit.data.folds`) lies
  within `radius` of some calibration image, `radius` being the largest leave-one-out nearest-neighbour
  distance among the calibration images times `margin`, and
- the median area of its kept instances lies within [min / `size_factor`, max × `size_factor`] of the
  calibration images' medians (a different magnification moves it).

Otherwise the flag names what is off, and the estimate should be read as unsupported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kit.data.folds import style_features

IN_CALIBRATION = "ok"


@dataclass(frozen=True)
class CalibrationDomain:
    """Style features and median instance areas of the calibration (OOF) images, and the limits."""

    features: tuple[tuple[float, ...], ...]
    median_areas: tuple[float, ...]
    radius: float
    size_factor: float = 2.0

    @classmethod
    def fit(
        cls,
        images: Sequence[np.ndarray],
        median_areas: Sequence[float],
        *,
        margin: float = 1.25,
        size_factor: float = 2.0,
    ) -> CalibrationDomain:
        """The domain of calibration `images` (raw, any dtype) whose kept instances have these median areas."""
        features = np.stack([style_features(np.asarray(im)) for im in images])
        if len(features) > 1:
            d = np.linalg.norm(features[:, None] - features[None], axis=-1)
            np.fill_diagonal(d, np.inf)
            radius = float(d.min(axis=1).max()) * margin
        else:
            radius = 0.0
        areas = tuple(float(a) for a in median_areas if np.isfinite(a))
        return cls(tuple(map(tuple, features.tolist())), areas, radius, size_factor)

    def check(self, image: np.ndarray, median_area: float) -> tuple[str, float]:
        """(flag, style distance to the nearest calibration image): `IN_CALIBRATION`, or why not."""
        features = np.asarray(self.features)
        distance = float(np.linalg.norm(features - style_features(np.asarray(image)), axis=1).min())
        reasons = []
        if distance > self.radius:
            reasons.append(
                f"style unlike the calibration images (distance {distance:.2f} > {self.radius:.2f})"
            )
        if self.median_areas and np.isfinite(median_area):
            low, high = min(self.median_areas) / self.size_factor, max(self.median_areas) * self.size_factor
            if not low <= median_area <= high:
                reasons.append(
                    f"nucleus size {median_area:.0f} px outside calibration {low:.0f}–{high:.0f} px"
                )
        return ("; ".join(reasons) or IN_CALIBRATION), distance

    def to_dict(self) -> dict:
        return {
            "features": [list(f) for f in self.features],
            "median_areas": list(self.median_areas),
            "radius": self.radius,
            "size_factor": self.size_factor,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationDomain:
        return cls(
            tuple(tuple(float(v) for v in f) for f in data["features"]),
            tuple(float(a) for a in data["median_areas"]),
            float(data["radius"]),
            float(data.get("size_factor", 2.0)),
        )


def median_area(labels: np.ndarray) -> float:
    """Median pixel count of the instances of a label image (NaN without instances)."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(areas)) if areas.size else float("nan")
