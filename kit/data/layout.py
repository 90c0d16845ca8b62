"""The on-disk DSB layout: masks → label image, one sample folder, and a whole dataset folder.

A dataset folder looks like::

    <out>/manifest.csv                       see `kit.data.manifest`
    <out>/dataset.json                       name, kind, source, created, notes, counts per split
    <out>/<split>/<id>/images/<id>.png       uint8 or uint16, H×W or H×W×C, as imported
    <out>/<split>/<id>/masks/<id>_<k>.png    one binary uint8 (0/255) PNG per nucleus, k = 1..N

A missing masks/ folder means the truth is unknown; an empty one means "no nuclei". Mask ``k`` is label
``k`` of the label image, so reading a written sample gives back exactly the label image written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from kit.data.manifest import ID_PATTERN, build_manifest, write_manifest
from kit.data.sample import SPLITS, Sample
from kit.errors import DataError
from kit.fileio import atomic_write_text, decode_image, read_image, sha256_file, write_png

log = logging.getLogger(__name__)

FileRef = tuple[str, Callable[[], bytes]]
"""A named file whose bytes are read on demand: (name shown in errors, reader)."""

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``a_2`` before ``a_10``."""
    return [int(t) if t.isdigit() else t for t in _DIGITS.split(name)]


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def mask_files(sample_dir: str | os.PathLike) -> list[Path]:
    """The mask files of a sample folder in label order (natural sort), or [] without masks/."""
    mask_dir = Path(sample_dir) / "masks"
    return _visible_files(mask_dir) if mask_dir.is_dir() else []


# --------------------------------------------------------------------------------------------------
# masks → label image


def masks_to_labels(
    masks: Iterable[tuple[str, np.ndarray]], shape: Sequence[int], *, resolve_overlaps: bool = False
) -> tuple[np.ndarray, int]:
    """Stack binary instance masks into an int32 label image; returns (labels, pixels moved).

    `masks` are (name, array) pairs; the name is used in error messages. Mask ``i`` becomes label ``i``
    (1-based) in the given order, empty masks are skipped (their count is logged). A mask may be bool,
    0/1, 0/255 (any two values; the non-zero one is foreground) or RGB(A) with equal colour channels.
    Masks must not overlap unless `resolve_overlaps` is set: then every contested pixel goes to the mask
    with the nearest centroid (Vuola et al. 2019) and "pixels moved" counts the pixel memberships
    taken away (a pixel covered by three masks counts 2). Raises `DataError` naming the file(s) for a
    size mismatch, a non-binary mask and (without `resolve_overlaps`) an overlap.
    """
    labels, moved, empty = _labels_from_masks(masks, shape, resolve_overlaps)
    if empty:
        log.warning("skipped %d empty mask(s): %s", len(empty), ", ".join(empty[:3]))
    return labels, moved


def _labels_from_masks(
    masks: Iterable[tuple[str, np.ndarray]], shape: Sequence[int], resolve_overlaps: bool
) -> tuple[np.ndarray, int, list[str]]:
    """`masks_to_labels` plus the names of the empty masks."""
    h, w = int(shape[0]), int(shape[1])
    flat = np.zeros(h * w, dtype=np.int32)
    names: list[str] = []
    pixels: list[np.ndarray] = []
    empty: list[str] = []
    contested = False
    for name, mask in masks:
        idx = _foreground(mask, name, (h, w))
        if idx.size == 0:
            empty.append(name)
            continue
        previous = flat[idx]
        taken = previous[previous > 0]
        if taken.size:
            if not resolve_overlaps:
                other = int(np.bincount(taken).argmax())
                n_px = int((taken == other).sum())
                raise DataError(
                    f"{name} overlaps {names[other - 1]} by {n_px} pixel(s); masks must not overlap "
                    "(pass --resolve-overlaps to give each contested pixel to the nucleus with the "
                    "nearest centroid)"
                )
            contested = True
        names.append(name)
        flat[idx] = len(names)
        if resolve_overlaps:
            pixels.append(idx)
    moved = _resolve_overlaps(flat, pixels, w) if contested else 0
    return _sequential(flat).reshape(h, w), moved, empty


