"""Images read lazily, a region at a time: OME-Zarr, Zarr arrays, (OME-)TIFF, and in-memory arrays.

`open_image(x)` turns what a user has into an `ImageSource` whose `read(region)` returns only that region
as H×W or H×W×C (channels last, as kit's images are everywhere else):

- an OME-Zarr image (a folder with NGFF `multiscales` metadata): its full-resolution level, read through
  zarr; its axes (t, c, z, y, x) come from the metadata;
- any Zarr array (a folder, or `folder.zarr/path/to/array`): (y, x), (y, x, c) or (c, y, x);
- a TIFF or OME-TIFF: tifffile's Zarr store over its first series (full resolution), so a tiled TIFF is
  read tile by tile; its axes come from tifffile (YX, YXS, CYX, ...). A strip or tile larger than
  `kit.fileio.max_image_pixels()` is refused (decoding any region would decode it whole);
- PNG and JPEG files, decoded whole (the formats cannot be read in parts), and numpy, Dask or zarr arrays.

Axes other than y, x and one channel axis (up to 4 channels) must have length 1: a time series or a
z-stack is an error naming the file. Sources opened from a path hold only the path when pickled, so a
Dask worker reopens the file itself.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kit.errors import DataError
from kit.fileio import max_image_pixels
from kit.scale.plan import Region

PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_CHANNELS = 4


@dataclass
class ImageSource:
    """A 2-D image of `shape` (H, W) with `channels` (None for grey) of `dtype`, read by region.

    `array` is anything indexable with numpy slices in the order of `axes` (a string over "yxc" plus
    "o" for other length-1 axes), or None while a file-backed source is not yet (re)opened by `_open`.
    """

    name: str
    shape: tuple[int, int]
    channels: int | None
    dtype: np.dtype
    axes: str
    path: str | None = None
    kind: str = "array"
    array: Any = field(default=None, repr=False)

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    def read(self, region: Region) -> np.ndarray:
        """Pixels of `region` (y0, y1, x0, x1): (h, w) or (h, w, C), in the source's dtype."""
        y0, y1, x0, x1 = region
        if self.array is None:
            self.array = _open_cached(self.kind, self.path, _mtime(self.path))[0]
        index = tuple(
            slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else slice(None) if a == "c" else 0
            for a in self.axes
        )
        kept = [a for a in self.axes if a in "yxc"]
        try:
            data = np.asarray(self.array[index])
        except Exception as exc:  # a corrupt chunk or tile: name the file, not the codec
            raise DataError(
                f"{self.name}: cannot read region {region} ({type(exc).__name__}: {exc})"
            ) from None
        return np.ascontiguousarray(data.transpose([kept.index(a) for a in "yxc" if a in kept]))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:
            state["array"] = None  # reopened from the path where it is unpickled
        return state


def open_image(image: Any, *, name: str | None = None) -> ImageSource:
    """An `ImageSource` for a path (see the module docstring) or an array; DataError naming the path for a
    missing file, a folder that holds no array, or an image that is not 2-D (with channels)."""
    if isinstance(image, ImageSource):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        kind = _kind_of(path)
        array, axes = _open(kind, str(path))
        return _source(array, axes, name or str(path), path=str(path), kind=kind)
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        raise DataError(f"cannot read an image from a {type(image).__name__}: give an array or a path")
    shape = tuple(image.shape)
    return _source(image, _array_axes(shape, name or "the array"), name or f"array {shape}")


def _source(array: Any, axes: str, name: str, *, path: str | None = None, kind: str = "array") -> ImageSource:
    sizes = dict(zip(axes, array.shape, strict=True))
    others = {a: n for a, n in zip(axes, array.shape, strict=True) if a not in "yxc" and n != 1}
    if others or "y" not in sizes or "x" not in sizes:
        raise DataError(
            f"{name}: expected a 2-D image (y, x and at most one channel axis), got axes {axes!r} of shape "
            f"{tuple(array.shape)}; time series and z-stacks are not supported"
        )
    channels = sizes.get("c")
    if channels is not None and not 1 <= channels <= MAX_CHANNELS:
        raise DataError(f"{name}: {channels} channels along axis 'c'; expected 1 to {MAX_CHANNELS}")
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "uifb":
        raise DataError(f"{name}: unsupported pixel type {dtype}")
    return ImageSource(name, (sizes["y"], sizes["x"]), channels, dtype, axes, path, kind, array)


