"""`NucleiDataset`: read access to a dataset folder written by `kit.data.layout.write_dataset`."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from kit.data.layout import mask_files, read_sample_dir
from kit.data.manifest import read_manifest
from kit.data.sample import SPLITS, Sample
from kit.errors import DataError
from kit.fileio import sha256_file


class NucleiDataset:
    """An imported dataset folder: its manifest, its dataset.json and its samples by id.

    Samples are read on demand and kept in an LRU cache of `cache_size` entries; their arrays are
    read-only, because the same object is handed to every caller (copy before changing them).
    """

    def __init__(self, root: str | os.PathLike, *, cache_size: int = 32) -> None:
        self.root = Path(root)
        if not (self.root / "manifest.csv").is_file():
            raise DataError(
                f"{self.root}: not a kit dataset (no manifest.csv); create one with `kit data import`"
            )
        self.manifest: pd.DataFrame = read_manifest(self.root / "manifest.csv")
        info_path = self.root / "dataset.json"
        try:
            self.info: dict = json.loads(info_path.read_text())
        except OSError as exc:
            raise DataError(f"{info_path}: cannot read ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{info_path}: not valid JSON ({exc})") from None
        self._rows = self.manifest.set_index("id", drop=False)
        self._cache: OrderedDict[str, Sample] = OrderedDict()
        self._cache_size = cache_size
        self._digest: str | None = None

    @property
    def name(self) -> str:
        """The dataset name from dataset.json (the folder name if absent)."""
        return str(self.info.get("name", self.root.name))

    @property
    def digest(self) -> str:
        """sha256 of manifest.csv: identifies this exact dataset version (it hashes every file's hash)."""
        if self._digest is None:
            self._digest = sha256_file(self.root / "manifest.csv")
        return self._digest

    def __len__(self) -> int:
        return len(self.manifest)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._rows.index

    def ids(self, split: str | None = None, *, fold: int | None = None) -> list[str]:
        """Image ids in manifest order, optionally only one split and/or one fold."""
        if split is not None and split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        rows = self.manifest
        if split is not None:
            rows = rows[rows["split"] == split]
        if fold is not None:
            rows = rows[rows["fold"] == fold]
        return rows["id"].tolist()

    def row(self, image_id: str) -> pd.Series:
        """The manifest row of `image_id`."""
        if image_id not in self:
            raise DataError(f"{self.root}: no image with id {image_id!r}")
        return self._rows.loc[image_id]

    def sample_dir(self, image_id: str) -> Path:
        """The folder ``<split>/<id>`` of `image_id`."""
        return self.root / self.row(image_id)["split"] / image_id

    def image_path(self, image_id: str) -> Path:
        """Path of the image PNG of `image_id`."""
        return self.sample_dir(image_id) / "images" / f"{image_id}.png"

    def mask_paths(self, image_id: str) -> list[Path] | None:
        """Mask PNGs of `image_id` in label order; None when the truth is unknown."""
        sample_dir = self.sample_dir(image_id)
        return mask_files(sample_dir) if (sample_dir / "masks").is_dir() else None

    def automatic_labels(self) -> list[str]:
        """Ids of the images whose labels a model made (`label_source`, `kit data autolabel`)."""
        return self.manifest.loc[self.manifest["label_source"] != "", "id"].tolist()

    def truth(self, image_id: str) -> np.ndarray:
        """The label image of `image_id` as truth to score against. DataError when the truth is unknown or
        the labels were made automatically (`label_source`): those train models, never score them."""
        row = self.row(image_id)
        if row["label_source"]:
            raise DataError(
                f"{self.root}: image {image_id!r} has automatic labels ({row['label_source']}), which are "
                f"never scoring truth; score against a dataset whose labels were drawn (e.g. --set data.root=...)"
            )
        labels = self.load(image_id).labels
        if labels is None:
            raise DataError(f"{self.root}: image {image_id!r} has no truth (no masks/)")
        return np.asarray(labels)

    def load(self, image_id: str) -> Sample:
        """The `Sample` of `image_id` (cached; arrays are read-only)."""
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        row = self.row(image_id)
        sample = read_sample_dir(self.sample_dir(image_id), row["split"])
        sample.note = row["note"]
        sample.source = row["source"]
        sample.label_source = row["label_source"]
        sample.label_score = None if pd.isna(row["label_score"]) else float(row["label_score"])
        sample.image.setflags(write=False)
        if sample.labels is not None:
            sample.labels.setflags(write=False)
        self._cache[image_id] = sample
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return sample


def open_dataset(root: str | Path) -> NucleiDataset:
    """The dataset at `root`, with a hint on how to create it when it is not a kit dataset."""
    root = Path(root)
    if not (root / "manifest.csv").is_file():
        raise DataError(
            f"data.root '{root}' is not a kit dataset (no manifest.csv); create it with `kit data synth`, "
            f"`kit data import ...`, or point the experiment at one with --set data.root=PATH"
        )
    return NucleiDataset(root)
