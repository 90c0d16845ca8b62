"""Import a Data Science Bowl 2018 download (folder or zip) into a kit dataset folder.

Accepted inputs: a stage folder (``stage1_train/<id>/images/<id>.png`` + ``<id>/masks/*.png``), a parent
holding stage folders (``stage1_train/``, ``stage1_test/``, or their ``.zip`` files as Kaggle ships them),
or a ``.zip`` of either. Zips are read in memory, never extracted. Inside a parent, a stage folder whose
name contains "train", "val" or "test" gives the split; anything else gets `split`.

Images are stored as they come except for two normalisations, noted per image in the manifest's
``note`` and summarised in dataset.json: an alpha channel is dropped (``alpha-dropped``, or
``alpha-dropped-not-opaque`` when it was not fully opaque), and grey images stored as RGB keep their
three equal channels (``grey-as-rgb``) so that colour and grey images share one 3-channel model input
(`kit.data.normalize.normalize_image`). 16-bit images stay 16-bit; float, signed and 32-bit images, which
PNG cannot hold, are stretched from their own range onto 16 bits (``scaled-to-uint16 from <type> [min,
max]``). Unreadable, oversized, multi-page or NaN-holding files are errors naming the file
(`kit.fileio.decode_image`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data.layout import FileRef, natural_key, sample_from_files, write_dataset
from kit.data.sample import SPLITS, Sample
from kit.errors import DataError
from kit.fileio import decode_image

LabelsCsvReader = Callable[[Path, dict[str, tuple[int, int]]], dict[str, np.ndarray]]
"""(csv path, {id: (H, W)}) → {id: label image}: reads a run-length-encoded labels CSV."""

_SAMPLE_FILE = re.compile(r"^(?:(?P<prefix>.+)/)?(?P<id>[^/]+)/(?P<kind>images|masks)/(?P<file>[^/]*)$")
_SPLIT_WORDS = (("test", "test"), ("val", "validation"), ("train", "train"))

# (path inside the input, name for messages, reader); reader is None for a folder entry (path ends in /)
_Entry = tuple[str, str, Callable[[], bytes] | None]


@dataclass
class _SampleFiles:
    id: str
    split: str
    location: str
    images: list[FileRef] | None = None
    masks: list[FileRef] | None = None
    split_named: bool = False  # the split comes from a stage folder's name, not the default


def import_dsb2018(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "train",
    resolve_overlaps: bool = False,
    labels_csv: str | os.PathLike | None = None,
    labels_csv_reader: LabelsCsvReader | None = None,
    k_folds: int | None = 4,
    seed: int = 0,
) -> Path:
    """Import the DSB2018 data at `path` (folder or zip) as the dataset folder `out`; returns `out`.

    `split` applies to images not inside a train/val/test-named stage folder. Train and validation
    images need masks (a folder without masks/ is an error naming it); test images may lack them. When no
    image has a masks/ folder (and there is no `labels_csv`), the images outside named stage folders are
    imported as the test split, with a remark in dataset.json saying so.
    With `labels_csv` (read by `labels_csv_reader`) the labels come from that CSV instead of masks/: it
    must cover every train/validation image, or every image when only test images are imported (a
    solution CSV); the reader gets exactly those images' sizes. Overlapping masks are an error unless
    `resolve_overlaps`. `k_folds` and `seed` go to `write_dataset`.
    """
    path = Path(path)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if labels_csv is not None and labels_csv_reader is None:
        raise ValueError("labels_csv needs a labels_csv_reader")
    notes = [
        "images keep their bit depth; an alpha channel is dropped (note alpha-dropped, or "
        "alpha-dropped-not-opaque when it was not fully opaque)",
        "grey images stored as RGB keep 3 equal channels (note grey-as-rgb) so colour and grey images "
        "share one 3-channel model input",
    ]
    if resolve_overlaps:
        notes.append(
            "overlapping masks resolved: each contested pixel given to the nucleus with the nearest "
            "centroid (note overlap-pixels-moved=N)"
        )
    remarks = []
    with contextlib.ExitStack() as stack:
        groups = _scan(path, split, stack)
        unnamed = [g for g in groups if not g.split_named]
        if labels_csv is None and unnamed and all(g.masks is None for g in groups):
            for group in unnamed:  # images without any truth: what a test folder is
                group.split = "test"
            remarks.append(
                f"no masks/ folder in {path}: {len(unnamed)} image(s) imported as the test split "
                "(no truth, no folds)"
            )
        labels = None
        if labels_csv is not None:
            labels = _labels_from_csv(Path(labels_csv), groups, labels_csv_reader)
            notes.append(f"labels read from {labels_csv} (masks/ folders ignored)")
        samples = (_load(g, resolve_overlaps, labels) for g in groups)
        return write_dataset(
            samples,
            out,
            name=Path(out).name,
            kind="dsb2018",
            source=str(path),
            notes=notes,
            remarks=remarks,
            k_folds=k_folds,
            seed=seed,
        )


def read_dsb_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The truth of a DSB folder or zip (as `import_dsb2018` accepts): image id → int32 label image
    stacked from its masks/. Every image must have a masks/ folder (an empty one means no nuclei)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    labels: dict[str, np.ndarray] = {}
    with contextlib.ExitStack() as stack:
        for files in _scan(path, "test", stack):
            if files.masks is None:
                raise DataError(f"{files.location}: no masks/ folder, so no truth for image {files.id}")
            if files.id in labels:
                raise DataError(f"{path}: image id {files.id!r} appears twice (last in {files.location})")
            sample = sample_from_files(
                files.id, "test", files.images or [], files.masks, location=files.location
            )
            labels[files.id] = np.asarray(sample.labels, dtype=np.int32)
    if not labels:
        raise DataError(f"{path}: no <id>/images/ + <id>/masks/ folders found (the DSB layout)")
    return labels


def _load(files: _SampleFiles, resolve_overlaps: bool, labels: dict[str, np.ndarray] | None) -> Sample:
    if files.images is None:
        raise DataError(f"{files.location}: no images/ folder (expected images/{files.id}.png)")
    masks = None if labels is not None else files.masks
    sample = sample_from_files(
        files.id,
        files.split,
        files.images,
        masks,
        location=files.location,
        resolve_overlaps=resolve_overlaps,
        require_masks=labels is None and files.split != "test",
    )
    if labels is not None and files.id in labels:
        sample.labels = _checked_labels(labels[files.id], sample.image.shape[:2], files.id)
    sample.image, image_notes = normalise_dsb_image(sample.image)
    sample.note = "; ".join([*image_notes, sample.note] if sample.note else image_notes)
    return sample


def normalise_dsb_image(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Drop an alpha channel and detect grey-as-RGB; returns (image, note items)."""
    notes = []
    if image.ndim == 3 and image.shape[2] in (2, 4):
        full = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
        opaque = bool((image[:, :, -1] == full).all())
        notes.append("alpha-dropped" if opaque else "alpha-dropped-not-opaque")
        image = image[:, :, 0] if image.shape[2] == 2 else image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 3 and (image == image[:, :, :1]).all():
        notes.append("grey-as-rgb")
    if image.dtype not in (np.uint8, np.uint16):
        image, note = _to_uint16(image)
        notes.append(note)
    return np.ascontiguousarray(image), notes


