"""Training samples: fold split, random crops → augmentation → targets → tensors.

Semantic models train on body/border/background maps (`TrainingCrops`), instance models (Mask R-CNN) on
boxes and masks (`InstanceCrops`, batched by `collate_instances`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kit.augment import Augmentation, build_augmentation
from kit.config import ExperimentConfig
from kit.data.dataset import NucleiDataset
from kit.data.normalize import image_to_tensor, normalize_image
from kit.data.torch_dataset import CropDataset
from kit.errors import DataError
from kit.models import task_of
from kit.style.references import StyleReferences
from kit.targets import border_weight_map, instance_targets, make_targets


def fold_ids(
    dataset: NucleiDataset, fold: int, splits: Sequence[str] = ("train",)
) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of `fold`: validation = the fold's images, training = the rest.

    Only images of `splits` with truth take part. Raises DataError when folds were never assigned or the
    fold is empty.
    """
    rows = dataset.manifest[
        dataset.manifest["split"].isin(list(splits)) & dataset.manifest["n_nuclei"].notna()
    ]
    if rows.empty:
        raise DataError(f"{dataset.root}: no annotated images in split(s) {', '.join(splits)}")
    folds = sorted(int(f) for f in rows["fold"].unique() if f >= 0)
    if not folds:
        raise DataError(
            f"{dataset.root}: no folds assigned; run `kit data folds --data {dataset.root} --k 4`"
        )
    if fold not in folds:
        raise DataError(f"{dataset.root}: fold {fold} does not exist (folds: {', '.join(map(str, folds))})")
    val = rows.loc[rows["fold"] == fold, "id"].tolist()
    train = rows.loc[rows["fold"] != fold, "id"].tolist()
    if not train:
        raise DataError(f"{dataset.root}: fold {fold} leaves no training images")
    return train, val


class AugmentedCrops(Dataset):
    """What every training dataset shares: random crops (a `CropDataset` or `MixedCrops`), each augmented
    (`augmentation`, may be None), reproducible per epoch from the crops' seed."""

    def __init__(self, crops: CropDataset, augmentation: Augmentation | None) -> None:
        self.crops = crops
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.crops)

    def set_epoch(self, epoch: int) -> None:
        """Fresh crops and augmentations for `epoch` (reproducible from the seed)."""
        self.crops.set_epoch(epoch)
        if self.augmentation is not None:
            self.augmentation.reseed(self.crops.seed * 100_003 + epoch)

    def augmented(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(uint8 S×S×C image, int32 S×S labels, image id) of crop `index`, augmented."""
        item = self.crops[index]
        image, labels = item["image"], item["labels"]
        if self.augmentation is not None:
            out = self.augmentation(image=image, labels=labels)
            image, labels = out["image"], out["labels"]
        return image, labels, item["id"]


class TrainingCrops(AugmentedCrops):
    """Items ``{"image": (C,S,S) float, "targets": (K,S,S) float, "weights": (S,S) float, "id"}``.

    Each augmented crop is turned into targets with `make_targets`; `border_weight` > 1 weights
    touching-border pixels in the loss.
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
        super().__init__(crops, augmentation)
        self.target_kwargs = {"min_radius": min_radius, "max_radius": max_radius}
        self.include_mask = include_mask
        self.border_weight = border_weight

    def __getitem__(self, index: int) -> dict:
        image, labels, image_id = self.augmented(index)
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
            "id": image_id,
        }


class InstanceCrops(AugmentedCrops):
    """Items ``{"image": (C,S,S) float, "target": {"boxes", "labels", "masks"}, "id"}`` for Mask R-CNN.

    The target of each augmented crop is `kit.targets.instance_targets` of its labels (instances under
    `min_area` pixels left out) as tensors: boxes float32 (N, 4), labels int64 (N,) of 1 (nucleus), masks
    uint8 (N, S, S); a crop without nuclei gives N = 0. Batch with `collate_instances`.
    """

    def __init__(self, crops: CropDataset, augmentation: Augmentation | None, *, min_area: int = 4) -> None:
        super().__init__(crops, augmentation)
        self.min_area = min_area

    def __getitem__(self, index: int) -> dict:
        image, labels, image_id = self.augmented(index)
        boxes, masks = instance_targets(labels, min_area=self.min_area)
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "masks": torch.from_numpy(masks),
        }
        return {"image": image_to_tensor(image), "target": target, "id": image_id}


def collate_instances(batch: list[dict]) -> dict[str, list]:
    """`InstanceCrops` items → {"image": [...], "target": [...], "id": [...]}: lists, since the number of
    instances differs between crops (torchvision's detection models take lists)."""
    return {key: [item[key] for item in batch] for key in ("image", "target", "id")}


def worker_init(worker_id: int) -> None:
    """DataLoader worker seeding: albumentations would otherwise give every worker the same stream."""
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    if isinstance(dataset, AugmentedCrops) and dataset.augmentation is not None:
        dataset.augmentation.reseed(info.seed % 2**31)


