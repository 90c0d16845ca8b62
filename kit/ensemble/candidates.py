"""Instance candidates of one image, collected from the predict runs of the base experiments.

A candidate set is label images plus a table, never a dict of masks:

- `layers` (L, H, W) int32: each layer is one non-overlapping label image: a source's own instances
  (split level 0), or the new parts of its instances when the watershed is re-run from the stored
  probability maps with a stricter seed threshold (`split_layers`, topcoders' alternative splits).
  Candidates of different layers overlap; choosing among them is `kit.ensemble.selection`'s job.
- `table`, one row per candidate (`CANDIDATE_COLUMNS`): its `layer` and `label` (id in that layer),
  `source` (base experiment), `split_level` (0, or the seed threshold of the re-split), `parent` (the
  source's own instance it comes from: itself at level 0), `n_siblings` (parts of the parent at this
  level; 1 at level 0), `n_parts` (most parts the parent splits into at any level) and `score` (the
  source's per-instance confidence, the `score` column of its instances.csv, e.g. a Mask R-CNN detection
  score; NaN when it has none; parts inherit their parent's).

Sources whose predict run stored probability maps with a "body" channel (the U-Net family) get split
levels; others (e.g. Mask R-CNN label images) contribute their own instances only.
"""

from __future__ import annotations

import inspect
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit.errors import DataError, RunNotFoundError
from kit.inference.artifacts import (
    INSTANCE_COLUMNS,
    INSTANCES_FILE,
    POSTPROCESS_FILE,
    read_index,
    read_labels,
    read_probs,
    read_table,
)
from kit.inference.postprocess import instances_from_probs
from kit.metrics import label_overlap

CANDIDATE_COLUMNS: tuple[str, ...] = (
    "layer",
    "label",
    "source",
    "split_level",
    "parent",
    "n_siblings",
    "n_parts",
    "score",
)
_WATERSHED_ARGS = frozenset(inspect.signature(instances_from_probs).parameters) - {"probs", "channels"}


@dataclass(frozen=True)
class SourceRun:
    """One base experiment's predict run, read from its artifact folder (`kit.inference.artifacts`).

    `index` is predictions.csv indexed by image id; `scores` the per-instance confidences of
    instances.csv indexed by (image_id, label), None when it has no `score` column; `postprocess` the
    settings that made its label images (postprocess.json; {} when absent).
    """

    name: str
    run_id: str
    root: Path
    index: pd.DataFrame
    scores: pd.Series | None
    postprocess: dict[str, Any]

    @classmethod
    def from_folder(cls, name: str, run_id: str, root: str | os.PathLike) -> SourceRun:
        """Read a predict run's artifact folder `root` (predictions.csv, instances.csv, postprocess.json)."""
        root = Path(root)
        index = read_index(root).set_index("image_id", drop=False)
        scores = None
        if (root / INSTANCES_FILE).is_file():
            instances = read_table(root / INSTANCES_FILE, INSTANCE_COLUMNS)
            if "score" in instances.columns:
                values = pd.to_numeric(instances["score"], errors="coerce")
                if values.notna().any():  # semantic models leave the column empty
                    scores = pd.Series(
                        values.to_numpy(), index=pd.MultiIndex.from_frame(instances[["image_id", "label"]])
                    )
        post_file = root / POSTPROCESS_FILE
        postprocess = json.loads(post_file.read_text()) if post_file.is_file() else {}
        return cls(name, run_id, root, index, scores, postprocess)

    @property
    def image_ids(self) -> list[str]:
        return self.index.index.tolist()

    def labels(self, image_id: str) -> np.ndarray:
        """The source's int32 label image of `image_id`."""
        return read_labels(self.root / self._row(image_id)["labels"])

    def maps(self, image_id: str) -> dict[str, np.ndarray]:
        """Channel name → float32 H×W probability map of `image_id` ({} when the run stored none)."""
        rel = str(self._row(image_id).get("probs", "") or "")
        if not rel or not (self.root / rel).is_file():
            return {}
        probs, channels = read_probs(self.root / rel)
        return dict(zip(channels, probs, strict=True))

    def _row(self, image_id: str) -> pd.Series:
        if image_id not in self.index.index:
            raise RunNotFoundError(
                f"predict run {self.run_id} of '{self.name}' did not predict image {image_id!r}"
            )
        return self.index.loc[image_id]


