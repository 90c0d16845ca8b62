"""Albumentations pipelines built from a config list, default recipes, and a visual check.

A spec is a list of mappings ``{"name": <transform>, "p": ..., **params}``. Names resolve to
albumentations classes (``D4``, ``Affine``, ``ShiftScaleRotate``, ``ElasticTransform``, ...), to the
compositions ``OneOf`` / ``SomeOf`` / ``Sequential`` (children under ``transforms``), or to kit's own
transforms (``CopyPasteNuclei``, alias ``CopyPaste``). Everything is checked when the pipeline is built:
unknown names and parameters, and albumentations' own pydantic validation, raise `ConfigError`.
Domain-adaptation steps (``FDA``, ``HistogramMatching``, ``PixelDistributionAdaptation``) name their
reference images with ``reference: {split: ..., styles: [...]}`` (see `kit.augment.domain`).

Labels travel through albumentations as ``mask`` in float32 and come back as int32 with the same ids
(copy-paste adds new ids above the previous maximum). The Compose forces nearest interpolation for
masks, so ids never blend; float32 holds every id below 2**24 exactly. Why not int32: OpenCV accepts
int32 (not uint32) in its nearest warps, but rounds the sampling position differently for int32 than
for uint8/uint16/float32, so Affine/Rotate/ShiftScaleRotate put a few label pixels one pixel off the
uint8 image pixels they belong to. float32 labels take the same path as uint8 images and stay aligned.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

from kit.augment.copy_paste import CopyPasteNuclei
from kit.augment.domain import (
    PixelDistributionAdaptation,
    ReferenceSampler,
    ReferenceSource,
    resolve_references,
)
from kit.errors import ConfigError
from kit.visualize import contour_overlay, save_figure

KIT_TRANSFORMS: dict[str, type[A.BasicTransform]] = {
    "CopyPasteNuclei": CopyPasteNuclei,
    "PixelDistributionAdaptation": PixelDistributionAdaptation,  # fixes albumentations 2.0.8 (kit.augment.domain)
}
ALIASES: dict[str, str] = {"CopyPaste": "CopyPasteNuclei"}
_COMPOSITIONS: dict[str, type[A.BaseCompose]] = {
    "OneOf": A.OneOf,
    "SomeOf": A.SomeOf,
    "Sequential": A.Sequential,
}

_MAX_LABEL = 2**24  # float32 represents every integer below this exactly

LIGHT: list[dict[str, Any]] = [{"name": "D4", "p": 1.0}]
"""Dihedral group only (flips, 90° rotations, transpose): always safe for nuclei."""

DSB_STRONG: list[dict[str, Any]] = [
    {"name": "CopyPasteNuclei", "n_range": [1, 4], "p": 0.3},
    {"name": "D4", "p": 1.0},
    {
        "name": "Affine",
        "scale": [0.8, 1.25],
        "rotate": [-45, 45],
        "translate_percent": [-0.05, 0.05],
        "p": 0.5,
    },
    # alpha/sigma give ~2 px mean, ~6 px max displacement; the defaults (1, 50) move pixels by < 0.1 px.
    {"name": "ElasticTransform", "alpha": 300.0, "sigma": 10.0, "p": 0.2},
    {"name": "GridDistortion", "distort_limit": 0.2, "p": 0.2},
    {"name": "CLAHE", "clip_limit": 2.0, "p": 0.2},
    {"name": "RandomBrightnessContrast", "brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.5},
    {"name": "RandomGamma", "gamma_limit": [80, 120], "p": 0.3},
    {"name": "GaussianBlur", "sigma_limit": [0.5, 1.5], "p": 0.2},
    {"name": "GaussNoise", "std_range": [0.02, 0.06], "p": 0.2},
    {"name": "InvertImg", "p": 0.1},
    {"name": "ToGray", "p": 0.1},
]
"""The topcoders-style recipe: copy-paste, geometry, elastic/grid warps, contrast, blur/noise, inversion."""


def known_transforms() -> dict[str, type]:
    """Every name `build_augmentation` accepts (aliases included), mapped to its class."""
    names: dict[str, type] = {
        name: obj
        for name, obj in vars(A).items()
        if inspect.isclass(obj)
        and issubclass(obj, A.BasicTransform)
        and obj.__module__.startswith("albumentations.augmentations")
    }
    names.update(_COMPOSITIONS)
    names.update(KIT_TRANSFORMS)
    names.update({alias: KIT_TRANSFORMS[target] for alias, target in ALIASES.items()})
    return names


class Augmentation:
    """A built pipeline. Call with ``image`` (H×W×C uint8) and ``labels`` (H×W integer label image).

    Returns ``{"image": H'×W'×C uint8, "labels": H'×W' int32}``; ids (< 2**24) are those of the input
    plus new copy-paste ids. The random stream is seeded once, at build time: forked DataLoader workers
    all inherit the same stream, so call `reseed` per worker (or per item, from the item's own seed, for
    augmentations that do not depend on which worker draws them). `references` maps the metadata key of
    each domain-adaptation step to its pool; every call draws one reference per key.
    """

    def __init__(
        self,
        compose: A.Compose,
        spec: Sequence[Mapping[str, Any]],
        references: Mapping[str, ReferenceSampler] | None = None,
        seed: int | None = None,
    ):
        self.compose = compose
        self.spec: list[dict[str, Any]] = copy.deepcopy([dict(item) for item in spec])
        self.references = dict(references or {})
        self._reference_rng = np.random.default_rng(seed)

    def __call__(self, *, image: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        if image.ndim != 3:
            raise ValueError(f"image must be H×W×C, got shape {image.shape}")
        if labels.shape != image.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be an integer H×W array matching the image {image.shape[:2]}, "
                f"got shape {labels.shape} dtype {labels.dtype}"
            )
        if labels.size and labels.max() >= _MAX_LABEL:
            raise ValueError(f"label ids must be < 2**24 to survive augmentation, got {labels.max()}")
        with warnings.catch_warnings():
            # ToGray leaves a 1-channel image unchanged and warns on every call; that is what kit wants.
            warnings.filterwarnings("ignore", message="The image is already gray")
            drawn = {key: [pool.sample(self._reference_rng)] for key, pool in self.references.items()}
            out = self.compose(image=image, mask=labels.astype(np.float32), **drawn)
        return {"image": out["image"], "labels": out["mask"].astype(np.int32)}

    def reseed(self, seed: int | None) -> None:
        """Restart the random stream of every transform (and of reference drawing) from `seed`."""
        self.compose.set_random_seed(seed)
        self._reference_rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"Augmentation({[item['name'] for item in self.spec]})"


def build_augmentation(
    spec: Sequence[Mapping[str, Any]], *, seed: int | None = None, references: ReferenceSource | None = None
) -> Augmentation:
    """Build an `Augmentation` from a list of ``{"name": ..., **params}`` mappings (see module doc).

    `references` resolves the ``reference`` selections of domain-adaptation steps (typically
    `kit.style.references.StyleReferences` over the training dataset). Raises `ConfigError` naming the
    offending entry for unknown names, unknown or invalid parameters, non-nearest
    ``mask_interpolation``, and missing or empty reference selections.
    """
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ConfigError(f"augmentation spec must be a list of transforms, got {type(spec).__name__}")
    registry = known_transforms()
    resolved, pools = resolve_references(spec, references, registry)
    transforms = [_build_item(item, f"augmentation[{i}]", registry) for i, item in enumerate(resolved)]
    compose = A.Compose(transforms, seed=seed, mask_interpolation=cv2.INTER_NEAREST)
    return Augmentation(compose, spec, pools, seed)


def _build_item(item: Any, where: str, registry: Mapping[str, type]) -> A.BasicTransform | A.BaseCompose:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise ConfigError(f"{where}: expected a mapping with a 'name' key, got {item!r}")
    params = dict(item)
    name = params.pop("name")
    cls = registry.get(name)
    if cls is None:
        raise ConfigError(
            f"{where}: unknown transform {name!r}{_suggest(name, registry)}; known: {', '.join(sorted(registry))}"
        )
    where = f"{where} ({name})"
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in {"self", "strict"}]
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter {unknown[0]!r}{_suggest(unknown[0], accepted)}; valid: {', '.join(accepted)}"
        )
    if params.get("mask_interpolation", cv2.INTER_NEAREST) != cv2.INTER_NEAREST:
        raise ConfigError(
            f"{where}: labels need mask_interpolation 0 (nearest); other values blend label ids"
        )
    if name in _COMPOSITIONS:
        children = params.get("transforms")
        if isinstance(children, (str, Mapping)) or not isinstance(children, Sequence) or not children:
            raise ConfigError(f"{where}: 'transforms' must be a non-empty list of transforms")
        params["transforms"] = [
            _build_item(child, f"{where}.transforms[{j}]", registry) for j, child in enumerate(children)
        ]
    try:
        return _construct(cls, params)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: invalid parameters: {_one_line(error)}") from error


def _construct(cls: type, params: dict[str, Any]) -> Any:
    # strict=True makes albumentations raise instead of warning and falling back to defaults; classes
    # without a validated __init__ (RandomRotate90, MedianBlur, compositions) do not take it.
    try:
        return cls(**params, strict=True)
    except TypeError as error:
        if "'strict'" not in str(error):
            raise
    return cls(**params)


def _suggest(name: str, candidates: Sequence[str] | Mapping[str, Any]) -> str:
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.5)
    return f" (did you mean {by_lower[match[0]]!r}?)" if match else ""


def _one_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("For further information"))


def augmentation_grid(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    aug: Augmentation,
    path: str | os.PathLike,
    n_per_sample: int = 4,
) -> Path:
    """Write a PNG grid: one row per (image, labels) sample, the original then `n_per_sample` augmented
    versions, each with instance contours and its nucleus count."""
    from matplotlib.figure import Figure

    if not samples:
        raise ValueError("augmentation_grid needs at least one sample")
    cols = 1 + n_per_sample
    fig = Figure(figsize=(2.6 * cols, 2.8 * len(samples)))
    axes = fig.subplots(len(samples), cols, squeeze=False)
    for row, (image, labels) in enumerate(samples):
        versions = [(image, labels, "original")]
        for k in range(n_per_sample):
            out = aug(image=image, labels=labels)
            versions.append((out["image"], out["labels"], f"aug {k + 1}"))
        for ax, (img, lab, title) in zip(axes[row], versions, strict=True):
            ax.imshow(contour_overlay(img, lab))
            ax.set_title(f"{title} ({np.count_nonzero(np.unique(lab))} nuclei)", fontsize=9)
            ax.set_axis_off()
    return save_figure(fig, path)
