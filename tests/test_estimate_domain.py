"""The score estimate says when an image is unlike what it was calibrated on: another style, another
nucleus size."""

from __future__ import annotations

import numpy as np

from kit.data.synthetic import generate_synthetic
from kit.ensemble.domain import IN_CALIBRATION, CalibrationDomain, median_area


def _by_style(n: int, style: str, seed: int):
    return generate_synthetic(n, seed, size=(128, 128), styles=(style,), test_fraction=0.0)


def test_an_image_of_a_style_absent_from_calibration_is_flagged() -> None:
    calibration = _by_style(8, "fluorescence", 0)
    domain = CalibrationDomain.fit(
        [s.image for s in calibration], [median_area(s.labels) for s in calibration]
    )
    same = _by_style(3, "fluorescence", 1)
    for sample in same:
        flag, distance = domain.check(sample.image, median_area(sample.labels))
        assert flag == IN_CALIBRATION and distance <= domain.radius
    other = _by_style(2, "brightfield", 2)
    for sample in other:
        flag, distance = domain.check(sample.image, median_area(sample.labels))
        assert flag.startswith("style unlike the calibration images") and distance > domain.radius


def test_a_different_magnification_is_flagged_by_nucleus_size() -> None:
    calibration = _by_style(6, "fluorescence", 0)
    domain = CalibrationDomain.fit(
        [s.image for s in calibration], [median_area(s.labels) for s in calibration]
    )
    sample = _by_style(1, "fluorescence", 3)[0]
    flag, _ = domain.check(sample.image, 10 * max(domain.median_areas))
    assert "nucleus size" in flag and "outside calibration" in flag


def test_the_domain_round_trips_through_the_model_metadata() -> None:
    calibration = _by_style(4, "fluorescence", 0)
    domain = CalibrationDomain.fit(
        [s.image for s in calibration], [median_area(s.labels) for s in calibration]
    )
    again = CalibrationDomain.from_dict(domain.to_dict())
    image = calibration[0].image
    assert again.check(image, 200.0) == domain.check(image, 200.0)
    assert np.isnan(median_area(np.zeros((4, 4), dtype=np.int32)))