def _foreground(mask: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Flat indices of the foreground pixels of one binary mask, after checking size and values."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] in (3, 4):
        colour = m[:, :, :3]
        if not (colour == colour[:, :, :1]).all():
            raise DataError(
                f"{name}: colour mask with differing channels; expected a black/white binary mask"
            )
        m = m[:, :, 0]
    elif m.ndim == 3 and m.shape[2] in (1, 2):  # grey (+ alpha)
        m = m[:, :, 0]
    if m.ndim != 2:
        raise DataError(f"{name}: expected a 2-D binary mask, got an array of shape {m.shape}")
    if m.shape != shape:
        raise DataError(
            f"{name}: mask size {m.shape[0]}×{m.shape[1]} (H×W) differs from the image size {shape[0]}×{shape[1]}"
        )
    flat = m.reshape(-1)
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return idx
    values = flat[idx]
    if (values != values[0]).any():
        distinct = np.unique(flat)
        if idx.size == flat.size and distinct.size == 2:  # no zero pixel: the smaller value is background
            return np.flatnonzero(flat == distinct[1])
        shown = ", ".join(str(v) for v in distinct[:6]) + (", ..." if distinct.size > 6 else "")
        raise DataError(
            f"{name}: not a binary mask ({distinct.size} distinct values: {shown}); "
            "expected 0 and one foreground value such as 1 or 255"
        )
    return idx


def _resolve_overlaps(flat: np.ndarray, pixels: list[np.ndarray], width: int) -> int:
    """Give each pixel covered by several masks to the mask with the nearest centroid (in place)."""
    cover = np.zeros(flat.size, dtype=np.int32)
    for idx in pixels:
        cover[idx] += 1
    multi = cover > 1
    best = np.full(flat.size, np.inf)
    for label, idx in enumerate(pixels, start=1):
        shared = idx[multi[idx]]
        if shared.size == 0:
            continue
        rows, cols = np.divmod(idx, width)
        srows, scols = np.divmod(shared, width)
        dist = (srows - rows.mean()) ** 2 + (scols - cols.mean()) ** 2
        closer = dist < best[shared]  # strict: on a tie the earlier mask keeps the pixel
        best[shared[closer]] = dist[closer]
        flat[shared[closer]] = label
    return int((cover[multi] - 1).sum())


def _sequential(flat: np.ndarray) -> np.ndarray:
    """Renumber labels 1..N keeping their order (a mask can lose all its pixels to its neighbours)."""
    present = np.bincount(flat)
    present[0] = 0
    if present.size == 1 or present[1:].all():
        return flat
    lut = np.cumsum(present > 0, dtype=np.int32) * (present > 0)
    return lut[flat].astype(np.int32)


# --------------------------------------------------------------------------------------------------
# one sample folder


def sample_from_files(
    sample_id: str,
    split: str,
    images: Sequence[FileRef],
    masks: Sequence[FileRef] | None,
    *,
    location: str,
    resolve_overlaps: bool = False,
    require_masks: bool = False,
) -> Sample:
    """Build a `Sample` from the files of one sample folder (on disk or inside a zip).

    `images` must hold exactly one file; `masks` None means there is no masks/ folder (truth unknown,
    or an error with `require_masks`). `location` names the folder in error messages.
    """
    if len(images) != 1:
        found = ", ".join(name.rsplit("/", 1)[-1] for name, _ in images) or "none"
        raise DataError(
            f"{location}: expected exactly one image file in images/, found {len(images)} ({found})"
        )
    image = _decode(*images[0])
    labels, note = None, ""
    if masks is not None:
        decoded = ((name, _decode(name, read)) for name, read in masks)
        labels, moved, empty = _labels_from_masks(decoded, image.shape[:2], resolve_overlaps)
        items = []
        if moved:
            items.append(f"overlap-pixels-moved={moved}")
        if empty:
            items.append(f"empty-masks-skipped={len(empty)}")
        note = "; ".join(items)
    elif require_masks:
        raise DataError(
            f"{location}: no masks/ folder; a {split} image needs one binary PNG per nucleus in masks/ "
            "(unannotated images belong in the test split)"
        )
    return Sample(id=sample_id, image=image, labels=labels, split=split, source=location, note=note)


def _decode(name: str, read: Callable[[], bytes]) -> np.ndarray:
    try:
        data = read()
    except (OSError, zipfile.BadZipFile, zlib.error) as exc:  # a file on disk or a member of a zip
        raise DataError(f"{name}: cannot read file ({getattr(exc, 'strerror', None) or exc})") from None
    return decode_image(data, name)


def read_sample_dir(
    sample_dir: str | os.PathLike,
    split: str,
    *,
    resolve_overlaps: bool = False,
    require_masks: bool = False,
) -> Sample:
    """Read one DSB-style sample folder ``<id>/images/<one image>`` (+ ``<id>/masks/*.png``).

    The id is the folder name; the image keeps its dtype and channels. Masks are read in natural name
    order (so ``<id>_2`` comes before ``<id>_10``) and stacked with `masks_to_labels`; without a masks/
    folder `labels` is None (or `DataError` if `require_masks`). The note records overlap pixels moved
    and empty masks skipped.
    """
    sample_dir = Path(sample_dir)
    image_dir = sample_dir / "images"
    if not image_dir.is_dir():
        raise DataError(f"{sample_dir}: no images/ folder (expected images/{sample_dir.name}.png)")
    images = [(str(p), p.read_bytes) for p in _visible_files(image_dir)]
    masks = None
    if (sample_dir / "masks").is_dir():
        masks = [(str(p), p.read_bytes) for p in mask_files(sample_dir)]
    return sample_from_files(
        sample_dir.name,
        split,
        images,
        masks,
        location=str(sample_dir),
        resolve_overlaps=resolve_overlaps,
        require_masks=require_masks,
    )


def write_sample_dir(split_dir: str | os.PathLike, sample: Sample) -> Path:
    """Write `sample` as ``<split_dir>/<id>/images/<id>.png`` and ``masks/<id>_<k>.png``; returns the folder.

    Labels are renumbered 1..N in increasing label order and mask ``k`` (0/255 uint8) holds label ``k``.
    Without labels no masks/ folder is written; with labels but no nuclei masks/ is empty.
    """
    sample_dir = Path(split_dir) / sample.id
    image = np.asarray(sample.image)
    if image.ndim not in (2, 3):
        raise DataError(f"{sample.id}: image must be H×W or H×W×C, got shape {image.shape}")
    write_png(sample_dir / "images" / f"{sample.id}.png", image)
    if sample.labels is None:
        return sample_dir
    labels = np.asarray(sample.labels)
    if labels.shape != image.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{sample.id}: labels must be an integer H×W array matching the image {image.shape[:2]}, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and labels.min() < 0:
        raise DataError(f"{sample.id}: labels must be >= 0 (0 = background)")
    mask_dir = sample_dir / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    ids, inverse = np.unique(labels, return_inverse=True)
    sequential = inverse.reshape(labels.shape) + (1 if ids[0] > 0 else 0)  # 1..N in label order
    for k, box in enumerate(ndi.find_objects(sequential), start=1):
        mask = np.zeros(labels.shape, dtype=np.uint8)
        mask[box] = np.where(sequential[box] == k, 255, 0)
        write_png(mask_dir / f"{sample.id}_{k}.png", mask)
    return sample_dir


# --------------------------------------------------------------------------------------------------
# a whole dataset


def write_dataset(
    samples: Iterable[Sample],
    out: str | os.PathLike,
    *,
    name: str,
    kind: str,
    source: str,
    notes: Sequence[str] = (),
    remarks: Sequence[str] = (),
    k_folds: int | None = 4,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write `samples` as a dataset folder at `out` (see the module docstring); returns `out`.

    Everything is written into a temporary sibling ``.<out name>.tmp-<pid>-*`` that replaces `out` only
    after success, so a failure (even a SIGKILL) leaves `out` as it was; siblings left by a killed writer
    are removed by the next one (`remove_abandoned`). An existing `out` is replaced only if it is a kit
    dataset (has manifest.csv) or empty. With `k_folds`, image styles are clustered and the train split
    gets style-stratified folds (`kit.data.folds.assign_styles_and_folds`; fewer when there are fewer
    train images). `notes` go to dataset.json, together with a summary of the per-image notes; `remarks`
    (one line each, for the user to read now) too, with a line added when fewer folds were made. Raises `DataError` for no samples ("no images found
    in <source>"), duplicate or unsafe ids, unknown splits and unwritable images.
    """
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        rows = _write_samples(samples, tmp, name, progress)
        if not rows:
            raise DataError(f"no images found in {source}")
        manifest = build_manifest(rows)
        remarks = list(remarks)
        made = None
        if k_folds is not None:
            from kit.data.folds import assign_styles_and_folds, fold_count, fold_remark

            paths = {r["id"]: tmp / r["split"] / r["id"] / "images" / f"{r['id']}.png" for r in rows}
            manifest = assign_styles_and_folds(manifest, lambda i: read_image(paths[i]), k=k_folds, seed=seed)
            made = fold_count(manifest)
            n_train = int((manifest["split"] == "train").sum())
            remark = fold_remark(n_train, k_folds, made) if n_train else None
            remarks += [remark] if remark else []
        write_manifest(manifest, tmp / "manifest.csv")
        info = _dataset_info(rows, name=name, kind=kind, source=source, notes=notes, k_folds=made, seed=seed)
        info["k_folds_requested"] = k_folds
        info["remarks"] = remarks
        atomic_write_text(tmp / "dataset.json", json.dumps(info, indent=2) + "\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def remove_abandoned(out: Path) -> list[Path]:
    """Clean up after a writer of `out` that was killed mid-write: its temporary siblings
    (``.<name>.tmp-<pid>-*``, ``.<name>.old-<pid>-*`` of a process that no longer runs) are removed,
    except that a previous dataset moved aside just before the kill is put back when `out` is missing.
    Returns the folders removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)-")
    siblings = sorted(out.parent.iterdir()) if out.parent.is_dir() else []
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if not match or not sibling.is_dir() or _pid_alive(int(match[2])):
            continue
        if match[1] == "old" and not out.exists():
            os.replace(sibling, out)  # killed between the two renames of `_swap_into_place`
            log.warning("restored %s from %s, left by an interrupted write", out, sibling.name)
            continue
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    if removed:
        log.info("removed %d folder(s) left by an interrupted write of %s", len(removed), out)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output path")
    if not (out / "manifest.csv").is_file() and any(out.iterdir()):
        raise DataError(
            f"{out}: folder exists and is not a kit dataset (no manifest.csv); refusing to replace it"
        )


def _write_samples(samples: Iterable[Sample], root: Path, name: str, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    total = len(samples) if isinstance(samples, Sequence) else None
    rows: list[dict] = []
    seen: dict[str, str] = {}
    for sample in tqdm(
        samples,
        total=total,
        desc=f"writing {name}",
        unit="image",
        disable=None if progress else True,
        leave=False,
    ):
        if sample.split not in SPLITS:
            raise DataError(
                f"{sample.source or sample.id}: unknown split {sample.split!r}; expected one of {', '.join(SPLITS)}"
            )
        if not ID_PATTERN.match(sample.id):
            raise DataError(
                f"{sample.source or sample.id}: id {sample.id!r} is not a safe folder name (use letters, digits, '.', '_', '-')"
            )
        if sample.id in seen:
            raise DataError(f"duplicate image id {sample.id!r}: {seen[sample.id]} and {sample.source}")
        seen[sample.id] = sample.source
        rows.append(_manifest_row(sample, write_sample_dir(root / sample.split, sample)))
    return rows


def _manifest_row(sample: Sample, sample_dir: Path) -> dict:
    image = np.asarray(sample.image)
    row = {
        "id": sample.id,
        "split": sample.split,
        "height": image.shape[0],
        "width": image.shape[1],
        "channels": 1 if image.ndim == 2 else image.shape[2],
        "dtype": str(image.dtype),
        "n_nuclei": None,
        "style": -1,
        "fold": -1,
        "sha256_image": sha256_file(sample_dir / "images" / f"{sample.id}.png"),
        "sha256_masks": "",
        "source": sample.source,
        "note": sample.note,
        "label_source": sample.label_source,
        "label_score": sample.label_score,
    }
    if sample.labels is not None:
        digest = hashlib.sha256()
        masks = mask_files(sample_dir)
        for path in masks:
            digest.update(path.read_bytes())
        row["n_nuclei"] = len(masks)
        row["sha256_masks"] = digest.hexdigest()
    return row


def _dataset_info(
    rows: list[dict],
    *,
    name: str,
    kind: str,
    source: str,
    notes: Sequence[str],
    k_folds: int | None,
    seed: int,
) -> dict:
    counts = {}
    for split in SPLITS:
        in_split = [r for r in rows if r["split"] == split]
        annotated = [r for r in in_split if r["n_nuclei"] is not None]
        counts[split] = {
            "images": len(in_split),
            "annotated": len(annotated),
            "nuclei": sum(r["n_nuclei"] for r in annotated),
        }
    return {
        "name": name,
        "kind": kind,
        "source": source,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notes": list(notes),
        "image_notes": summarise_notes(r["note"] for r in rows),
        "counts": counts,
        "k_folds": k_folds,
        "seed": seed,
    }


def summarise_notes(notes: Iterable[str]) -> dict[str, dict[str, int]]:
    """Count per-image note items (``"a; b=3"``): images having each item, and totals of ``key=int`` items."""
    summary: dict[str, dict[str, int]] = {}
    for note in notes:
        for item in filter(None, (part.strip() for part in note.split(";"))):
            key, _, value = item.partition("=")
            entry = summary.setdefault(key, {"images": 0})
            entry["images"] += 1
            if value.strip().lstrip("-").isdigit():
                entry["total"] = entry.get("total", 0) + int(value)
    return summary


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`, replacing an existing `out` only once the new folder is complete."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
