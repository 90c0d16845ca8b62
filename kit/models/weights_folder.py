"""Pretrained encoder weights that work offline: a plain folder of files, filled once, used everywhere.

A competitor's workflow on Kaggle code competitions and lab clusters without internet: fetch the weights
where there is internet (`kit weights fetch`), copy or upload the folder, train and predict offline.

The folder (`KIT_WEIGHTS_DIR`, default `~/.cache/kit/weights`) holds, per encoder,
``<name>.safetensors`` (the encoder's ImageNet classifier state_dict, timm names) and ``<name>.json``
(where the tensors came from and the sha256 of the file). `name` is the timm model name, or
``torchvision-resnet50`` for Mask R-CNN's torchvision ResNet-50.

`model.pretrained` in a config:
- `false`: random init;
- `true`: the folder's file for the encoder when there is one, else the hub (timm/torchvision download);
  without internet this fails in a few seconds with one line naming the encoder, the folder and the fixes;
- a path: that file (a state_dict, a kit checkpoint, or a file of this folder).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from kit.errors import ConfigError
from kit.fileio import atomic_path, atomic_write_text, sha256_file

WEIGHTS_ENV = "KIT_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/kit/weights")
TORCHVISION_RESNET50 = "torchvision-resnet50"
SUFFIX = ".safetensors"
_HUB_HOSTS = {"timm": "huggingface.co", "torchvision": "download.pytorch.org"}
_PROBE_SECONDS = 3.0


def weights_dir() -> Path:
    """The weights folder in force: `$KIT_WEIGHTS_DIR` or ~/.cache/kit/weights (not created here)."""
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's initial weights came from, as recorded with a train run.

    kind: "random", "file" or "hub"; path and sha256 for files; name is the encoder. "none" for a model
    fitted outside torch (`kit.models.fitted`), which starts from no weights at all.
    """

    kind: str
    name: str = ""
    path: str = ""
    sha256: str = ""

    def tags(self) -> dict[str, str]:
        """MLflow tags telling runs with different initialisations apart."""
        out = {"kit.weights": self.kind if self.kind in ("random", "none") else f"{self.kind}:{self.name}"}
        if self.path:
            out["kit.weights_file"] = self.path
        if self.sha256:
            out["kit.weights_sha256"] = self.sha256
        return out


def weights_file(name: str, folder: Path | None = None) -> Path | None:
    """The folder's file for encoder `name`, or None."""
    path = (folder or weights_dir()) / f"{name}{SUFFIX}"
    return path if path.is_file() else None


def resolve_pretrained(name: str, pretrained: bool | str | os.PathLike, hub: str = "timm") -> WeightsSource:
    """Decide where encoder `name`'s initial weights come from (see the module docstring).

    For `true` without a local file, checks within a few seconds that the hub answers (or that
    HF_HUB_OFFLINE is unset, for timm) and raises ConfigError with the fixes otherwise.
    """
    if pretrained is False:
        return WeightsSource("random", name)
    if pretrained is True:
        local = weights_file(name)
        if local is not None:
            return WeightsSource("file", name, str(local), _recorded_sha256(local))
        problem = _hub_problem(hub)
        if problem:
            folder = weights_dir()
            raise ConfigError(
                f"no pretrained weights for encoder '{name}': {problem}, and {folder} has no {name}{SUFFIX}. "
                f"Fixes: run `kit weights fetch {name}` where there is internet and copy the folder here "
                f"(or set {WEIGHTS_ENV}), give a file with --set model.pretrained=PATH, "
                f"or train from random init with --set model.pretrained=false"
            )
        return WeightsSource("hub", name)
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ConfigError(f"pretrained weights not found: {path}")
    return WeightsSource("file", name, str(path), sha256_file(path))


def _recorded_sha256(path: Path) -> str:
    info = path.with_suffix(".json")
    try:
        return str(json.loads(info.read_text())["sha256"])
    except (OSError, ValueError, KeyError):
        return sha256_file(path)


def _hub_problem(hub: str) -> str:
    """Why the hub cannot be reached ("" when it can), decided within `_PROBE_SECONDS`."""
    if hub == "timm" and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host = _HUB_HOSTS[hub]
    try:
        socket.create_connection((host, 443), timeout=_PROBE_SECONDS).close()
    except OSError as exc:
        return f"{host} is unreachable ({type(exc).__name__})"
    return ""


def save_weights(
    state_dict: Mapping[str, torch.Tensor], name: str, source: str, folder: Path | None = None
) -> Path:
    """Write `state_dict` as the folder's file for `name` (+ its .json record) atomically; the path."""
    from safetensors.torch import save_file

    folder = folder or weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{SUFFIX}"
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"name": name, "source": source})
    record = {
        "name": name,
        "source": source,
        "sha256": sha256_file(path),
        "tensors": len(tensors),
        "parameters": int(sum(v.numel() for v in tensors.values())),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2))
    return path


def list_weights(folder: Path | None = None) -> list[dict]:
    """One record per weights file of the folder (name, source, sha256, tensors, parameters, size_mb)."""
    folder = folder or weights_dir()
    out = []
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        try:
            record = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            record = {"name": path.stem, "source": "unknown (no .json record)"}
        record["size_mb"] = round(path.stat().st_size / 1e6, 1)
        record["path"] = str(path)
        out.append(record)
    return out


def fetch_weights(name: str, folder: Path | None = None) -> Path:
    """Download encoder `name`'s ImageNet weights (timm name, or `torchvision-resnet50`) into the folder."""
    if name == TORCHVISION_RESNET50:
        problem = _hub_problem("torchvision")
        if problem:
            raise ConfigError(f"cannot fetch {name}: {problem}")
        from torchvision.models import ResNet50_Weights

        weights = ResNet50_Weights.IMAGENET1K_V1
        return save_weights(weights.get_state_dict(progress=True), name, f"torchvision:{weights}", folder)
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"cannot fetch '{name}': not a timm model name (timm.list_models())")
    problem = _hub_problem("timm")
    if problem:
        raise ConfigError(f"cannot fetch {name}: {problem}")
    model = timm.create_model(name, pretrained=True)
    tag = getattr(model, "pretrained_cfg", {}).get("hf_hub_id") or name
    return save_weights(model.state_dict(), name, f"timm:{tag}", folder)
