"""Images to predict that are not in a kit dataset: a folder in the DSB layout or of plain image files
(and Zarr / OME-Zarr folders), or one image file or Zarr folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kit.errors import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass(frozen=True)
class InputImage:
    """One image of an input folder: its id (DSB folder name or file stem) and its file."""

    id: str
    path: Path


def input_images(path: str | os.PathLike) -> list[InputImage]:
    """The images of `--input PATH`: one image file or one Zarr folder (`*.zarr`, or any folder holding
    Zarr metadata) is one image, a folder its images (`folder_images`)."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and is_zarr(path)):
        return [InputImage(image_id(path), path)]
    return folder_images(path)


def is_zarr(path: Path) -> bool:
    """Whether `path` is a Zarr array or group (by name, or by its Zarr v2/v3 metadata files)."""
    return path.suffix.lower() == ".zarr" or any(
        (path / name).is_file() for name in (".zgroup", ".zarray", "zarr.json")
    )


def image_id(path: Path) -> str:
    """The id of an image file or Zarr folder: its name without the suffix (and without ".ome" for
    `x.ome.zarr`)."""
    stem = path.stem
    return stem[: -len(".ome")] if path.suffix.lower() == ".zarr" and stem.lower().endswith(".ome") else stem


def folder_images(folder: str | os.PathLike) -> list[InputImage]:
    """The images of `folder`, sorted by id.

    DSB layout (`<id>/images/<id>.png`, as `stage1_test/`) when any sub-folder has an `images/` folder;
    otherwise the folder's own image files (png, tif, tiff, jpg, jpeg) and Zarr folders (`*.zarr`; hidden
    entries skipped), id = `image_id`. Raises `DataError` for a missing folder, no images, or two files with the same id. Files are
    not read here: an unreadable one fails when it is predicted, naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--input {folder}: not a folder")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if any((d / "images").is_dir() for d in subdirs):
        images = []
        for d in subdirs:
            files = _image_files(d / "images") if (d / "images").is_dir() else []
            if len(files) != 1:
                raise DataError(
                    f"{d}/images: expected exactly one image in the DSB layout, found {len(files)}"
                )
            images.append(InputImage(d.name, files[0]))
    else:
        zarrs = [p for p in subdirs if is_zarr(p)]
        images = [InputImage(image_id(p), p) for p in sorted([*_image_files(folder), *zarrs])]
    if not images:
        raise DataError(
            f"no images found in {folder}: expected <id>/images/<id>.png folders, *.zarr folders or "
            f"{', '.join(IMAGE_SUFFIXES)} files"
        )
    seen: dict[str, Path] = {}
    for image in images:
        if image.id in seen:
            raise DataError(
                f"{folder}: two images with id {image.id!r}: {seen[image.id].name} and {image.path.name}"
            )
        seen[image.id] = image.path
    return sorted(images, key=lambda i: i.id)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
