"""Synthetic nuclei images with exact truth, for tests and offline demos.

Two styles with clearly different intensity histograms:

- ``"fluorescence"``: grey uint8 H×W; dark background, bright textured nuclei (stained DNA) of varying
  brightness, Poisson (shot) + Gaussian (read) noise.
- ``"brightfield"``: H&E-like histology, RGB uint8 H×W×3; light pink eosin background with smooth tissue
  texture, dark purple hematoxylin nuclei, rendered by Beer–Lambert absorption of the two stains.

Every image has elliptical nuclei of varying size, shape and orientation, some of them in touching
clusters, blurred by a Gaussian PSF, under uneven illumination (gradient + vignetting). Overlapping
ellipses are split by the smallest normalised elliptical distance, so the label image stays exclusive
while the nuclei share boundaries. Labels are int32, 0 = background, 1..N sequential.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage import measure

from kit.data.sample import Sample
from kit.errors import DataError

SYNTHETIC_STYLES: tuple[str, ...] = ("fluorescence", "brightfield")

_SIZE_RANGE = (192, 320)
_MIN_NUCLEUS_PX = 12
_MAX_NUCLEI = 400

# Ruifrok & Johnston optical-density vectors (R, G, B) of hematoxylin and eosin.
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
_EOSIN = np.array([0.072, 0.990, 0.105])


def generate_synthetic(
    n: int,
    seed: int = 0,
    *,
    size: tuple[int, int] | None = None,
    styles: Sequence[str] = ("fluorescence", "brightfield"),
    test_fraction: float = 0.25,
    nucleus_area: tuple[float, float] = (60.0, 900.0),
) -> list[Sample]:
    """Generate `n` synthetic images with their label images.

    Image ``i`` gets style ``styles[i % len(styles)]`` and a size drawn between 192 and 320 px per side
    (unless `size` = (H, W) is given); nucleus areas are drawn within `nucleus_area` pixels. Within each
    style, ``round(test_fraction * count)`` images are split "test" and the rest "train". Image ``i``
    depends only on (`seed`, ``i``, its style, `size`, `nucleus_area`), so a longer set extends a shorter
    one; the same arguments always give identical output.
    """
    if n < 0:
        raise DataError(f"generate_synthetic: n must be >= 0, got {n}.")
    if not styles:
        raise DataError("generate_synthetic: styles is empty; choose from " + ", ".join(SYNTHETIC_STYLES))
    unknown = [s for s in styles if s not in SYNTHETIC_STYLES]
    if unknown:
        raise DataError(f"Unknown synthetic style(s) {unknown}; choose from {', '.join(SYNTHETIC_STYLES)}.")
    if not 0.0 <= test_fraction <= 1.0:
        raise DataError(f"test_fraction must lie in [0, 1], got {test_fraction}.")
    if size is not None and (len(size) != 2 or min(size) < 16):
        raise DataError(f"size must be (H, W) with both sides >= 16 px, got {size}.")
    if not 0 < nucleus_area[0] <= nucleus_area[1]:
        raise DataError(f"nucleus_area must be (min, max) with 0 < min <= max, got {nucleus_area}.")

    split_seq, *image_seqs = np.random.SeedSequence(seed).spawn(n + 1)
    image_styles = [styles[i % len(styles)] for i in range(n)]
    splits = _stratified_test_split(image_styles, test_fraction, np.random.default_rng(split_seq))
    width = max(4, len(str(n - 1)))
    samples = []
    for i, (style, split, seq) in enumerate(zip(image_styles, splits, image_seqs, strict=True)):
        image, labels = _make_image(np.random.default_rng(seq), style, size, nucleus_area)
        samples.append(
            Sample(
                id=f"synth_{i:0{width}d}",
                image=image,
                labels=labels,
                split=split,
                source=f"synthetic(seed={seed})",
                meta={"style_name": style},
            )
        )
    return samples


def _stratified_test_split(styles: list[str], test_fraction: float, rng: np.random.Generator) -> list[str]:
    """Mark ``round(test_fraction * count)`` images of each style as "test", chosen at random."""
    splits = ["train"] * len(styles)
    for style in dict.fromkeys(styles):
        members = [i for i, s in enumerate(styles) if s == style]
        n_test = int(np.floor(test_fraction * len(members) + 0.5))
        for j in rng.choice(len(members), size=n_test, replace=False):
            splits[members[j]] = "test"
    return splits


def _make_image(
    rng: np.random.Generator, style: str, size: tuple[int, int] | None, area_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    shape = (
        (int(size[0]), int(size[1]))
        if size is not None
        else tuple(rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1, size=2))
    )
    centres, axes, angles = _place_nuclei(rng, shape, area_range)
    labels, dist = _rasterise(shape, centres, axes, angles)
    texture = _smooth_noise(rng, shape, rng.uniform(0.8, 1.8))
    illumination = _illumination(rng, shape)
    if style == "fluorescence":
        image = _render_fluorescence(rng, labels, dist, texture, illumination)
    else:
        image = _render_brightfield(rng, labels, dist, texture, illumination)
    return image, labels


def _place_nuclei(
    rng: np.random.Generator, shape: tuple[int, int], area_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (M, 2) as (row, col), semi-axes (M, 2) as (a, b) with a >= b, and angles (M,) in radians.

    Each nucleus is either free (no overlap with any placed one) or, with a per-image probability, attached
    to a placed nucleus at a distance that makes the two ellipses overlap, which later becomes a shared
    boundary. A minimum centre distance keeps any nucleus from being swallowed by a neighbour.
    """
    h, w = shape
    lo, hi = np.log(area_range[0]), np.log(area_range[1])
    mean_area = np.exp(rng.uniform(lo, hi))
    coverage = rng.uniform(0.12, 0.35)
    cluster_prob = rng.uniform(0.3, 0.8)
    target = int(np.clip(coverage * h * w / mean_area, 3, _MAX_NUCLEI))

    areas = np.clip(mean_area * rng.lognormal(0.0, 0.35, target), *area_range)
    ratio = rng.uniform(1.0, 1.8, target)
    radius = np.sqrt(areas / np.pi)
    a, b = radius * np.sqrt(ratio), radius / np.sqrt(ratio)
    theta = rng.uniform(0.0, np.pi, target)

    centres = np.empty((target, 2))
    placed: list[int] = []
    for i in range(target):
        for _ in range(30):
            if placed and rng.random() < cluster_prob:
                j = placed[rng.integers(len(placed))]
                phi = rng.uniform(0.0, 2 * np.pi)
                reach = _ellipse_radius(a[i], b[i], phi + np.pi - theta[i]) + _ellipse_radius(
                    a[j], b[j], phi - theta[j]
                )
                c = centres[j] + rng.uniform(0.7, 0.92) * reach * np.array([np.sin(phi), np.cos(phi)])
                min_dist = 0.6 * (radius[i] + radius[placed])
            else:
                c = rng.uniform((0.0, 0.0), (h, w))
                min_dist = a[i] + a[placed] + 2.0
            if not placed or np.all(np.hypot(*(centres[placed] - c).T) >= min_dist):
                centres[i] = c
                placed.append(i)
                break
    return centres[placed], np.stack([a, b], axis=1)[placed], theta[placed]


