"""Classical style transfer in a pipeline: reference images for FDA / HistogramMatching / PDA.

albumentations' domain-adaptation transforms (``FDA``, ``HistogramMatching``,
``PixelDistributionAdaptation``) take their reference images at call time, under the transform's
``metadata_key`` in the data dict. In a kit spec such a step names where its references come from::

    {name: HistogramMatching, reference: {split: test, styles: [3]}, blend_ratio: [0.5, 1.0], p: 0.5}

`resolve_references` turns each ``reference`` into a pool from a `ReferenceSource` (kit's is
`kit.style.references.StyleReferences`) and gives the step a private metadata key; the built
`Augmentation` then draws one reference per step and call from its pool and passes it under that key.
These transforms are image-only: label images pass through untouched.

albumentations 2.0.8's ``PixelDistributionAdaptation`` returns a black image for uint8 input (its
adapted pixels stay in [0, 1] when cast back to uint8), so kit registers a subclass of the same name
whose `apply` calls `adapt_pixel_distribution` below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import albumentations as A
import numpy as np
from albumentations.augmentations.mixing.domain_adaptation import BaseDomainAdaptation

from kit.errors import ConfigError

REFERENCE_KEY = "reference"
_KIT_MANAGED = ("metadata_key", "reference_images", "read_fn")


class ReferenceSampler(Protocol):
    """A pool of reference images (uint8 H×W×C, normalised like the training images)."""

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One reference image drawn with `rng`."""
        ...


class ReferenceSource(Protocol):
    """Turns a ``reference`` selection of a spec (e.g. ``{split: test, styles: [3]}``) into a pool."""

    def pool(self, selection: Mapping[str, Any]) -> ReferenceSampler:
        """The pool for `selection`; raises `ConfigError` naming what is wrong with it."""
        ...


def resolve_references(
    spec: Sequence[Any], source: ReferenceSource | None, registry: Mapping[str, type]
) -> tuple[list[Any], dict[str, ReferenceSampler]]:
    """Copy of `spec` whose domain-adaptation steps carry a metadata key instead of ``reference``,
    and the pool behind each key. Compositions are searched recursively; entries that are not
    mappings or name unknown transforms are left for the pipeline builder to report."""
    pools: dict[str, ReferenceSampler] = {}
    resolved = [_resolve(item, f"augmentation[{i}]", source, registry, pools) for i, item in enumerate(spec)]
    return resolved, pools


def _resolve(
    item: Any, where: str, source: ReferenceSource | None, registry: Mapping[str, type], pools: dict
) -> Any:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        return item
    cls = registry.get(item["name"])
    where = f"{where} ({item['name']})"
    out = dict(item)
    children = out.get("transforms")
    if isinstance(children, Sequence) and not isinstance(children, (str, Mapping)):
        out["transforms"] = [
            _resolve(child, f"{where}.transforms[{j}]", source, registry, pools)
            for j, child in enumerate(children)
        ]
    if cls is None or not issubclass(cls, BaseDomainAdaptation):
        return out
    managed = [key for key in _KIT_MANAGED if key in out]
    if managed:
        raise ConfigError(
            f"{where}: {managed[0]!r} is set by kit; choose reference images with 'reference' instead"
        )
    if REFERENCE_KEY not in out:
        raise ConfigError(
            f"{where}: needs reference images, e.g. reference: {{split: test, styles: [3]}} "
            "(splits and style clusters of the training dataset)"
        )
    if source is None:
        raise ConfigError(
            f"{where}: 'reference' needs a dataset to draw from; pass references= to build_augmentation"
        )
    try:
        pool = source.pool(out.pop(REFERENCE_KEY))
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    key = f"kit_reference_{len(pools)}"
    pools[key] = pool
    out["metadata_key"] = key
    return out


def adapt_pixel_distribution(
    img: np.ndarray, reference: np.ndarray, transform_type: str, weight: float
) -> np.ndarray:
    """Give uint8 `img` (H×W×C) the pixel statistics of uint8 `reference` (any size, C channels),
    blended with weight `weight` (0 = unchanged, 1 = fully adapted).

    Pixels are C-vectors in [0, 1]. "standard" matches each channel's mean and standard deviation,
    "minmax" its range; "pca" whitens the image's pixels in its principal axes and re-colours them with
    the reference's (axes paired by variance rank, signs aligned).
    """
    source = img.reshape(-1, img.shape[-1]).astype(np.float64) / 255.0
    target = reference.reshape(-1, reference.shape[-1]).astype(np.float64) / 255.0
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"image has {source.shape[1]} channel(s), reference {target.shape[1]}")
    if transform_type == "standard":
        adapted = (source - source.mean(0)) / _nonzero(source.std(0)) * target.std(0) + target.mean(0)
    elif transform_type == "minmax":
        low, high = source.min(0), source.max(0)
        adapted = (source - low) / _nonzero(high - low) * (target.max(0) - target.min(0)) + target.min(0)
    else:
        (s_values, s_axes), (t_values, t_axes) = _principal_axes(source), _principal_axes(target)
        t_axes = t_axes * np.where((s_axes * t_axes).sum(0) < 0, -1.0, 1.0)
        whitened = (source - source.mean(0)) @ s_axes / np.sqrt(_nonzero(s_values))
        adapted = whitened * np.sqrt(t_values) @ t_axes.T + target.mean(0)
    blended = (1.0 - weight) * img.astype(np.float64) + weight * 255.0 * adapted.reshape(img.shape)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _principal_axes(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and unit eigenvectors (columns) of the pixels' covariance."""
    values, axes = np.linalg.eigh(np.atleast_2d(np.cov(pixels, rowvar=False)))
    return np.clip(values[::-1], 0.0, None), axes[:, ::-1]


def _nonzero(values: np.ndarray) -> np.ndarray:
    return np.where(values > 1e-12, values, 1.0)


class PixelDistributionAdaptation(A.PixelDistributionAdaptation):
    """albumentations' transform (same arguments) with a working `apply` for uint8 images.

    Targets:
        image

    Image types:
        uint8
    """

    def apply(
        self, img: np.ndarray, reference_image: np.ndarray, blend_ratio: float, **params: Any
    ) -> np.ndarray:
        return adapt_pixel_distribution(img, reference_image, self.transform_type, blend_ratio)