def _array_axes(shape: tuple[int, ...], name: str) -> str:
    """Axes of an array without metadata: (y, x), (y, x, c) with c ≤ 4, or (c, y, x) with c ≤ 4."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3 and shape[2] <= MAX_CHANNELS:
        return "yxc"
    if len(shape) == 3 and shape[0] <= MAX_CHANNELS:
        return "cyx"
    raise DataError(
        f"{name}: expected a 2-D array (y, x), (y, x, c) or (c, y, x) with at most {MAX_CHANNELS} channels, "
        f"got shape {tuple(shape)}"
    )


def _kind_of(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return "zarr"
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); expected a PNG, TIFF or JPEG image")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in PLAIN_SUFFIXES:
        return "plain"
    raise DataError(
        f"{path}: not an image kit reads by region; expected a Zarr/OME-Zarr folder or a "
        f"{', '.join(TIFF_SUFFIXES + PLAIN_SUFFIXES)} file"
    )


def image_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """(H, W) of the image file or Zarr folder at `path` without decoding it, or None when its format
    does not tell (JPEG). DataError as `open_image` for what is not an image."""
    path = Path(path).expanduser()
    kind = _kind_of(path)
    if kind != "plain":
        return open_image(path).shape
    with open(path, "rb") as f:
        head = f.read(24)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(height), int(width)
    return None


def read_whole(path: str | os.PathLike) -> np.ndarray:
    """The whole image at `path` (any source `open_image` reads) as H×W or H×W×C."""
    source = open_image(path)
    return source.read((0, source.shape[0], 0, source.shape[1]))


def _mtime(path: str | None) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0


@functools.lru_cache(maxsize=2)
def _open_cached(kind: str, path: str | None, mtime: int) -> tuple[Any, str]:
    """`_open`, kept for the next blocks of the same file in this process (a Dask worker reads many
    blocks of one image: a PNG is decoded once, a TIFF's header parsed once)."""
    return _open(kind, path)


def _open(kind: str, path: str | None) -> tuple[Any, str]:
    """(array, axes) of the file at `path`."""
    if kind == "zarr":
        return _open_zarr(Path(path))
    if kind == "tiff":
        return _open_tiff(Path(path))
    if kind == "plain":
        from kit.fileio import read_image

        image = read_image(path)
        return image, _array_axes(image.shape, path)
    raise DataError(f"{path}: unknown source kind {kind!r}")


def _open_zarr(path: Path) -> tuple[Any, str]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for "nothing here"
        raise DataError(f"{path}: not a Zarr array or group ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Array):
        return node, _array_axes(node.shape, str(path))
    multiscales = _ome_attrs(node).get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in node.arrays())
        hint = f"; name one of its arrays, e.g. {path / arrays[0]}" if arrays else " and holds no array"
        raise DataError(f"{path}: a Zarr group without OME-Zarr 'multiscales' metadata{hint}")
    first = multiscales[0]
    try:
        level = first["datasets"][0]["path"]
        axes = "".join(_axis_name(a) for a in first.get("axes", []))
        array = node[level]
    except (KeyError, IndexError, TypeError) as exc:
        raise DataError(
            f"{path}: broken OME-Zarr 'multiscales' metadata ({type(exc).__name__}: {exc})"
        ) from None
    if len(axes) != array.ndim:
        axes = _array_axes(array.shape, str(path))
    return array, "".join(a if a in "yxc" else "o" for a in axes)


def _ome_attrs(group: Any) -> dict:
    """A group's OME metadata: the attributes themselves (NGFF ≤ 0.4) or their "ome" key (NGFF 0.5)."""
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs)


def _axis_name(axis: Any) -> str:
    name = axis["name"] if isinstance(axis, dict) else str(axis)
    return name.lower()[:1]


def _segment_shape(page: Any) -> tuple[int, int]:
    """(height, width) of one strip or tile of a TIFF page: what decoding any region of it decodes."""
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth)
    return min(int(page.rowsperstrip), int(page.imagelength)), int(page.imagewidth)


def _open_tiff(path: Path) -> tuple[Any, str]:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes
            segment = _segment_shape(tif.series[0].keyframe)
        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        array = zarr.open(store, mode="r")
    except Exception as exc:  # tifffile raises many types for a damaged file
        raise DataError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    height, width = segment
    if height * width > max_image_pixels():
        # A region is read by decoding the strips or tiles it touches: one strip of the whole image
        # would be decoded whole (a corrupt file or a decompression bomb, or an untiled slide).
        raise DataError(
            f"{path}: stored in pieces of {width}×{height} pixels, over kit's limit of "
            f"{max_image_pixels() / 1e6:.0f} megapixels decoded at once (a corrupt file or a decompression "
            "bomb?); large TIFFs must be tiled (e.g. tifffile.imwrite(..., tile=(512, 512))), or set "
            "KIT_MAX_IMAGE_PIXELS to allow more"
        )
    names = {"Y": "y", "X": "x", "S": "c", "C": "c"}
    mapped = "".join(names.get(a, "o") for a in axes)
    if mapped.count("c") > 1:  # both samples and channels: not an image kit reads
        raise DataError(f"{path}: TIFF axes {axes!r} of shape {array.shape}: more than one channel axis")
    return array, mapped
