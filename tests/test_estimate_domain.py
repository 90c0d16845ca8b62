"""The score estimate says when an image is unlike what it was calibrated on: another style, another
nucleus size, soft edges, base models that disagree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from kit.data.synthetic import generate_synthetic
from kit.ensemble.domain import (
    IN_CALIBRATION,
    CalibrationDomain,
    edge_sharpness,
    median_area,
    source_agreement,
)


def _by_style(n: int, style: str, seed: int):
    return generate_synthetic(n, seed, size=(128, 128), styles=(style,), test_fraction=0.0)


def test_an_image_of_a_style_absent_from_calibration_is_flagged() -> None:
    domain = _domain(_by_style(8, "fluorescence", 0))
    same = _by_style(3, "fluorescence", 1)
    for sample in same:
        flag, distance = domain.check(sample.image, sample.labels)
        assert flag == IN_CALIBRATION and distance <= domain.radius
    other = _by_style(2, "brightfield", 2)
    for sample in other:
        flag, distance = domain.check(sample.image, sample.labels)
        assert flag.startswith("style unlike the calibration images") and distance > domain.radius


def _domain(calibration, agreements=()) -> CalibrationDomain:
    return CalibrationDomain.fit([s.image for s in calibration], [s.labels for s in calibration], agreements)


def _zoom(array: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(array, np.ones((factor, factor), dtype=array.dtype))


def test_a_different_magnification_is_flagged_by_nucleus_size() -> None:
    domain = _domain(_by_style(6, "fluorescence", 0))
    sample = _by_style(1, "fluorescence", 3)[0]
    assert domain.check(sample.image, sample.labels)[0] == IN_CALIBRATION
    flag, _ = domain.check(_zoom(sample.image, 5), _zoom(sample.labels, 5))
    assert "nucleus size" in flag and "outside calibration" in flag


def _disks(seed: int, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A constructed in-focus image: bright disks (radius 6–10 px) on a dark background, edges about
    one pixel wide, with a little noise; and its labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    for label in range(1, 13):
        r = rng.uniform(6, 10)
        cy, cx = rng.uniform(r + 2, size - r - 2, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if not (labels[disk] > 0).any():
            labels[disk] = label
    image = ndi.gaussian_filter(30.0 + 150.0 * (labels > 0), 0.7) + rng.normal(0, 3, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def test_edge_sharpness_ignores_intensity_scale_and_falls_with_blur() -> None:
    image, labels = _disks(0)
    assert labels.max() > 3
    sharp = edge_sharpness(image, labels)
    assert 0.2 < sharp < 2.0
    assert edge_sharpness(3.0 * image + 40, labels) == pytest.approx(sharp, rel=1e-9)
    assert edge_sharpness(ndi.gaussian_filter(image.astype(np.float64), 3), labels) < 0.5 * sharp
    assert np.isnan(edge_sharpness(image, np.zeros_like(labels)))


def test_an_out_of_focus_image_is_flagged_for_soft_edges() -> None:
    calibration = [_disks(seed) for seed in range(6)]
    domain = CalibrationDomain.fit([im for im, _ in calibration], [lab for _, lab in calibration])
    for seed in (10, 11, 12):
        image, labels = _disks(seed)
        assert domain.check(image, labels)[0] == IN_CALIBRATION
        blurred = ndi.gaussian_filter(image.astype(np.float64), 3).astype(np.uint8)
        flag, _ = domain.check(blurred, labels)
        assert "soft edges (blur or upsampling): sharpness" in flag


def test_base_models_that_disagree_are_flagged() -> None:
    calibration = _by_style(6, "fluorescence", 0)
    domain = _domain(calibration, [0.6, 0.7, 0.7, 0.8, 0.75, 0.65])
    sample = _by_style(1, "fluorescence", 3)[0]
    assert domain.check(sample.image, sample.labels, 0.5)[0] == IN_CALIBRATION
    assert domain.check(sample.image, sample.labels)[0] == IN_CALIBRATION  # agreement unknown: no check
    flag, _ = domain.check(sample.image, sample.labels, 0.2)
    assert flag.startswith("base models disagree (agreement 0.20 < 0.35")


def test_source_agreement_is_the_mean_pairwise_dsb_score() -> None:
    labels = _by_style(1, "fluorescence", 6)[0].labels
    assert labels.max() > 3
    assert source_agreement([labels, labels]) == 1.0
    shifted = np.roll(labels, labels.shape[0] // 2, axis=0)
    assert source_agreement([labels, shifted]) < 0.2
    assert source_agreement([labels, labels, shifted]) == pytest.approx(
        (1.0 + 2 * source_agreement([labels, shifted])) / 3
    )
    assert np.isnan(source_agreement([labels]))


def test_the_domain_round_trips_through_the_model_metadata() -> None:
    calibration = _by_style(4, "fluorescence", 0)
    domain = _domain(calibration, [0.7, 0.8, 0.6, 0.75])
    assert domain.sharpness and domain.agreements
    again = CalibrationDomain.from_dict(domain.to_dict())
    image, labels = calibration[0].image, calibration[0].labels
    assert again == domain
    assert again.check(image, labels, 0.1) == domain.check(image, labels, 0.1)
    assert np.isnan(median_area(np.zeros((4, 4), dtype=np.int32)))


def test_a_domain_saved_before_the_sharpness_and_agreement_checks_skips_them() -> None:
    calibration = [_disks(seed) for seed in range(6)]
    domain = CalibrationDomain.fit([im for im, _ in calibration], [lab for _, lab in calibration], [0.7] * 6)
    image, labels = _disks(10)
    blurred = ndi.gaussian_filter(image.astype(np.float64), 3).astype(np.uint8)
    flag, _ = domain.check(blurred, labels, 0.0)
    assert "soft edges" in flag and "disagree" in flag  # what the new checks say
    old = domain.to_dict()
    for key in ("sharpness", "sharpness_factor", "agreements", "agreement_fraction"):
        old.pop(key)
    flag, _ = CalibrationDomain.from_dict(old).check(blurred, labels, 0.0)
    assert "soft edges" not in flag and "disagree" not in flag