class MixedCrops(Dataset):
    """Crops from several `CropDataset`s in fixed proportions; items as in `CropDataset`.

    `sources` are (crops, weight) pairs, the first being the main dataset: an epoch keeps the main
    dataset's length n, and source j supplies ``n * w_j / sum(w)`` of its items (rounded by largest
    remainder), at positions shuffled per epoch from (`seed`, epoch). Item i taken from source j is
    that source's item ``i mod len(source)``, so every source keeps its own crop reproducibility.
    """

    def __init__(self, sources: Sequence[tuple[CropDataset, float]], *, seed: int = 0) -> None:
        if not sources or any(weight <= 0 for _, weight in sources):
            raise ValueError("MixedCrops needs at least one source, each with a weight > 0")
        self.sources = [crops for crops, _ in sources]
        weights = np.array([weight for _, weight in sources], dtype=np.float64)
        exact = len(self.sources[0]) * weights / weights.sum()
        counts = np.floor(exact).astype(np.int64)
        counts[np.argsort(counts - exact, kind="stable")[: len(self) - counts.sum()]] += 1
        self.counts = counts
        self.seed = seed
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.sources[0])

    def set_epoch(self, epoch: int) -> None:
        """Fresh crops in every source and a fresh order of sources for `epoch`."""
        for crops in self.sources:
            crops.set_epoch(epoch)
        order = np.repeat(np.arange(len(self.sources)), self.counts)
        self._source_of = np.random.default_rng([self.seed, epoch]).permutation(order)

    def __getitem__(self, index: int) -> dict:
        crops = self.sources[int(self._source_of[index])]
        return crops[index % len(crops)]


def extra_crop_sources(
    extra: Sequence[tuple[str, float]], *, crop_size: int, channels: int, length: int, seed: int
) -> list[tuple[CropDataset, float]]:
    """(crops, weight) for each extra dataset (root, weight): crops of its annotated train images, `length`
    per epoch. Extra datasets only ever add training crops; they never take part in validation."""
    sources = []
    for k, (root, weight) in enumerate(extra):
        ids = extra_train_ids(root, k)
        crops = CropDataset(
            NucleiDataset(root),
            crop_size,
            ids=ids,
            channels=channels,
            samples_per_epoch=length,
            seed=seed + 1 + k,
        )
        sources.append((crops, weight))
    return sources


def extra_train_ids(root: str | Path, k: int) -> list[str]:
    """The annotated train images of extra dataset `k` (`data.extra[k].root`); DataError when it is not a
    kit dataset or has none."""
    if not (Path(root) / "manifest.csv").is_file():
        raise DataError(f"data.extra[{k}].root '{root}' is not a kit dataset (no manifest.csv)")
    manifest = NucleiDataset(root).manifest
    ids = manifest.loc[(manifest["split"] == "train") & manifest["n_nuclei"].notna(), "id"].tolist()
    if not ids:
        raise DataError(f"data.extra[{k}].root '{root}' has no annotated train image")
    return ids


ValImage = tuple[str, np.ndarray, np.ndarray]  # id, normalised uint8 image, labels


@dataclass
class FoldData:
    """What one fold trains and validates on (`fold_data`)."""

    train_ids: list[str]
    val_ids: list[str]
    crops: CropDataset | MixedCrops
    augmentation: Augmentation | None
    train_set: AugmentedCrops
    val_set: TrainingCrops | None  # validation crops for val_loss (semantic models only)
    val_images: list[ValImage]  # whole validation images for val mAP


def fold_data(cfg: ExperimentConfig, dataset: NucleiDataset, fold: int) -> FoldData:
    """The training crops (augmented, with `data.extra` mixed in), validation crops and whole validation
    images of `fold`, as `cfg` describes, seeded from `training.seed` and the fold."""
    train_ids, val_ids = fold_ids(dataset, fold, cfg.data.train_splits)
    seed, channels, size = cfg.training.seed, cfg.data.channels, cfg.data.crop_size
    augmentation = (
        build_augmentation(
            [s.model_dump() for s in cfg.augmentation],
            seed=seed,
            references=StyleReferences(dataset, channels=channels, train_ids=train_ids),
        )
        if cfg.augmentation
        else None
    )
    crops: CropDataset | MixedCrops = CropDataset(
        dataset,
        size,
        ids=train_ids,
        channels=channels,
        samples_per_epoch=cfg.data.samples_per_epoch,
        seed=seed * 7919 + fold,
    )
    if cfg.data.extra:
        extra = extra_crop_sources(
            [(e.root, e.weight) for e in cfg.data.extra],
            crop_size=size,
            channels=channels,
            length=len(crops),
            seed=crops.seed,
        )
        crops = MixedCrops([(crops, 1.0), *extra], seed=crops.seed)
    val_set: TrainingCrops | None = None
    if task_of(cfg.model.name) == "instance":
        train_set: AugmentedCrops = InstanceCrops(crops, augmentation)  # no val loss: kit.training.tasks
    else:
        targets = {
            "include_mask": cfg.targets.include_mask,
            "min_radius": cfg.targets.border_min_radius,
            "max_radius": cfg.targets.border_max_radius,
            "border_weight": cfg.targets.border_weight,
        }
        train_set = TrainingCrops(crops, augmentation, **targets)
        val_crops = CropDataset(dataset, size, ids=val_ids, channels=channels, seed=seed * 7919 + fold + 1)
        val_set = TrainingCrops(val_crops, None, **targets)
    val_images = [
        (s.id, normalize_image(s.image, channels), np.asarray(s.labels)) for s in map(dataset.load, val_ids)
    ]
    return FoldData(train_ids, val_ids, crops, augmentation, train_set, val_set, val_images)
