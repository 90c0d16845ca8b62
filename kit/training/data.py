"""Training samples: fold split, random crops → augmentation → body/border/background targets → tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kit.augment import Augmentation
from kit.data.dataset import NucleiDataset
from kit.data.torch_dataset import CropDataset
from kit.errors import DataError
from kit.targets import border_weight_map, make_targets


def fold_ids(dataset: NucleiDataset, fold: int, splits: Sequence[str] = ("train",)) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of `fold`: validation = the fold's images, training = the rest.

    Only images of `splits` with truth take part. Raises DataError when folds were never assigned or the
    fold is empty.
    """
    rows = dataset.manifest[dataset.manifest["split"].isin(list(splits)) & dataset.manifest["n_nuclei"].notna()]
    if rows.empty:
        raise DataError(f"{dataset.root}: no annotated images in split(s) {', '.join(splits)}")
    folds = sorted(int(f) for f in rows["fold"].unique() if f >= 0)
    if not folds:
        raise DataError(f"{dataset.root}: no folds assigned; run `kit data folds --data {dataset.root} --k 4`")
    if fold not in folds:
        raise DataError(f"{dataset.root}: fold {fold} does not exist (folds: {', '.join(map(str, folds))})")
    val = rows.loc[rows["fold"] == fold, "id"].tolist()
    train = rows.loc[rows["fold"] != fold, "id"].tolist()
    if not train:
        raise DataError(f"{dataset.root}: fold {fold} leaves no training images")
    return train, val


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×C → float32 (C, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class TrainingCrops(Dataset):
    """Items ``{"image": (C,S,S) float, "targets": (K,S,S) float, "weights": (S,S) float, "id"}``.

    Wraps a `CropDataset`: each random crop is augmented (`augmentation`, may be None), then turned into
    targets with `make_targets`; `border_weight` > 1 weights touching-border pixels in the loss.
    """

    def __init__(
        self,
        crops: CropDataset,
        augmentation: Augmentation | None,
        *,
        include_mask: bool = False,
        min_radius: int = 1,
        max_radius: int = 3,
        border_weight: float = 1.0,
    ) -> None:
        self.crops = crops
        self.augmentation = augmentation
        self.target_kwargs = {"min_radius": min_radius, "max_radius": max_radius}
        self.include_mask = include_mask
        self.border_weight = border_weight

    def __len__(self) -> int:
        return len(self.crops)

    def set_epoch(self, epoch: int) -> None:
        """Fresh crops and augmentations for `epoch` (reproducible from the seed)."""
        self.crops.set_epoch(epoch)
        if self.augmentation is not None:
            self.augmentation.reseed(self.crops.seed * 100_003 + epoch)

    def __getitem__(self, index: int) -> dict:
        item = self.crops[index]
        image, labels = item["image"], item["labels"]
        if self.augmentation is not None:
            out = self.augmentation(image=image, labels=labels)
            image, labels = out["image"], out["labels"]
        targets = make_targets(labels, include_mask=self.include_mask, **self.target_kwargs)
        weights = (
            border_weight_map(labels, w_border=self.border_weight, **self.target_kwargs)
            if self.border_weight != 1.0
            else np.ones(labels.shape, dtype=np.float32)
        )
        return {
            "image": image_to_tensor(image),
            "targets": torch.from_numpy(targets),
            "weights": torch.from_numpy(weights),
            "id": item["id"],
        }


def worker_init(worker_id: int) -> None:
    """DataLoader worker seeding: albumentations would otherwise give every worker the same stream."""
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    if isinstance(dataset, TrainingCrops) and dataset.augmentation is not None:
        dataset.augmentation.reseed(info.seed % 2**31)
