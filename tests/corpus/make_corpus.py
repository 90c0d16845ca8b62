"""Regenerate the binary files of the hostile-input corpus (images and masks) from a fixed seed.

The files are committed next to this script; `cases.yaml` says what kit must do with each. Run
`python tests/corpus/make_corpus.py` after adding a generator here, then add the case to `cases.yaml`.
Text files (CSVs, YAML) are written by hand and are not touched by this script.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
SIZE = 24


def _png(image: np.ndarray) -> bytes:
    arr = image
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    assert ok
    return buf.tobytes()


def _tif(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, image)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring `width`×`height` grey pixels, with only a few rows of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _tif_bomb(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one strip claims `width`×`height` 8-bit pixels but holds 8 bytes."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height),  # StripByteCounts
    ]
    ifd_offset = 16
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HHI", tag, kind, count)
        packed += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + b"\x00" * 8 + ifd


def images(rng: np.random.Generator) -> dict[str, bytes]:
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((SIZE, SIZE), 128, np.uint8)])
    grey16 = rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    floats = rng.random((SIZE, SIZE), dtype=np.float32)
    nans = floats.copy()
    nans[3:6, 3:6] = np.nan
    good_png, good_tif = _png(rgb), _tif(grey16)
    return {
        "ok.png": good_png,
        "truncated.png": good_png[: len(good_png) // 2],
        "zero.png": b"",
        "truncated.tif": good_tif[: len(good_tif) // 2],
        "zero.tif": b"",
        "rgba.png": _png(rgba),
        "grey16.png": _png(grey16),
        "float32.tif": _tif(floats),
        "nan.tif": _tif(nans),
        "one_pixel.png": _png(rgb[:1, :1]),
        "bomb.png": _png_bomb(30000, 30000),
        "bomb.tif": _tif_bomb(60000, 60000),
        "text.png": b"this is not an image\n",
        "multipage.tif": _tif(rng.integers(0, 256, (5, SIZE, SIZE), dtype=np.uint8)),
    }


def masks() -> dict[str, bytes]:
    def box(r0: int, r1: int, c0: int, c1: int, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
        mask = np.zeros(shape, np.uint8)
        mask[r0:r1, c0:c1] = 255
        return mask

    three = box(2, 8, 2, 8)
    three[4, 4] = 100
    return {
        "a.png": _png(box(2, 8, 2, 8)),
        "b.png": _png(box(12, 20, 12, 20)),
        "overlaps_a.png": _png(box(6, 12, 6, 12)),
        "other_size.png": _png(box(0, 4, 0, 4, shape=(20, 24))),
        "empty.png": _png(box(0, 0, 0, 0)),
        "three_values.png": _png(three),
        "truncated.png": _png(box(2, 8, 2, 8))[:40],
    }


def main() -> None:
    rng = np.random.default_rng(14)
    for folder, files in (("images", images(rng)), ("masks", masks())):
        (HERE / folder).mkdir(exist_ok=True)
        for name, data in files.items():
            (HERE / folder / name).write_bytes(data)
            print(f"{folder}/{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
