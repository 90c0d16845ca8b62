"""The block-wise result on disk: an OME-Zarr image with its nuclei as an NGFF label image, plus a Parquet
instance table, written chunk by chunk so no process ever holds the whole image.

Layout (OME-NGFF 0.4, Zarr format 2 with "/" chunk keys: what napari's ome-zarr plugin, QuPath and
ome-zarr-py read):

    <out>/                         image group: `multiscales` (axes [c,] y, x), levels 0, 1, ...
      0/ 1/ ...                    the input image (channels first), each level half the previous
      labels/                      `labels: [<name>]`
        <name>/                    `multiscales` (axes y, x) and `image-label` (source ../../)
          0/ 1/ ...                int32 labels, 0 = background, 1..N; levels by nearest sampling
          instances.parquet        one row per nucleus (`kit.scale.stitch.TABLE_COLUMNS`)

Everything is written under a temporary sibling folder and renamed onto `<out>` when complete (an
existing `<out>` is replaced only then), so a killed run never leaves a half-written result under the
final name. With `path=None` the result lives in memory (a zarr MemoryStore; in-process runs only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.fileio import atomic_path
from kit.scale.plan import Region

LABEL_NAME = "nuclei"
TABLE_FILE = "instances.parquet"
LABEL_DTYPE = np.int32
NGFF_VERSION = "0.4"


@dataclass
class OmeZarrOutput:
    """An OME-Zarr result being written: image of `shape` (H, W) with `channels` (None: grey) of `dtype`,
    labels named `name`, stored in `chunk`² chunks under `root` (the temporary folder; None in memory)."""

    path: str | None
    root: str | None
    shape: tuple[int, int]
    chunk: int
    dtype: str
    channels: int | None
    name: str = LABEL_NAME
    _group: Any = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike | None,
        shape: tuple[int, int],
        *,
        chunk: int,
        dtype: np.dtype,
        channels: int | None,
        name: str = LABEL_NAME,
    ) -> OmeZarrOutput:
        """Create the level-0 arrays (empty) of a new result at `path` (None: in memory)."""
        import zarr

        if path is None:
            root, store = None, zarr.storage.MemoryStore()
        else:
            final = Path(path).expanduser().resolve()
            if final.exists() and not final.is_dir():
                raise DataError(f"{final}: exists and is not a folder; choose another output path")
            final.parent.mkdir(parents=True, exist_ok=True)
            root = tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
            path, store = str(final), root
        out = cls(path, root, tuple(shape), int(chunk), np.dtype(dtype).str, channels, name)
        group = zarr.open_group(store, mode="w", zarr_format=2)
        out._group = group
        _create(group, "0", out._image_shape(shape), out._image_chunks(), dtype)
        _create(group.require_group(f"labels/{name}"), "0", shape, (chunk, chunk), LABEL_DTYPE)
        return out

    def __getstate__(self) -> dict:
        if self.root is None:
            raise DataError(
                "an in-memory OME-Zarr result cannot be sent to other processes; give an output path"
            )
        return {**self.__dict__, "_group": None}

    @property
    def group(self) -> Any:
        if self._group is None:
            import zarr

            self._group = zarr.open_group(self.root, mode="r+", zarr_format=2)
        return self._group

    def labels(self, level: int = 0) -> Any:
        """The zarr array of label level `level`."""
        return self.group[f"labels/{self.name}/{level}"]

    def image(self, level: int = 0) -> Any:
        """The zarr array of image level `level` (channels first when the image has channels)."""
        return self.group[str(level)]

    def write_image(self, region: Region, data: np.ndarray) -> None:
        """Write image pixels (h, w[, C]) of `region` into level 0."""
        y0, y1, x0, x1 = region
        if self.channels is None:
            self.image()[y0:y1, x0:x1] = data
        else:
            self.image()[:, y0:y1, x0:x1] = np.moveaxis(data.reshape(y1 - y0, x1 - x0, -1), 2, 0)

    def write_labels(self, region: Region, data: np.ndarray) -> None:
        y0, y1, x0, x1 = region
        self.labels()[y0:y1, x0:x1] = data

    def read_labels(self, region: Region) -> np.ndarray:
        y0, y1, x0, x1 = region
        return np.asarray(self.labels()[y0:y1, x0:x1])

    def level_shapes(self) -> list[tuple[int, int]]:
        """(H, W) of every pyramid level: halved (rounded up) until the image fits in one chunk."""
        shapes = [self.shape]
        while max(shapes[-1]) > self.chunk:
            h, w = shapes[-1]
            shapes.append((-(-h // 2), -(-w // 2)))
        return shapes

    def create_level(self, level: int) -> None:
        """Create the empty arrays of pyramid level `level` ≥ 1."""
        h, w = self.level_shapes()[level]
        _create(self.group, str(level), self._image_shape((h, w)), self._image_chunks(), np.dtype(self.dtype))
        _create(self.group[f"labels/{self.name}"], str(level), (h, w), (self.chunk, self.chunk), LABEL_DTYPE)

    def downsample(self, level: int, region: Region) -> None:
        """Fill `region` of pyramid level `level` from level − 1 by taking every second pixel (nearest:
        labels stay labels; the image is a preview)."""
        y0, y1, x0, x1 = region
        src = (slice(2 * y0, 2 * y1, 2), slice(2 * x0, 2 * x1, 2))
        self.labels(level)[y0:y1, x0:x1] = np.asarray(self.labels(level - 1)[src])
        lead = () if self.channels is None else (slice(None),)
        self.image(level)[(*lead, slice(y0, y1), slice(x0, x1))] = np.asarray(
            self.image(level - 1)[(*lead, *src)]
        )

    def finish(self, table: pd.DataFrame) -> str | None:
        """Write the metadata and the instance table, then move the result to its final path (replacing
        an older result there). Returns the final path (None in memory)."""
        from ome_zarr.format import FormatV04
        from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

        fmt = FormatV04()
        levels = len(self.level_shapes())
        spatial = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
        image_axes = spatial if self.channels is None else [{"name": "c", "type": "channel"}, *spatial]
        lead = [] if self.channels is None else [1.0]

        def datasets(lead: list[float]) -> list[dict]:
            return [
                {
                    "path": str(k),
                    "coordinateTransformations": [{"type": "scale", "scale": [*lead, 2.0**k, 2.0**k]}],
                }
                for k in range(levels)
            ]

        write_multiscales_metadata(self.group, datasets(lead), fmt=fmt, axes=image_axes, name="image")
        label_group = self.group[f"labels/{self.name}"]
        write_multiscales_metadata(label_group, datasets([]), fmt=fmt, axes=spatial, name=self.name)
        write_label_metadata(self.group["labels"], self.name, fmt=fmt, source={"image": "../../"})
        if self.root is None:
            return None
        with atomic_path(Path(self.root) / "labels" / self.name / TABLE_FILE) as tmp:
            table.to_parquet(tmp, index=False)
        final = Path(self.path)
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.root, final)
        self.root, self._group = str(final), None
        return str(final)

    def discard(self) -> None:
        """Remove the temporary folder of an unfinished result."""
        if self.root is not None and self.path is not None and Path(self.root) != Path(self.path):
            shutil.rmtree(self.root, ignore_errors=True)

    def _image_shape(self, shape: tuple[int, int]) -> tuple[int, ...]:
        return tuple(shape) if self.channels is None else (self.channels, *shape)

    def _image_chunks(self) -> tuple[int, ...]:
        chunks = (self.chunk, self.chunk)
        return chunks if self.channels is None else (self.channels, *chunks)


def _create(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> Any:
    import numcodecs

    return group.create_array(
        name,
        shape=shape,
        chunks=tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)),
        dtype=np.dtype(dtype),
        fill_value=0,
        compressors=numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE),
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )


def read_table(path: str | os.PathLike, name: str = LABEL_NAME) -> pd.DataFrame:
    """The instance table of a result written at `path`."""
    file = Path(path) / "labels" / name / TABLE_FILE
    try:
        return pd.read_parquet(file)
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: cannot read the instance table ({exc})") from None
