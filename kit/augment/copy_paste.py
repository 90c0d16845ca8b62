"""Copy-paste of isolated nuclei (DSB2018 topcoders): functional core plus an albumentations transform.

Rules:
- A *source* is a nucleus of at least `min_area` px whose neighbourhood of `margin` px (square window)
  holds no other nucleus, and whose bounding box grown by `margin` lies inside the image (nuclei cut by
  the image edge would paste as cut shapes).
- A *destination* is a random position where the source grown by `margin` overlaps no nucleus, original
  or already pasted; each paste tries `max_tries` positions and is skipped if none is free. Pasted nuclei
  therefore never touch anything and add no touching border.
- Nucleus pixels are copied exactly from the source image. A rim of `rim` px around the nucleus is
  alpha-blended (alpha falls linearly from the nucleus outwards), so the paste has no hard edge.
- Pasted nuclei get new ids ``labels.max() + 1, + 2, ...``. Sources are read from the input arrays, so
  a paste never copies an earlier paste.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema, DualTransform
from albumentations.core.type_definitions import Targets
from pydantic import Field, field_validator, model_validator
from scipy import ndimage as ndi

from kit.targets import multi_label_pixels


@dataclass(frozen=True, eq=False)
class Paste:
    """One planned paste: an equal-size source and destination window (bbox grown by the margin)."""

    src: tuple[slice, slice]
    dst: tuple[slice, slice]
    nucleus: np.ndarray  # bool (h, w): the source nucleus inside the window
    alpha: np.ndarray  # float32 (h, w): 1 on the nucleus, falling to 0 across the rim
    new_id: int


def isolated_nuclei(labels: np.ndarray, *, margin: int = 2, min_area: int = 16) -> list[int]:
    """Ids of nuclei usable as copy-paste sources (see module rules), in ascending order."""
    labels = np.asarray(labels)
    height, width = labels.shape
    crowded = set(np.unique(labels[multi_label_pixels(labels, margin)]).tolist()) if margin else set()
    areas = np.bincount(labels.ravel()) if labels.size else np.zeros(1, dtype=np.int64)
    ids = []
    for index, box in enumerate(ndi.find_objects(labels)):
        label = index + 1
        if box is None or label in crowded or areas[label] < min_area:
            continue
        rows, cols = box
        if (
            rows.start >= margin
            and cols.start >= margin
            and rows.stop + margin <= height
            and cols.stop + margin <= width
        ):
            ids.append(label)
    return ids


def plan_copy_paste(
    labels: np.ndarray,
    rng: np.random.Generator,
    n: int,
    *,
    margin: int = 2,
    rim: int = 1,
    min_area: int = 16,
    max_tries: int = 20,
) -> list[Paste]:
    """Draw up to `n` pastes for an H×W label image; fewer when no source or no free place is found."""
    labels = np.asarray(labels)
    sources = isolated_nuclei(labels, margin=margin, min_area=min_area)
    if not sources or n <= 0:
        return []
    height, width = labels.shape
    occupied = labels > 0
    keepout_footprint = np.ones((2 * margin + 1,) * 2, dtype=bool)
    boxes = ndi.find_objects(labels)
    next_id = int(labels.max()) + 1
    pastes = []
    for label in rng.choice(sources, size=n):
        rows, cols = boxes[label - 1]
        src = (slice(rows.start - margin, rows.stop + margin), slice(cols.start - margin, cols.stop + margin))
        nucleus = labels[src] == label
        keepout = ndi.binary_dilation(nucleus, keepout_footprint) if margin else nucleus
        h, w = nucleus.shape
        for _ in range(max_tries):
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            dst = (slice(top, top + h), slice(left, left + w))
            if not occupied[dst][keepout].any():
                occupied[dst] |= nucleus
                pastes.append(Paste(src, dst, nucleus, _rim_alpha(nucleus, rim), next_id))
                next_id += 1
                break
    return pastes


def _rim_alpha(nucleus: np.ndarray, rim: int) -> np.ndarray:
    if rim == 0:
        return nucleus.astype(np.float32)
    distance = ndi.distance_transform_cdt(~nucleus, metric="chessboard")
    return np.clip(1.0 - distance / (rim + 1.0), 0.0, 1.0).astype(np.float32)


def paste_image(image: np.ndarray, pastes: list[Paste]) -> np.ndarray:
    """Apply planned pastes to an H×W[×C] image (any dtype); nucleus pixels are copied exactly."""
    if not pastes:
        return image
    out = image.copy()
    for paste in pastes:
        src = image[paste.src].astype(np.float32)
        dst = out[paste.dst].astype(np.float32)
        alpha = paste.alpha if image.ndim == 2 else paste.alpha[..., None]
        blended = alpha * src + (1.0 - alpha) * dst
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            blended = np.clip(np.rint(blended), info.min, info.max)
        window = blended.astype(image.dtype)
        window[paste.nucleus] = image[paste.src][paste.nucleus]
        rim = paste.alpha > 0
        out[paste.dst][rim] = window[rim]
    return out


def paste_labels(labels: np.ndarray, pastes: list[Paste]) -> np.ndarray:
    """Apply planned pastes to an H×W label image: each pasted nucleus gets its `new_id`."""
    if not pastes:
        return labels
    out = labels.copy()
    for paste in pastes:
        out[paste.dst][paste.nucleus] = paste.new_id
    return out


def copy_paste_nuclei(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    n: int,
    *,
    margin: int = 2,
    rim: int = 1,
    min_area: int = 16,
    max_tries: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste up to `n` isolated nuclei of (image H×W[×C], labels H×W int) at free places in the same image.

    Returns new (image, labels) arrays of the input dtypes; the inputs are not modified.
    """
    pastes = plan_copy_paste(labels, rng, n, margin=margin, rim=rim, min_area=min_area, max_tries=max_tries)
    return paste_image(image, pastes), paste_labels(labels, pastes)


