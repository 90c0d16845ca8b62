"""Per-image prediction files: probability maps (`.npz`) and instance label images (`.png` / `.npz`).

The layout a predict run writes (all paths relative to the run's artifact root):

    probs/<id>.npz      maps (K, H, W) under "probs" as uint8 (round(255·p)) and their names under "channels"
    labels/<id>.png     uint16 label image (0 = background, 1..N); `labels/<id>.npz` ("labels", int32)
                        when an image has more than 65535 instances; `labels/<id>.ome.zarr/` for an image
                        predicted block by block (`kit.scale`: OME-Zarr image + labels + instance table,
                        and no probs/ file)
    predictions.csv     one row per image (`INDEX_COLUMNS`), naming its two files; `estimated_score` is
                        the ensemble's estimate of the image's DSB score and `estimate_flag` whether the image is
                        within what that estimate was calibrated on ("ok") or why not (empty for other models)
    instances.csv       one row per instance (`INSTANCE_COLUMNS`: area, mean foreground probability,
                        `score` = detection score of instance models, empty for semantic ones)
    postprocess.json    the post-processing settings that made the label images

Every file is written atomically (`kit.fileio.atomic_path`). These are plain functions on folders, so the
files can be read without MLflow (e.g. from a downloaded artifact folder).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.fileio import atomic_path, atomic_write_text, read_image, write_png

PROBS_DIR = "probs"
LABELS_DIR = "labels"
INDEX_FILE = "predictions.csv"
INSTANCES_FILE = "instances.csv"
INDEX_COLUMNS = (
    "image_id",
    "split",
    "height",
    "width",
    "n_instances",
    "folds",
    "model_runs",
    "probs",
    "labels",
    "source",
    "seconds",
    "estimated_score",
    "estimate_flag",
)
INSTANCE_COLUMNS = ("image_id", "label", "area", "mean_prob", "folds", "score")
LARGE_SUFFIX = ".ome.zarr"
MAX_PENDING_WRITES = 8
POSTPROCESS_FILE = "postprocess.json"
_PNG_MAX_LABEL = np.iinfo(np.uint16).max


def write_probs(root: str | os.PathLike, image_id: str, probs: np.ndarray, channels: Sequence[str]) -> str:
    """Save maps (K, H, W) in [0, 1] under `root`/probs/<id>.npz; return the path relative to `root`.

    Stored as uint8 (round(255·p), so within 0.002 of the map) in a zip at deflate level 1: a third of
    float16's size and ~8× faster to write than `np.savez_compressed`, which matters on the predict path.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != len(channels):
        raise ValueError(f"probs must be (K, H, W) with K = {len(channels)}, got {probs.shape}")
    rel = f"{PROBS_DIR}/{image_id}.npz"
    with (
        atomic_path(Path(root) / rel) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z,
    ):
        with z.open("probs.npy", "w") as f:
            np.lib.format.write_array(f, quantize_probs(probs))
        with z.open("channels.npy", "w") as f:
            np.lib.format.write_array(f, np.array(list(channels), dtype=str))
    return rel


def quantize_probs(probs: np.ndarray) -> np.ndarray:
    """Maps in [0, 1] as stored: uint8 round(255·p) (maps already quantised are returned as they are)."""
    if probs.dtype == np.uint8:
        return probs
    return np.rint(np.clip(probs, 0.0, 1.0) * 255).astype(np.uint8)


