"""PyTorch datasets over samples: random fixed-size crops for training, whole images for validation.

Both return numpy arrays in a dict (the DataLoader's default collate turns them into tensors): the image
normalised by `kit.data.normalize.normalize_image` (uint8 H×W×C, computed once per image and cached) and
the int32 label image. Training targets are derived elsewhere (`kit.targets`), from "labels".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from kit.data.dataset import NucleiDataset
from kit.data.normalize import normalize_image
from kit.data.sample import Sample
from kit.errors import DataError

Transform = Callable[[dict], dict]
Samples = Sequence[Sample] | NucleiDataset


class _NormalizedImages:
    """Images by position, normalised on first use and cached, with their labels and ids."""

    def __init__(
        self, samples: Samples, ids: Sequence[str] | None, channels: int, require_labels: bool
    ) -> None:
        self._dataset: NucleiDataset | None = None
        self._samples: list[Sample] = []
        if isinstance(samples, NucleiDataset):
            self._dataset = samples
            self.ids = list(ids) if ids is not None else samples.ids()
            unknown = [i for i in self.ids if i not in samples]
            if unknown:
                raise DataError(f"{samples.root}: no image(s) with id {_few(unknown)}")
            unlabelled = [i for i in self.ids if pd.isna(samples.row(i)["n_nuclei"])]
        else:
            by_id = {s.id: s for s in samples}
            self.ids = list(ids) if ids is not None else [s.id for s in samples]
            unknown = [i for i in self.ids if i not in by_id]
            if unknown:
                raise DataError(f"no sample(s) with id {_few(unknown)}")
            self._samples = [by_id[i] for i in self.ids]
            unlabelled = [s.id for s in self._samples if s.labels is None]
        if require_labels and unlabelled:
            raise DataError(f"image(s) without labels cannot be used for training: {_few(unlabelled)}")
        self._channels = channels
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        if k not in self._cache:
            sample = self._dataset.load(self.ids[k]) if self._dataset is not None else self._samples[k]
            labels = None if sample.labels is None else np.array(sample.labels, dtype=np.int32)
            self._cache[k] = (normalize_image(sample.image, self._channels), labels)
        return self._cache[k]


class CropDataset(Dataset):
    """Random `crop_size`² crops of annotated images: ``{"image": uint8 S×S×C, "labels": int32 S×S, "id"}``.

    `samples` is a sequence of `Sample` or a `NucleiDataset` (with `ids`, default: all; every chosen
    image needs labels). An epoch has `samples_per_epoch` items (default n) and item ``i`` of epoch ``e``
    crops image ``(i + e·len) mod n``, so short epochs still visit every image in turn. The crop
    position comes from a generator seeded by (`seed`, epoch, ``i``), so it is reproducible in any
    DataLoader worker; call `set_epoch` before each epoch for fresh crops (with
    ``persistent_workers=True`` the workers keep the epoch they were started with). An image smaller
    than the crop is placed at a random offset on a canvas of its per-channel median (labels 0).
    `transform` gets ``{"image", "labels"}`` after cropping and returns the same keys.
    """

    def __init__(
        self,
        samples: Samples,
        crop_size: int,
        *,
        ids: Sequence[str] | None = None,
        channels: int = 3,
        transform: Transform | None = None,
        samples_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self._images = _NormalizedImages(samples, ids, channels, require_labels=True)
        if len(self._images) == 0:
            raise DataError("CropDataset needs at least one image")
        self.crop_size = crop_size
        self.transform = transform
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.epoch = 0

    @property
    def ids(self) -> list[str]:
        """Ids of the images cropped from."""
        return self._images.ids

    def set_epoch(self, epoch: int) -> None:
        """Use the crop positions of `epoch`."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self._images)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = (index + self.epoch * len(self)) % len(self._images)
        image, labels = self._images[k]
        assert labels is not None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        crop_image, crop_labels = random_crop(image, labels, self.crop_size, rng)
        item = {"image": crop_image, "labels": crop_labels}
        if self.transform is not None:
            item = dict(self.transform(item))
        item["id"] = self._images.ids[k]
        return item


def random_crop(
    image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random `size`×`size` window of (image H×W×C, labels H×W); short sides are padded as in CropDataset."""
    (sy, dy, ly), (sx, dx, lx) = (_window(n, size, rng) for n in labels.shape)
    out_image = np.empty((size, size, image.shape[2]), dtype=image.dtype)
    out_labels = np.zeros((size, size), dtype=np.int32)
    if ly < size or lx < size:
        out_image[:] = np.median(image.reshape(-1, image.shape[2]), axis=0).astype(image.dtype)
    out_image[dy : dy + ly, dx : dx + lx] = image[sy : sy + ly, sx : sx + lx]
    out_labels[dy : dy + ly, dx : dx + lx] = labels[sy : sy + ly, sx : sx + lx]
    return out_image, out_labels


def _window(length: int, size: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(source start, destination start, extent) of a random window along one axis."""
    if length >= size:
        return int(rng.integers(0, length - size + 1)), 0, size
    return 0, int(rng.integers(0, size - length + 1)), length


class FullImageDataset(Dataset):
    """Whole normalised images for validation and prediction: ``{"image", "id"}`` plus ``"labels"`` if known.

    Images differ in size, so use ``batch_size=1`` (or a list collate). Arguments as in `CropDataset`.
    """

    def __init__(self, samples: Samples, *, ids: Sequence[str] | None = None, channels: int = 3) -> None:
        self._images = _NormalizedImages(samples, ids, channels, require_labels=False)

    @property
    def ids(self) -> list[str]:
        """Image ids in item order."""
        return self._images.ids

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        image, labels = self._images[index]
        item = {"image": image, "id": self._images.ids[index]}
        if labels is not None:
            item["labels"] = labels
        return item


def _few(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