class CopyPasteNuclei(DualTransform):
    """Paste copies of isolated nuclei at free places of the same image (see `kit.augment.copy_paste`).

    Args:
        n_range: inclusive range of the number of pastes attempted per call.
        margin: background px required around a source and around each pasted nucleus (>= rim).
        rim: width in px of the alpha-blended ring around a pasted nucleus.
        min_area: smallest nucleus (px) used as a source.
        max_tries: random positions tried per paste before giving up on it.
        p: probability of applying the transform.

    Targets:
        image, mask (the mask must be the H×W instance label image, integer or integer-valued float)

    Image types:
        uint8, uint16, float32
    """

    _targets = (Targets.IMAGE, Targets.MASK)

    class InitSchema(BaseTransformInitSchema):
        n_range: tuple[int, int]
        margin: int = Field(ge=0)
        rim: int = Field(ge=0)
        min_area: int = Field(ge=1)
        max_tries: int = Field(ge=1)

        @field_validator("n_range")
        @classmethod
        def _check_range(cls, value: tuple[int, int]) -> tuple[int, int]:
            if not 0 <= value[0] <= value[1]:
                raise ValueError(f"n_range must satisfy 0 <= low <= high, got {value}")
            return value

        @model_validator(mode="after")
        def _check_rim(self) -> CopyPasteNuclei.InitSchema:
            if self.rim > self.margin:
                raise ValueError(f"rim ({self.rim}) must not exceed margin ({self.margin})")
            return self

    def __init__(
        self,
        n_range: tuple[int, int] = (1, 4),
        margin: int = 2,
        rim: int = 1,
        min_area: int = 16,
        max_tries: int = 20,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.n_range = n_range
        self.margin = margin
        self.rim = rim
        self.min_area = min_area
        self.max_tries = max_tries

    @property
    def targets_as_params(self) -> list[str]:
        return ["mask"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        labels = data["mask"]
        if labels.ndim != 2:
            raise ValueError(f"CopyPasteNuclei needs an H×W label image as mask, got shape {labels.shape}")
        # kit carries labels as float32 through albumentations (exact integer ids), see kit.augment.pipeline
        labels = labels.astype(np.int64)
        n = int(self.random_generator.integers(self.n_range[0], self.n_range[1] + 1))
        pastes = plan_copy_paste(
            labels,
            self.random_generator,
            n,
            margin=self.margin,
            rim=self.rim,
            min_area=self.min_area,
            max_tries=self.max_tries,
        )
        return {"pastes": pastes}

    def apply(self, img: np.ndarray, pastes: list[Paste], **params: Any) -> np.ndarray:
        return paste_image(img, pastes)

    def apply_to_mask(self, mask: np.ndarray, pastes: list[Paste], **params: Any) -> np.ndarray:
        return paste_labels(mask, pastes)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("n_range", "margin", "rim", "min_area", "max_tries")