@dataclass(frozen=True)
class PredictionSource:
    """One base model's in-memory predictions, a candidate source like `SourceRun` (used by the ensemble
    as a model object, `kit.ensemble.segmenter`): per image id, its label image, maps (channel → H×W,
    {} for none) and per-instance scores (label i at index i − 1, or None)."""

    name: str
    postprocess: dict[str, Any]
    predictions: dict[str, tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]]
    run_id: str = "in memory"

    @property
    def scores(self) -> pd.Series | None:
        rows = [
            (image_id, label, float(score))
            for image_id, (_, _, scores) in self.predictions.items()
            if scores is not None
            for label, score in enumerate(scores, start=1)
        ]
        if not rows:
            return None
        frame = pd.DataFrame(rows, columns=["image_id", "label", "score"])
        return pd.Series(
            frame["score"].to_numpy(), index=pd.MultiIndex.from_frame(frame[["image_id", "label"]])
        )

    @property
    def image_ids(self) -> list[str]:
        return list(self.predictions)

    def labels(self, image_id: str) -> np.ndarray:
        return self.predictions[image_id][0]

    def maps(self, image_id: str) -> dict[str, np.ndarray]:
        return self.predictions[image_id][1]


@dataclass
class SplitLevel:
    """The new parts found at one stricter seed threshold: a label image holding only them, their ids,
    their parent (source instance) and how many parts that parent has at this threshold."""

    threshold: float
    labels: np.ndarray
    ids: np.ndarray
    parent: np.ndarray
    n_siblings: np.ndarray


@dataclass
class Candidates:
    """The instance candidates of one image (see the module docstring): `layers` (L, H, W) int32,
    `table` with `CANDIDATE_COLUMNS`, and `maps` (source → channel → H×W map) for the features; `maps`
    is not saved by `save`."""

    image_id: str
    layers: np.ndarray
    table: pd.DataFrame
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    def source_labels(self, source: str) -> np.ndarray:
        """The label image of `source`'s own instances (split level 0; all background when it has none)."""
        rows = self.table[(self.table["source"] == source) & (self.table["split_level"] == 0)]
        if rows.empty:
            return np.zeros(self.layers.shape[1:], dtype=np.int32)
        return self.layers[int(rows["layer"].iloc[0])]

    def save(self, path: str | os.PathLike) -> None:
        """Write layers and table to one compressed .npz file."""
        from kit.fileio import atomic_path

        dtype = (
            np.uint16 if self.layers.size == 0 or self.layers.max() <= np.iinfo(np.uint16).max else np.int32
        )
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f, layers=self.layers.astype(dtype), table=np.array(self.table.to_csv(index=False))
            )

    @classmethod
    def load(cls, path: str | os.PathLike, image_id: str) -> Candidates:
        """Read a file written by `save`."""
        with np.load(path) as data:
            layers = data["layers"].astype(np.int32)
            table = pd.read_csv(io.StringIO(str(data["table"])), dtype={"source": str}, keep_default_na=False)
        table["score"] = pd.to_numeric(table["score"], errors="coerce")
        return cls(image_id, layers, table)


