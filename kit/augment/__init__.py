"""Augmentation: albumentations pipelines built from config, default recipes, copy-paste of nuclei."""

from kit.augment.copy_paste import CopyPasteNuclei, copy_paste_nuclei
from kit.augment.pipeline import (
    DSB_STRONG,
    LIGHT,
    Augmentation,
    augmentation_grid,
    build_augmentation,
    known_transforms,
)

__all__ = [
    "DSB_STRONG",
    "LIGHT",
    "Augmentation",
    "CopyPasteNuclei",
    "augmentation_grid",
    "build_augmentation",
    "copy_paste_nuclei",
    "known_transforms",
]
