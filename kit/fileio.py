"""Small file helpers shared by every stage: atomic writes and image reading with clear errors."""

from __future__ import annotations

import contextlib
import hashlib
import os
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


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode PNG/TIFF/JPEG bytes into an array, keeping bit depth and channels (RGB order).

    Raises `DataError` naming `name` when the bytes are not a readable image.
    """
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        # cv2 cannot read some TIFF flavours (multi-page, float); scikit-image's tifffile can.
        if name.lower().endswith((".tif", ".tiff")):
            import io

            import tifffile

            try:
                img = tifffile.imread(io.BytesIO(data))
            except Exception as exc:  # any failure means unreadable
                raise DataError(f"{name}: not a readable image ({exc.__class__.__name__}: {exc})") from None
            return np.asarray(img)
        raise DataError(f"{name}: not a readable image (corrupt or unsupported format)")
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(img)


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
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(arr)):
            raise DataError(f"{path}: could not write PNG")
    return Path(path)
