"""The canonical in-memory form shared by every importer and stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "validation", "test")


@dataclass
class Sample:
    """One image and its instances.

    `image` is H×W or H×W×C (uint8, uint16 or float32); `labels` is an H×W integer label image
    (0 = background, 1..N = nuclei, no overlaps) or None when the truth is unknown. `source` says where it
    came from (file path or generator) and `note` records any normalisation applied on import.
    `label_source` is empty for labels drawn or imported as truth and names the model that made automatic
    labels (`kit data autolabel`), with its confidence in `label_score`.
    """

    id: str
    image: np.ndarray
    labels: np.ndarray | None
    split: str = "train"
    source: str = ""
    note: str = ""
    meta: dict[str, object] = field(default_factory=dict)
    label_source: str = ""
    label_score: float | None = None
