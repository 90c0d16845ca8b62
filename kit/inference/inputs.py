"""Images to predict that are not in a kit dataset: a folder in the DSB layout or of plain image files."""

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


def folder_images(folder: str | os.PathLike) -> list[InputImage]:
    """The images of `folder`, sorted by id.

    DSB layout (`<id>/images/<id>.png`, as `stage1_test/`) when any sub-folder has an `images/` folder;
    otherwise the folder's own image files (png, tif, tiff, jpg, jpeg; hidden files skipped), id = file
    stem. Raises `DataError` for a missing folder, no images, or two files with the same id. Files are
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
        images = [InputImage(p.stem, p) for p in _image_files(folder)]
    if not images:
        raise DataError(
            f"no images found in {folder}: expected <id>/images/<id>.png folders or {', '.join(IMAGE_SUFFIXES)} files"
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
