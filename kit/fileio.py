"""Small file helpers shared by every stage: atomic writes and image reading with clear errors."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kit.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, on error delete it.

    The temporary file keeps the suffix of `path` so that writers choosing a format by extension
    (cv2.imwrite, matplotlib savefig) behave as for the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (write a temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (write a temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MAX_IMAGE_PIXELS = 1 << 28
"""Images declaring more pixels than this (16384², 256 MiB per 8-bit channel) are refused before they are
decoded, unless `$KIT_MAX_IMAGE_PIXELS` allows more: a corrupt or hostile header must not exhaust memory."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def max_image_pixels() -> int:
    """The pixel limit in force: `$KIT_MAX_IMAGE_PIXELS` or `MAX_IMAGE_PIXELS`."""
    value = os.environ.get("KIT_MAX_IMAGE_PIXELS", "")
    return int(value) if value.strip().isdigit() else MAX_IMAGE_PIXELS


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode PNG/TIFF/JPEG bytes into an array, keeping bit depth and channels (RGB order).

    Raises `DataError` naming `name` for an empty file, bytes that are not a readable image, a header
    declaring more than `max_image_pixels()` pixels (checked before decoding), a multi-page TIFF, an
    array that is not H×W or H×W×C (C ≤ 4), and NaN or infinite values.
    """
    if not data:
        raise DataError(f"{name}: empty file (0 bytes); expected a PNG, TIFF or JPEG image")
    _check_declared_size(data, name)
    img = _imdecode(data, name)
    if img is None:
        # cv2 cannot read some TIFF flavours (float, 32-bit); tifffile can.
        if data.startswith(_TIFF_SIGNATURES):
            import tifffile

            try:
                img = np.asarray(tifffile.imread(io.BytesIO(data)))
            except Exception as exc:  # any failure means unreadable
                reason = str(exc).splitlines()[0] if str(exc) else ""
                raise DataError(
                    f"{name}: not a readable image ({exc.__class__.__name__}: {reason})"
                ) from None
        else:
            raise DataError(f"{name}: not a readable image (corrupt or unsupported format)")
    elif img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    return _checked_array(np.ascontiguousarray(img), name)


def _imdecode(data: bytes, name: str) -> np.ndarray | None:
    """cv2.imdecode, with libpng's and OpenCV's own messages about a corrupt file kept off the terminal
    (kit reports the problem itself, on one line)."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        with _native_stderr_silenced():
            return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise DataError(f"{name}: not a readable image (OpenCV: {reason})") from None


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while C code runs (libpng prints errors there itself)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _check_declared_size(data: bytes, name: str) -> None:
    """Refuse a PNG or TIFF whose header declares too many pixels, or a TIFF of several pages."""
    size = None
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        size = (height, width)
    elif data.startswith(_TIFF_SIGNATURES):
        size = _tiff_size(data, name)
    if size is None:
        return
    height, width = size
    limit = max_image_pixels()
    if height * width > limit:
        raise DataError(
            f"{name}: the header declares {width}×{height} pixels ({height * width / 1e6:.0f} megapixels), "
            f"over kit's limit of {limit / 1e6:.0f} (a corrupt file or a decompression bomb?); "
            "set KIT_MAX_IMAGE_PIXELS to allow larger images"
        )


def _tiff_size(data: bytes, name: str) -> tuple[int, int] | None:
    """(height, width) of a TIFF's only page from its header, or None when tifffile cannot parse it."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            n_pages = len(tif.pages)
            page = tif.pages[0]
            shape = (int(page.imagelength), int(page.imagewidth))
    except Exception:  # an unparsable header: the decoders report it
        return None
    if n_pages > 1:
        raise DataError(
            f"{name}: a TIFF of {n_pages} pages (a stack or time series?); kit reads one 2-D image per "
            "file: save each page as its own file"
        )
    return shape


def _checked_array(img: np.ndarray, name: str) -> np.ndarray:
    """`img` if it is an H×W or H×W×C (C ≤ 4) image of finite numbers, else DataError naming `name`."""
    if img.ndim not in (2, 3) or (img.ndim == 3 and not 1 <= img.shape[2] <= 4) or img.size == 0:
        raise DataError(f"{name}: expected an H×W or H×W×C image (C ≤ 4), got an array of shape {img.shape}")
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        bad = int((~np.isfinite(img)).sum())
        raise DataError(f"{name}: {bad} pixel value(s) are NaN or infinite")
    if img.dtype.kind not in "uif" and img.dtype != np.bool_:
        raise DataError(f"{name}: unsupported pixel type {img.dtype}")
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into an array (H×W or H×W×C, RGB(A) order, original dtype).

    Raises `DataError` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an H×W or H×W×{3,4} uint8/uint16 array (RGB(A) order) as PNG, atomically."""
    import cv2

    arr = np.asarray(image)
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: PNG needs uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise DataError(f"{path}: PNG holds 1, 3 or 4 channels, got {arr.shape[2]}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(arr)):
            raise DataError(f"{path}: could not write PNG")
    return Path(path)