def read_probs(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...]]:
    """(float32 maps (K, H, W), channel names) from a file written by `write_probs`."""
    try:
        with np.load(path) as data:
            stored = data["probs"]
            probs = stored.astype(np.float32) / 255 if stored.dtype == np.uint8 else stored.astype(np.float32)
            return probs, tuple(str(c) for c in data["channels"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a probability-map file ({exc})") from None


def write_labels(root: str | os.PathLike, image_id: str, labels: np.ndarray) -> str:
    """Save an H×W label image under `root`/labels/ (PNG uint16, or npz beyond 65535 instances).

    Returns the path relative to `root`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise ValueError(f"labels of {image_id!r} must be an H×W non-negative integer image")
    if labels.size == 0 or labels.max() <= _PNG_MAX_LABEL:
        rel = f"{LABELS_DIR}/{image_id}.png"
        write_png(Path(root) / rel, labels.astype(np.uint16))
        return rel
    rel = f"{LABELS_DIR}/{image_id}.npz"
    with atomic_path(Path(root) / rel) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, labels=labels.astype(np.int32))
    return rel


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """int32 H×W label image from a file written by `write_labels`, or the full-resolution labels of a
    block-wise result (`labels/<id>.ome.zarr`)."""
    path = Path(path)
    if path.name.endswith(LARGE_SUFFIX):
        import zarr

        from kit.scale.omezarr import LABEL_NAME

        try:
            return np.asarray(zarr.open_array(str(path / "labels" / LABEL_NAME / "0"), mode="r")[:], np.int32)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: not a block-wise label image ({exc})") from None
    if path.suffix == ".npz":
        try:
            with np.load(path) as data:
                return data["labels"].astype(np.int32)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: not a label-image file ({exc})") from None
    labels = read_image(path)
    if labels.ndim != 2:
        raise DataError(f"{path}: a label image must be single-channel, got shape {labels.shape}")
    return labels.astype(np.int32)


def read_table(path: str | os.PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """A predictions.csv / instances.csv table, ids kept as strings; DataError when columns are missing."""
    try:
        frame = pd.read_csv(
            path,
            dtype={"image_id": str, "folds": str, "model_runs": str, "split": str},
            keep_default_na=False,
        )
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read prediction table ({exc})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def read_index(root: str | os.PathLike) -> pd.DataFrame:
    """The predictions.csv of a predict run's artifact folder."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{root} has no {INDEX_FILE}: not a (finished) predict run")
    return read_table(path, INDEX_COLUMNS)


def read_predicted_labels(root: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(predictions.csv, image id → int32 label image) of a predict run's artifact folder."""
    root = Path(root)
    index = read_index(root)
    return index, {row.image_id: read_labels(root / row.labels) for row in index.itertuples(index=False)}


def write_tables(root: str | os.PathLike, index: pd.DataFrame, instances: pd.DataFrame) -> None:
    """Write a predict run's predictions.csv and instances.csv under `root`."""
    atomic_write_text(Path(root) / INDEX_FILE, index.to_csv(index=False))
    atomic_write_text(Path(root) / INSTANCES_FILE, instances.to_csv(index=False))


def prediction_metrics(index: pd.DataFrame) -> dict[str, float]:
    """The metrics every predict run reports, from its predictions.csv: images, instances, instances per
    image and seconds per image."""
    n = len(index)
    return {
        "n_images": n,
        "n_instances": int(index["n_instances"].sum()) if n else 0,
        "instances_per_image": float(index["n_instances"].mean()) if n else 0.0,
        "seconds_per_image": float(index["seconds"].mean()) if n else 0.0,
    }


class ArtifactWriter:
    """Writes per-image files under `root` on a background thread, so that encoding and compression
    overlap the next image's prediction. Methods return the relative path at once; at most
    `MAX_PENDING_WRITES` writes wait (a caller faster than the disk waits, rather than holding every
    image); leaving the `with` block waits for every write and raises the first error."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kit-artifacts")
        self._pending: list[Future] = []

    def probs(self, image_id: str, probs: np.ndarray, channels: Sequence[str]) -> str:
        """`write_probs` in the background; the relative path."""
        self._submit(write_probs, self.root, image_id, probs, channels)
        return f"{PROBS_DIR}/{image_id}.npz"

    def labels(self, image_id: str, labels: np.ndarray) -> str:
        """`write_labels` in the background; the relative path."""
        suffix = ".png" if labels.size == 0 or labels.max() <= _PNG_MAX_LABEL else ".npz"
        self._submit(write_labels, self.root, image_id, labels)
        return f"{LABELS_DIR}/{image_id}{suffix}"

    def _submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > MAX_PENDING_WRITES:
            self._pending.pop(0).result()

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pool.shutdown(wait=True)
            self._pending.clear()