def _ellipse_radius(a: float, b: float, phi: float) -> float:
    """Distance from an ellipse's centre to its contour in direction `phi` (relative to the major axis)."""
    return a * b / np.hypot(b * np.cos(phi), a * np.sin(phi))


def _rasterise(
    shape: tuple[int, int], centres: np.ndarray, axes: np.ndarray, angles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label image (int32, 1..N sequential) and the normalised elliptical distance d (0 centre, 1 rim).

    Each pixel goes to the ellipse with the smallest d, so overlaps are split along a curve through the
    contour intersections and touching nuclei never overlap. Fragments cut off by that split and nuclei
    clipped to a few pixels by the image border are dropped.
    """
    h, w = shape
    dist = np.full(shape, np.inf)
    owner = np.zeros(shape, dtype=np.int32)
    for k, ((cy, cx), (a, b), t) in enumerate(zip(centres, axes, angles, strict=True), start=1):
        r0, r1 = max(int(cy - a) - 1, 0), min(int(cy + a) + 2, h)
        c0, c1 = max(int(cx - a) - 1, 0), min(int(cx + a) + 2, w)
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        d = (u / a) ** 2 + (v / b) ** 2
        closer = d < dist[r0:r1, c0:c1]
        dist[r0:r1, c0:c1][closer] = d[closer]
        owner[r0:r1, c0:c1][closer] = k
    labels = np.where(dist <= 1.0, owner, 0)

    # Keep the largest 4-connected piece of each nucleus, then renumber 1..N.
    comp = measure.label(labels, connectivity=1)
    flat = comp.ravel()
    sizes = np.bincount(flat, minlength=comp.max() + 1)
    comp_owner = np.zeros_like(sizes)
    comp_owner[flat] = labels.ravel()
    by_size = np.argsort(-sizes[1:], kind="stable") + 1
    _, first = np.unique(comp_owner[by_size], return_index=True)
    keep = np.zeros(sizes.shape, dtype=bool)
    keep[by_size[first]] = True
    keep &= sizes >= _MIN_NUCLEUS_PX
    keep[0] = False
    lut = np.zeros(sizes.shape, dtype=np.int32)
    lut[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    labels = lut[comp]
    return labels, np.where(labels > 0, dist, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-12)


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smooth multiplicative field around 1: a linear gradient plus off-centre vignetting."""
    h, w = shape
    y = np.linspace(-1.0, 1.0, h)[:, None]
    x = np.linspace(-1.0, 1.0, w)[None, :]
    gy, gx = rng.uniform(-0.15, 0.15, 2)
    oy, ox = rng.uniform(-0.5, 0.5, 2)
    vignette = rng.uniform(0.0, 0.25) * ((y - oy) ** 2 + (x - ox) ** 2) / 2.0
    return np.clip(1.0 + gy * y + gx * x - vignette, 0.5, None)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _render_fluorescence(
    rng: np.random.Generator,
    labels: np.ndarray,
    dist: np.ndarray,
    texture: np.ndarray,
    illumination: np.ndarray,
) -> np.ndarray:
    """Grey uint8 H×W: emission ∝ per-nucleus brightness, dimming towards the rim, with chromatin texture."""
    gain = rng.uniform(0.5, 1.0)
    brightness = np.concatenate([[0.0], gain * rng.uniform(0.35, 1.0, labels.max())])
    chromatin = np.clip(1.0 + rng.uniform(0.1, 0.25) * texture, 0.3, None)
    signal = brightness[labels] * (1.0 - 0.35 * dist) * chromatin
    signal = ndi.gaussian_filter(signal, rng.uniform(0.7, 1.8)) + rng.uniform(0.02, 0.08)
    signal *= illumination
    photons_at_one = rng.uniform(30.0, 300.0)
    noisy = rng.poisson(signal * photons_at_one) / photons_at_one
    noisy += rng.normal(0.0, rng.uniform(0.003, 0.015), signal.shape)
    return _to_uint8(noisy)


def _render_brightfield(
    rng: np.random.Generator,
    labels: np.ndarray,
    dist: np.ndarray,
    texture: np.ndarray,
    illumination: np.ndarray,
) -> np.ndarray:
    """RGB uint8 H×W×3: transmitted light through hematoxylin (nuclei) and eosin (tissue) stains."""
    shape = labels.shape
    stain_h = _HEMATOXYLIN + rng.uniform(-0.05, 0.05, 3)
    stain_e = _EOSIN + rng.uniform(-0.05, 0.05, 3)
    density = np.concatenate([[0.0], rng.uniform(0.7, 1.6, labels.max())])
    chromatin = np.clip(1.0 + rng.uniform(0.1, 0.3) * texture, 0.3, None)
    hema = density[labels] * (0.8 + 0.2 * (1.0 - dist)) * chromatin + 0.03
    tissue = _smooth_noise(rng, shape, rng.uniform(4.0, 10.0))
    eosin = np.clip(rng.uniform(0.1, 0.3) + 0.12 * tissue + 0.04 * texture, 0.0, None)
    psf = rng.uniform(0.6, 1.5)
    optical_density = (
        ndi.gaussian_filter(hema, psf)[:, :, None] * stain_h
        + ndi.gaussian_filter(eosin, psf)[:, :, None] * stain_e
    )
    light = rng.uniform(0.9, 1.0) * illumination[:, :, None]
    rgb = light * np.exp(-optical_density)
    rgb += rng.normal(0.0, rng.uniform(0.005, 0.02), rgb.shape)
    return _to_uint8(rgb)
