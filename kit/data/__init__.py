"""Data: the canonical `Sample`, the on-disk dataset layout, importers and datasets.

`CropDataset` and `FullImageDataset` (which need torch) are imported on first access, so that importing
`kit.data` stays light.
"""

from __future__ import annotations

from kit.data.dataset import NucleiDataset
from kit.data.dsb2018 import import_dsb2018
from kit.data.layout import masks_to_labels, read_sample_dir, write_dataset, write_sample_dir
from kit.data.manifest import MANIFEST_COLUMNS, build_manifest, read_manifest, write_manifest
from kit.data.mnfinder import decode_rgba_mask, fetch_mnfinder_wheel, import_mnfinder
from kit.data.normalize import normalize_image
from kit.data.sample import SPLITS, Sample

__all__ = [
    "MANIFEST_COLUMNS",
    "SPLITS",
    "CropDataset",
    "FullImageDataset",
    "NucleiDataset",
    "Sample",
    "build_manifest",
    "decode_rgba_mask",
    "fetch_mnfinder_wheel",
    "import_dsb2018",
    "import_mnfinder",
    "masks_to_labels",
    "normalize_image",
    "read_manifest",
    "read_sample_dir",
    "write_dataset",
    "write_manifest",
    "write_sample_dir",
]

_TORCH_DATASETS = ("CropDataset", "FullImageDataset")


def __getattr__(name: str):
    if name in _TORCH_DATASETS:
        from kit.data import torch_dataset

        return getattr(torch_dataset, name)
    raise AttributeError(f"module 'kit.data' has no attribute {name!r}")