def _to_uint16(image: np.ndarray) -> tuple[np.ndarray, str]:
    """A float, signed or 32-bit image (PNG holds none of them) stretched linearly from its own
    [min, max] onto 0..65535; returns (image, note naming the original type and range)."""
    low, high = float(image.min()), float(image.max())
    scale = 65535.0 / (high - low) if high > low else 0.0
    out = np.rint((image.astype(np.float64) - low) * scale).astype(np.uint16)
    return out, f"scaled-to-uint16 from {image.dtype} [{low:.6g}, {high:.6g}]"


def _checked_labels(labels: np.ndarray, shape: tuple[int, int], image_id: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise DataError(f"labels CSV: image {image_id} decodes to {labels.shape} but the image is {shape}")
    return labels.astype(np.int32)


def _labels_from_csv(
    csv: Path, groups: list[_SampleFiles], reader: LabelsCsvReader | None
) -> dict[str, np.ndarray]:
    """Labels of the train/validation images from `csv` (of the test images if there are no others)."""
    assert reader is not None
    wanted = [g for g in groups if g.split != "test"] or groups
    sizes = {g.id: decode_image(g.images[0][1](), g.images[0][0]).shape[:2] for g in wanted if g.images}
    labels = reader(csv, sizes)
    missing = [g.id for g in wanted if g.id not in labels]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{csv}: no rows for {len(missing)} image(s): {shown}")
    return labels


# --------------------------------------------------------------------------------------------------
# finding the sample folders in a folder or zip tree


def _scan(path: Path, split: str, stack: contextlib.ExitStack) -> list[_SampleFiles]:
    """Group the files under `path` into sample folders, in a stable (natural) order."""
    if path.is_dir():
        entries = _dir_entries(path, stack)
    else:
        entries = _zip_entries(_open_zip(str(path), lambda: path, stack), "", str(path), stack)
    groups: dict[tuple[str, str], _SampleFiles] = {}
    for rel, name, read in entries:
        match = _SAMPLE_FILE.match(rel)
        if not match:
            continue
        prefix = match["prefix"] or ""
        group = groups.get((prefix, match["id"]))
        if group is None:
            location = name[: name.rindex(f"/{match['kind']}/")]
            group = _SampleFiles(
                id=match["id"],
                split=_split_of(prefix, split),
                location=location,
                split_named=_split_of(prefix, "") != "",
            )
            groups[prefix, match["id"]] = group
        files = group.images if match["kind"] == "images" else group.masks
        if files is None:
            files = []
            if match["kind"] == "images":
                group.images = files
            else:
                group.masks = files
        if read is not None:
            files.append((name, read))
    ordered = sorted(groups.items(), key=lambda kv: (natural_key(kv[0][0]), natural_key(kv[0][1])))
    return [g for _, g in ordered]


def _split_of(prefix: str, default: str) -> str:
    last = prefix.rsplit("/", 1)[-1].lower()
    return next((split for word, split in _SPLIT_WORDS if word in last), default)


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/") if part)


def _dir_entries(root: Path, stack: contextlib.ExitStack) -> Iterator[_Entry]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        base = Path(dirpath)
        rel = base.relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        yield rel, f"{base}/", None
        for file in sorted(f for f in filenames if not _hidden(f)):
            p = base / file
            if file.lower().endswith(".zip"):
                yield from _zip_entries(
                    _open_zip(str(p), lambda p=p: p, stack), rel + file[:-4], str(p), stack
                )
            else:
                yield rel + file, str(p), p.read_bytes


def _zip_entries(
    zf: zipfile.ZipFile, prefix: str, shown: str, stack: contextlib.ExitStack
) -> Iterator[_Entry]:
    """Entries of a zip under `prefix`; a zip inside it (Kaggle's stage1_train.zip) is read in memory."""
    for info in zf.infolist():
        if _hidden(info.filename):
            continue
        rel = f"{prefix}/{info.filename}" if prefix else info.filename
        name = f"{shown}:{info.filename}"
        if info.is_dir():
            yield rel, name, None
        elif info.filename.lower().endswith(".zip"):
            inner = _open_zip(name, lambda info=info: io.BytesIO(zf.read(info)), stack)
            yield from _zip_entries(inner, rel[:-4], name, stack)
        else:
            yield rel, name, functools.partial(zf.read, info)


def _open_zip(
    name: str, open_file: Callable[[], Path | io.BytesIO], stack: contextlib.ExitStack
) -> zipfile.ZipFile:
    try:
        return stack.enter_context(zipfile.ZipFile(open_file()))
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{name}: not a readable zip file ({exc})") from None