def split_layers(
    labels: np.ndarray,
    maps: dict[str, np.ndarray],
    postprocess: dict[str, Any],
    thresholds: Sequence[float],
) -> list[SplitLevel]:
    """Re-split the instances of `labels` (H×W) at each seed threshold in `thresholds` stricter than
    `postprocess["seed_threshold"]`, keeping only parts that are new.

    The watershed (`instances_from_probs` with the source's `postprocess` settings, seed threshold
    replaced) runs on `maps` (channel → H×W, needs "body"). A part is new when the instance it comes
    from at the previous (less strict) level split into two or more there; unsplit copies are dropped.
    """
    if "body" not in maps or not thresholds:
        return []
    settings = {k: v for k, v in postprocess.items() if k in _WATERSHED_ARGS}
    base_seed = float(settings.get("seed_threshold", 0.5))
    channels = list(maps)
    probs = np.stack([maps[c] for c in channels])
    levels, previous = [], labels
    for threshold in sorted(t for t in thresholds if t > base_seed):
        split = instances_from_probs(probs, channels, **{**settings, "seed_threshold": threshold})
        parent = _parent_of(split, labels)
        before = _parent_of(split, previous)
        ids = np.flatnonzero(np.bincount(split.ravel()))
        ids = ids[ids > 0]
        children = np.bincount(before[ids], minlength=int(previous.max(initial=0)) + 1)
        siblings = np.bincount(parent[ids], minlength=int(labels.max(initial=0)) + 1)
        new = ids[(parent[ids] > 0) & (before[ids] > 0) & (children[before[ids]] >= 2)]
        keep = np.zeros(int(split.max(initial=0)) + 1, dtype=bool)
        keep[new] = True
        levels.append(
            SplitLevel(threshold, np.where(keep[split], split, 0), new, parent[new], siblings[parent[new]])
        )
        previous = split
    return levels


def _parent_of(labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For every id of `labels` (array indexed by id): the id of `reference` it overlaps most (0 = none)."""
    counts, ref_ids, ids = label_overlap(reference, labels)
    out = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int64)
    out[ids[1:]] = ref_ids[np.argmax(counts[:, 1:], axis=0)]
    return out


def image_candidates(
    image_id: str, sources: Sequence[SourceRun | PredictionSource], split_thresholds: Sequence[float]
) -> Candidates:
    """All candidates of `image_id` from `sources` (each must have predicted it, at the same size)."""
    layers: list[np.ndarray] = []
    tables: list[pd.DataFrame] = []
    maps: dict[str, dict[str, np.ndarray]] = {}
    shape = None
    for source in sources:
        labels = source.labels(image_id)
        if shape is not None and labels.shape != shape:
            raise DataError(
                f"image {image_id!r}: predict run {source.run_id} of '{source.name}' is {labels.shape}, "
                f"other sources {shape}; the base experiments must predict the same images"
            )
        shape = labels.shape
        source_maps = source.maps(image_id)
        if source_maps:
            maps[source.name] = source_maps
        ids = np.flatnonzero(np.bincount(labels.ravel()))
        ids = ids[ids > 0]
        levels = split_layers(labels, source_maps, source.postprocess, split_thresholds)
        n_parts = np.ones(int(labels.max(initial=0)) + 1, dtype=np.int64)
        for level in levels:
            np.maximum.at(n_parts, level.parent, level.n_siblings)
        score = _scores(source, image_id, ids)
        score_of = pd.Series(score, index=ids)
        rows = [(labels, ids, 0.0, ids, np.ones_like(ids))]
        rows += [(lv.labels, lv.ids, lv.threshold, lv.parent, lv.n_siblings) for lv in levels]
        for layer, layer_ids, level, parent, siblings in rows:
            tables.append(
                pd.DataFrame(
                    {
                        "layer": len(layers),
                        "label": layer_ids,
                        "source": source.name,
                        "split_level": level,
                        "parent": parent,
                        "n_siblings": siblings,
                        "n_parts": n_parts[parent],
                        "score": score_of.reindex(parent).to_numpy(dtype=float),
                    }
                )
            )
            layers.append(layer.astype(np.int32, copy=False))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(CANDIDATE_COLUMNS))
    stacked = np.stack(layers) if layers else np.zeros((0, 0, 0), dtype=np.int32)
    return Candidates(image_id, stacked, table, maps)


def _scores(source: SourceRun | PredictionSource, image_id: str, ids: np.ndarray) -> np.ndarray:
    """The source's per-instance confidence of instances `ids` of `image_id` (NaN when unknown)."""
    if source.scores is None:
        return np.full(ids.shape, np.nan)
    index = pd.MultiIndex.from_arrays([np.full(ids.shape, image_id, dtype=object), ids])
    return source.scores.reindex(index).to_numpy(dtype=float)
