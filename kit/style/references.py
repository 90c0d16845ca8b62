"""Reference-image pools for classical style transfer: a dataset's images of chosen splits and styles.

A selection ``{split: test, styles: [3]}`` (``split`` one name or a list; ``styles`` optional, default
every style of those splits) picks images by the manifest's ``split`` and ``style`` columns. Pool images
are normalised with `normalize_image` exactly as training crops are, then shrunk to at most `max_side`
px per side (the transforms resize references to the crop anyway).

Drawing favours rare styles: style ``s`` of a pool is drawn with probability proportional to
``1 / (1 + n_train(s))``, ``n_train(s)`` being how many training images have style ``s``; images of one
style are equally likely. A test style absent from training is thus drawn most often.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from kit.data.dataset import NucleiDataset
from kit.data.normalize import normalize_image
from kit.data.sample import SPLITS
from kit.errors import ConfigError

_SELECTION_KEYS = ("split", "styles")


class ReferencePool:
    """Reference images (uint8 H×W×C) with draw probabilities; `sample` returns one of them."""

    def __init__(self, images: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> None:
        if not images:
            raise ConfigError("a reference pool needs at least one image")
        self.images = [np.asarray(image) for image in images]
        w = np.ones(len(self.images)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.images),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(self.images)} non-negative numbers with a positive sum")
        self.probabilities = w / w.sum()

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One image, drawn with `probabilities`."""
        return self.images[int(rng.choice(len(self.images), p=self.probabilities))]


class StyleReferences:
    """Pools over one dataset, for `kit.augment.build_augmentation(..., references=...)`.

    `channels` must be the model's input channels (``data.channels``); `train_ids` are the images the
    model trains on (default: the annotated train split), whose style counts set the draw weights.
    Pools are built on first request and cached per selection.
    """

    def __init__(
        self,
        dataset: NucleiDataset,
        *,
        channels: int,
        train_ids: Sequence[str] | None = None,
        max_side: int = 512,
    ) -> None:
        self.dataset = dataset
        self.channels = channels
        self.max_side = max_side
        manifest = dataset.manifest
        if train_ids is None:
            train_ids = manifest.loc[
                (manifest["split"] == "train") & manifest["n_nuclei"].notna(), "id"
            ].tolist()
        styles = manifest.set_index("id").loc[list(train_ids), "style"]
        self.train_counts: dict[int, int] = {int(s): int(n) for s, n in styles.value_counts().items()}
        self._pools: dict[tuple, ReferencePool] = {}

    def pool(self, selection: Mapping[str, Any]) -> ReferencePool:
        """The pool of `selection` (see module doc); `ConfigError` for unknown splits or styles and for
        selections that match no image."""
        splits, styles = parse_selection(selection)
        key = (splits, styles)
        if key not in self._pools:
            self._pools[key] = self._build(splits, styles)
        return self._pools[key]

    def _build(self, splits: tuple[str, ...], styles: tuple[int, ...] | None) -> ReferencePool:
        manifest = self.dataset.manifest
        rows = manifest[manifest["split"].isin(splits)]
        if styles is not None:
            known = sorted(int(s) for s in rows["style"].unique())
            missing = [s for s in styles if s not in known]
            if missing:
                raise ConfigError(
                    f"reference style(s) {missing} have no image in split(s) {', '.join(splits)} of "
                    f"{self.dataset.root} (styles there: {known}; see `kit data styles`)"
                )
            rows = rows[rows["style"].isin(styles)]
        if rows.empty:
            raise ConfigError(f"reference split(s) {', '.join(splits)} of {self.dataset.root} hold no image")
        per_style = rows["style"].value_counts()
        weights = [1.0 / (1 + self.train_counts.get(int(s), 0)) / per_style[s] for s in rows["style"]]
        images = [self._load(image_id) for image_id in rows["id"]]
        return ReferencePool(images, weights)

    def _load(self, image_id: str) -> np.ndarray:
        image = normalize_image(self.dataset.load(image_id).image, self.channels)
        scale = self.max_side / max(image.shape[:2])
        if scale < 1:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
        return image


def parse_selection(selection: Any) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """(splits, styles or None) of a ``{split, styles}`` mapping; `ConfigError` naming a bad value."""
    if not isinstance(selection, Mapping):
        raise ConfigError(f"reference must be a mapping like {{split: test, styles: [3]}}, got {selection!r}")
    unknown = [key for key in selection if key not in _SELECTION_KEYS]
    if unknown:
        raise ConfigError(f"reference: unknown key {unknown[0]!r}; valid: {', '.join(_SELECTION_KEYS)}")
    raw_splits = selection.get("split")
    splits = _as_tuple(raw_splits, str)
    bad = [s for s in splits if s not in SPLITS]
    if not splits or bad:
        shown = bad[0] if bad else raw_splits
        raise ConfigError(f"reference: unknown split {shown!r}; choose one or more of {', '.join(SPLITS)}")
    raw_styles = selection.get("styles")
    if raw_styles is None:
        return splits, None
    styles = _as_tuple(raw_styles, int)
    if not styles or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in styles):
        raise ConfigError(f"reference: styles must be a list of style cluster ids (>= 0), got {raw_styles!r}")
    return splits, tuple(sorted(set(styles)))


def _as_tuple(value: Any, scalar: type) -> tuple:
    """`value` as a tuple: a lone `scalar` becomes a 1-tuple, a list/tuple is copied, anything else is ()."""
    if isinstance(value, scalar):
        return (value,)
    return tuple(value) if isinstance(value, (list, tuple)) else ()
