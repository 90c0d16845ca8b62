"""Typed experiment configs: YAML in `experiments/` → pydantic objects, `--set` overrides, YAML dump.

An experiment is one YAML file with the sections below. Unknown keys and bad values are errors that
name the key and the file. `None` in a field means "the component's own default".

Inheritance: `base: NAME` (an experiment name, looked up next to the file and then in `experiments/`) or
`base: PATH` (a .yaml path, relative to the file) makes the file a list of differences from another
experiment. The merge order is: the base chain (recursively, the farthest base first), then the file,
then `--set`. Sections (mappings) merge key by key; any other value, lists included, replaces the base's
whole (as in Hydra), so `augmentation: [...]` in a child is its complete augmentation list. `name` is
never inherited (it defaults to the file's stem). A cycle or a missing base is a one-line error.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kit.errors import ConfigError

EXPERIMENTS_DIR = Path("experiments")
BASE_KEY = "base"
"""The key of an experiment YAML that names the experiment it inherits from."""

# Every list of choices, defined once: configs validate against these, stages and the CLI read them.
TtaMode = Literal["none", "flips", "d4"]
PredictKind = Literal["test", "validation", "oof", "input"]
SubmitKind = Literal["test", "input"]
ApplyKind = Literal["test", "input", "none"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
TTA_MODES: tuple[str, ...] = get_args(TtaMode)
PREDICT_KINDS: tuple[str, ...] = get_args(PredictKind)
SUBMIT_KINDS: tuple[str, ...] = get_args(SubmitKind)
APPLY_KINDS: tuple[str, ...] = get_args(ApplyKind)
PRECISIONS: tuple[str, ...] = get_args(Precision)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SectionT = TypeVar("SectionT", bound=BaseModel)


class ExtraData(_Section):
    """A dataset mixed into the training crops (never into validation), e.g. from `kit style synth`."""

    root: str
    weight: float = Field(1.0, gt=0)


class DataConfig(_Section):
    """Which dataset and how samples are drawn from it.

    `extra` datasets add crops of their annotated train images: with weights w_j (data.root counts 1),
    a fraction w_j / (1 + sum w) of each epoch's crops comes from extra dataset j; the epoch length stays.
    """

    root: str = "data/synthetic"
    channels: Literal[1, 3] = 3
    crop_size: int = Field(256, ge=32)
    train_splits: list[str] = ["train"]
    samples_per_epoch: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    extra: list[ExtraData] = []


class ModelConfig(_Section):
    """A model from the registry (`kit.models.list_models()`); `params` go to its builder unchanged."""

    name: str = "unet"
    encoder: str = "resnet34"
    pretrained: bool | str = False
    params: dict[str, Any] = {}


class TargetsConfig(_Section):
    """Label image → training targets (body / touching border / background [+ full mask])."""

    include_mask: bool = False
    border_min_radius: int = Field(1, ge=1)
    border_max_radius: int = Field(3, ge=1)
    border_weight: float = Field(1.0, ge=0)


class AugmentationStep(BaseModel):
    """One augmentation: an albumentations class name or a kit transform, its probability and params."""

    model_config = ConfigDict(extra="allow")

    name: str
    p: float = Field(1.0, ge=0, le=1)


class LossConfig(_Section):
    mode: Literal["softmax", "bce"] = "softmax"
    ce_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    dice_channels: list[str] = ["body", "border"]
    channel_weights: dict[str, float] | None = None


class TrainingConfig(_Section):
    """Optimiser, schedule and loop settings.

    `max_minutes`: a wall-clock budget per fold (validation included). Training stops when it is spent
    (or after `epochs`, whichever comes first) and the cosine schedule decays over it, so a time budget
    gets a complete schedule on any machine; the last epoch is cut short and validated.

    `precision` (auto | fp32 | bf16 | fp16) and `channels_last` apply on CPU and CUDA alike; "auto" is
    bfloat16 where the device computes it natively, else float32 (`kit.models.precision`). The weights
    stay float32. `amp`, the key before `precision`, is still read: true → auto, false → fp32.
    """

    epochs: int = Field(40, ge=1)
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Precision = "auto"
    channels_last: bool = True
    seed: int = 0
    folds: list[int] = [0, 1, 2, 3]
    early_stopping_patience: int | None = Field(10, ge=1)
    val_every: int = Field(1, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    loss: LossConfig = LossConfig()

    @model_validator(mode="before")
    @classmethod
    def _amp_is_precision(cls, data: Any) -> Any:
        """Configs and checkpoints written before `precision` hold `amp` (bfloat16 autocast on CUDA)."""
        if isinstance(data, dict) and "amp" in data:
            data = dict(data)
            amp = data.pop("amp")
            if not isinstance(amp, bool):
                raise ValueError(f"amp (now precision) must be true or false, got {amp!r}")
            data.setdefault("precision", "auto" if amp else "fp32")
        return data


class InferenceConfig(_Section):
    """Test-time augmentation, tiling, and how the network runs (`precision`, `channels_last`: as in
    `training`, on CPU and CUDA; probability maps and post-processing stay float32); block-wise
    prediction of large images (`kit.scale`).

    An image larger than `block` pixels on a side is predicted block by block: each `block`² core is
    predicted with `halo` pixels around it, where its nuclei are taken from (it must exceed the largest
    nucleus; default `overlap`, the size the tiles already assume), and `context` more pixels that only
    feed the network (default `overlap` / 2).
    """

    tta: TtaMode = "none"
    scales: list[float] = [1.0]
    tile: int = Field(512, ge=32)
    overlap: int = Field(64, ge=0)
    batch_size: int = Field(4, ge=1)
    precision: Precision = "auto"
    channels_last: bool = True
    block: int = Field(2048, ge=64)
    halo: int | None = Field(None, ge=0)
    context: int | None = Field(None, ge=0)


class WatershedThresholds(_Section):
    """How probability maps become instances (marker-controlled watershed, `kit.inference.postprocess`):
    the thresholds a semantic model (U-Net, FPN) stores with itself and that a call may override.

    `min_area_fraction` drops instances smaller than that fraction of the image's median instance area.
    """

    seed_threshold: float = Field(0.5, gt=0, lt=1)
    min_seed_size: int = Field(8, ge=1)
    mask_threshold: float = Field(0.5, gt=0, lt=1)
    min_size: int = Field(10, ge=0)
    min_area_fraction: float = Field(0.0, ge=0, lt=1)
    fill_holes: bool = True
    grow_with_mask: bool = True


class PostprocessConfig(WatershedThresholds):
    """The watershed thresholds of semantic models (`WatershedThresholds`).

    `kit predict --oof` tunes the first six settings on the out-of-fold maps (for instance models: the
    `instances` score threshold and size rule) and stores them with the train run; later predictions
    of that run use the tuned values when `tuned` is true (set it false to use exactly the values given).
    """

    tuned: bool = True


class DetectionThresholds(_Section):
    """How detections become instances (`kit.inference.instances.detections_to_labels`): the thresholds an
    instance model (Mask R-CNN) stores with itself and that a call may override.

    Candidates scoring ≥ `score_threshold` become instances (their mask > `mask_threshold`); overlapping
    pixels go to the nearest centroid or the higher score (`overlap`); instances under `min_size` pixels
    are dropped, and so are those under `min_area_fraction` of the image's median instance area.
    """

    score_threshold: float = Field(0.5, ge=0, le=1)
    mask_threshold: float = Field(0.5, gt=0, lt=1)
    min_size: int = Field(10, ge=0)
    min_area_fraction: float = Field(0.0, ge=0, lt=1)
    overlap: Literal["centroid", "score"] = "centroid"


class InstancesConfig(DetectionThresholds):
    """Detections → instances, for instance models (Mask R-CNN; semantic models use `postprocess`): the
    `DetectionThresholds`, and how TTA copies and fold models are merged.

    `kit predict --oof` tunes `score_threshold` and the size rule out of fold (`postprocess.tuned`).
    TTA copies and fold models are merged by mask voting: candidates matched at IoU >
    `vote_iou`, kept when found in at least `min_vote_fraction` of the copies.
    """

    vote_iou: float = Field(0.5, gt=0, lt=1)
    min_vote_fraction: float = Field(0.5, gt=0, le=1)


class SelectionThresholds(_Section):
    """How an ensemble chooses among overlapping candidates (`kit.ensemble.selection`): candidates whose
    predicted IoU is under `threshold` are dropped, and one whose pixels are already taken by more than
    `nms_overlap` is suppressed. The thresholds an ensemble stores with itself; a call may override them."""

    threshold: float = Field(0.3, ge=0, le=1)
    nms_overlap: float = Field(0.3, ge=0, lt=1)


class TrackingConfig(_Section):
    """Where runs go (`experiment` defaults to the config's name) and whether a finished train run logs
    its fold models as an MLflow Model (`log_model`; the checkpoints are logged either way)."""

    experiment: str | None = None
    log_model: bool = True


class LightGBMRanges(_Section):
    """Ranges [low, high] each booster of the ensemble draws its parameters from, and fixed settings."""

    num_leaves: tuple[int, int] = (15, 63)
    feature_fraction: tuple[float, float] = (0.5, 0.9)
    learning_rate: tuple[float, float] = (0.02, 0.1)
    num_boost_round: int = Field(200, ge=1)
    min_data_in_leaf: int = Field(20, ge=1)
    num_threads: int = Field(1, ge=0)
    """OpenMP threads per booster (0: LightGBM's default, all cores). One by default: on thousands of rows
    a second thread gains nothing, and on a busy 2-core machine 200 rounds took 58 s with 2 threads
    against 1.1 s with 1 (OpenMP threads spinning against each other)."""


class EnsembleConfig(_Section):
    """`kit ensemble`: a LightGBM IoU model over the instances of base experiments (`kit.ensemble`).

    `bases` are MLflow experiment names (the experiment names unless tracking.experiment says otherwise)
    whose out-of-fold predict runs train the model and whose `apply_kind` runs it is applied to
    ("none": train only). `threshold` None tunes the drop threshold on the OOF predictions.
    """

    bases: list[str] = []
    target_min_iou: float = Field(0.5, ge=0, lt=1)
    split_thresholds: list[float] = [0.6, 0.7, 0.8]
    n_bags: int = Field(10, ge=1)
    n_folds: int = Field(3, ge=2)
    nms_overlap: float = Field(0.3, ge=0, lt=1)
    threshold: float | None = Field(None, ge=0, le=1)
    neighbour_radii: list[int] = [50, 100, 150, 200]
    apply_kind: ApplyKind = "test"
    seed: int = 0
    lightgbm: LightGBMRanges = LightGBMRanges()


class ExperimentConfig(_Section):
    """A whole experiment: one YAML file in `experiments/`."""

    name: str
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    targets: TargetsConfig = TargetsConfig()
    augmentation: list[AugmentationStep] = []
    training: TrainingConfig = TrainingConfig()
    inference: InferenceConfig = InferenceConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    instances: InstancesConfig = InstancesConfig()
    tracking: TrackingConfig = TrackingConfig()
    ensemble: EnsembleConfig | None = None

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ "):
            raise ValueError("must be a non-empty name without slashes or spaces")
        return v

    @property
    def mlflow_experiment(self) -> str:
        return self.tracking.experiment or self.name

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what gets logged with a run)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat_params(self) -> dict[str, str]:
        """`section.key` → value strings, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = str(value)

        d = self.to_dict()
        aug = d.pop("augmentation")
        walk("", d)
        out["augmentation"] = ",".join(step["name"] for step in aug) or "none"
        return out


def available_experiments(directory: Path | None = None) -> list[str]:
    """Names of the YAML experiments in `directory` (default `./experiments`)."""
    directory = directory or EXPERIMENTS_DIR
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def resolve_experiment_path(exp: str | os.PathLike, directory: Path | None = None) -> Path:
    """`exp` is a name in `experiments/` or a path to a YAML file; return the file or raise ConfigError."""
    directory = directory or EXPERIMENTS_DIR
    text = str(exp)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text or "/" in text:
        if not path.is_file():
            raise ConfigError(f"experiment file {path} does not exist")
        return path
    candidate = directory / f"{text}.yaml"
    if candidate.is_file():
        return candidate
    known = available_experiments(directory)
    close = difflib.get_close_matches(text, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(known) if known else f"none: {directory}/ has no .yaml files"
    raise ConfigError(f"unknown experiment '{text}'.{hint} Known experiments: {listing}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `section.key=value` (value in YAML syntax) into (["section", "key"], value)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config dict with `--set` overrides applied (validation comes later)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        _set_path(out, parts, value, f"override '{item}'")
    return out


def set_values(raw: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the raw config dict with `section.key` → value set (values already typed, as a
    search trial samples them; `apply_overrides` is the same for `--set` text)."""
    out = copy.deepcopy(raw)
    for key, value in values.items():
        _set_path(out, [p for p in key.split(".") if p], value, f"key '{key}'")
    return out


def _set_path(node: dict[str, Any], parts: list[str], value: Any, what: str) -> None:
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def merge_configs(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """`child` over `base`: mappings merge key by key (recursively), anything else in `child`, lists
    included, replaces the base's value."""
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_validation_error(exc: ValidationError, source: str, root: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section_fields = _fields_at(err["loc"][:-1], root)
            close = difflib.get_close_matches(str(err["loc"][-1]), section_fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"unknown key '{loc}'{hint}")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return f"{source}: invalid {'config' if root is ExperimentConfig else 'settings'}: " + "; ".join(lines)


def _fields_at(loc: tuple, root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        # An optional section (`X | None`): its fields are those of X.
        model = next((a for a in get_args(field.annotation) if hasattr(a, "model_fields")), field.annotation)
    return list(getattr(model, "model_fields", {}))


def validate_section(section: type[SectionT], raw: Any, source: str) -> SectionT:
    """`raw` (a mapping) validated as `section`; ConfigError naming `source` and each bad key (with the
    closest known key for a misspelt one)."""
    try:
        return section.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, section)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column) and what."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def config_from_dict(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a raw dict into an ExperimentConfig, turning pydantic errors into a ConfigError."""
    return validate_section(ExperimentConfig, raw, source)


def load_experiment(
    exp: str | os.PathLike, overrides: list[str] | None = None, directory: Path | None = None
) -> ExperimentConfig:
    """Load an experiment by name or path, merge its base chain under it (see the module docstring),
    apply `section.key=value` overrides, validate."""
    path = resolve_experiment_path(exp, directory)
    raw = _resolved_raw(path, directory, chain=())
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path))


def _read_raw(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment must be a YAML mapping of sections")
    return raw


def _resolved_raw(path: Path, directory: Path | None, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The raw dict of `path` merged over its base chain; `chain` holds the files that inherit from it."""
    key = path.resolve()
    if key in chain:
        cycle = " → ".join(str(p) for p in (*chain, key)[chain.index(key) :])
        raise ConfigError(f"{path}: experiments inherit in a cycle ({cycle}); remove one `base:`")
    raw = _read_raw(path)
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: `{BASE_KEY}:` must be an experiment name or a .yaml path, got {base!r}")
    inherited = _resolved_raw(_base_path(path, base, directory), directory, (*chain, key))
    inherited.pop("name", None)
    return merge_configs(inherited, raw)


def _base_path(child: Path, base: str, directory: Path | None) -> Path:
    """The file `base:` names in `child`: a path relative to `child`, or a name next to `child` or in
    `directory` (default ./experiments)."""
    if base.endswith((".yaml", ".yml")) or "/" in base or os.sep in base:
        path = child.parent / Path(base).expanduser()
        if not path.is_file():
            raise ConfigError(f"{child}: base experiment file {path} does not exist")
        return path
    sibling = child.parent / f"{base}.yaml"
    if sibling.is_file():
        return sibling
    try:
        return resolve_experiment_path(base, directory)
    except ConfigError as exc:
        raise ConfigError(f"{child}: {BASE_KEY}: {exc}") from None
