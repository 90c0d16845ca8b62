"""The thresholds a model stores with itself (as StarDist's `thresholds.json`), typed and validated.

Each model kind has one thresholds type, defined with the config sections (`kit.config`):

- `WatershedThresholds`: semantic models (U-Net, FPN), probability maps → watershed instances;
- `DetectionThresholds`: instance models (Mask R-CNN), detections → instances;
- `SelectionThresholds`: the ensemble, predicted IoUs → the kept candidates.

A model folder holds them as `thresholds.json` (`{"kind": ..., "values": {...}}`); a call may override
any of them (`model.predict(image, thresholds={"seed_threshold": 0.6})`), and a misspelt or invalid key is
a `ConfigError` at that call, naming the key, never a surprise at the first image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from kit.config import DetectionThresholds, SelectionThresholds, WatershedThresholds, validate_section
from kit.errors import ConfigError
from kit.fileio import atomic_write_text

THRESHOLDS_FILE = "thresholds.json"
Thresholds = WatershedThresholds | DetectionThresholds | SelectionThresholds
KINDS: dict[str, type[BaseModel]] = {
    "watershed": WatershedThresholds,
    "detection": DetectionThresholds,
    "selection": SelectionThresholds,
}
T = TypeVar("T", WatershedThresholds, DetectionThresholds, SelectionThresholds)


def kind_of(thresholds: Thresholds) -> str:
    """ "watershed", "detection" or "selection"."""
    for kind, cls in KINDS.items():
        if type(thresholds) is cls:
            return kind
    raise TypeError(f"not a thresholds object: {type(thresholds).__name__}")


def as_thresholds(cls: type[T], values: Mapping[str, Any] | BaseModel, source: str) -> T:
    """`values` as `cls`, keeping only `cls`'s keys of a wider settings object (e.g. `InstancesConfig`,
    which holds the `DetectionThresholds` and the voting settings); a mapping must hold only `cls`'s keys."""
    if isinstance(values, BaseModel):
        values = values.model_dump(include=set(cls.model_fields))
    return validate_section(cls, dict(values), source)


def with_overrides(base: T, changes: Mapping[str, Any] | BaseModel | None, source: str = "thresholds") -> T:
    """`base` with `changes` (a mapping of some of its keys, or a whole thresholds object of its type)
    applied and validated."""
    if changes is None:
        return base
    if isinstance(changes, BaseModel):
        if type(changes) is not type(base):
            raise ConfigError(
                f"{source}: this model takes {type(base).__name__}, got {type(changes).__name__}"
            )
        return changes
    return validate_section(type(base), {**base.model_dump(), **dict(changes)}, source)


def write_thresholds(folder: Path, thresholds: Thresholds) -> Path:
    """`folder`/thresholds.json."""
    payload = {"kind": kind_of(thresholds), "values": thresholds.model_dump(mode="json")}
    return atomic_write_text(Path(folder) / THRESHOLDS_FILE, json.dumps(payload, indent=2))


def read_thresholds(folder: Path) -> Thresholds:
    """The thresholds stored in `folder`/thresholds.json; ConfigError naming the file when it is unreadable
    or holds an unknown kind or key."""
    path = Path(folder) / THRESHOLDS_FILE
    try:
        payload = json.loads(path.read_text())
        kind, values = payload["kind"], payload["values"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a thresholds file ({exc})") from None
    if kind not in KINDS:
        raise ConfigError(f"{path}: unknown thresholds kind {kind!r}; expected one of {', '.join(KINDS)}")
    return validate_section(KINDS[kind], values, str(path))
