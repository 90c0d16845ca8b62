"""The search space of `kit tune`: a YAML file of `--set` keys and the values each may take.

```yaml
params:                                   # sampled in this order; each key is a `--set` key
  training.lr: {float: [3.0e-4, 5.0e-3], log: true}   # float, log-uniform (or linear; `step` for a grid)
  data.crop_size: {int: [128, 256], step: 32}          # int, linear (or `log: true`)
  training.schedule: {choice: [cosine, step]}          # categorical: null, booleans, numbers or text
  training.step_size: {int: [5, 20], when: {training.schedule: step}}   # conditional
pruner: {n_startup_trials: 4, n_warmup_steps: 5}       # optional: median pruner settings, or `none`
```

A conditional parameter (`when: {KEY: VALUE}` or `{KEY: [VALUES]}`) is sampled only when the earlier
categorical parameter KEY took one of those values; otherwise the experiment's own value stands. Every
problem (an unknown key, a bound the experiment rejects, a malformed range) is one `ConfigError` line
naming the file and the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kit.config import ExperimentConfig, config_from_dict, set_values
from kit.errors import ConfigError

Scalar = None | bool | int | float | str
_KINDS = ("float", "int", "choice")
_PARAM_KEYS = {*_KINDS, "log", "step", "when"}
_FORBIDDEN_PREFIXES = ("name", "base", "tracking.")  # what a trial itself decides


@dataclass(frozen=True)
class Param:
    """One searched `--set` key: a float or int range (`low`, `high`, `log`, `step`) or `choices`, sampled
    only when every `when` condition (earlier categorical key → allowed values) holds."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Scalar, ...] = ()
    when: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)

    def extremes(self) -> list[Scalar]:
        """The values that bound what this parameter can take (its range ends, or every choice)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value from an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))


@dataclass(frozen=True)
class PrunerSpec:
    """Median pruning settings (Optuna's `MedianPruner`); `enabled=False` never prunes."""

    enabled: bool = True
    n_startup_trials: int = 4
    n_warmup_steps: int = 3
    interval_steps: int = 1


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a space file, in sampling order, and its pruning settings."""

    source: str
    params: tuple[Param, ...]
    pruner: PrunerSpec = PrunerSpec()

    def sample(self, trial: Any) -> dict[str, Any]:
        """`--set` key → value for one Optuna trial (conditional parameters only where they apply)."""
        values: dict[str, Any] = {}
        for param in self.params:
            if all(values.get(key, _MISSING) in allowed for key, allowed in param.when.items()):
                values[param.key] = param.suggest(trial)
        return values

    def check_against(self, cfg: ExperimentConfig) -> None:
        """Raise ConfigError unless the experiment accepts every bound of every parameter."""
        base = cfg.to_dict()
        for param in self.params:
            for value in param.extremes():
                config_from_dict(
                    set_values(base, {param.key: value}), f"{self.source}: {param.key}={value!r}"
                )


_MISSING = object()


def load_space(path: str | Path, cfg: ExperimentConfig | None = None) -> SearchSpace:
    """Read a space file (see the module docstring); with `cfg`, also check it against that experiment."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    space = parse_space(raw, str(path))
    if cfg is not None:
        space.check_against(cfg)
    return space


def parse_space(raw: Any, source: str = "space") -> SearchSpace:
    """A SearchSpace from the parsed YAML of a space file; ConfigError naming `source` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a search space is a mapping with `params:` (and optionally `pruner:`)")
    unknown = sorted(set(raw) - {"params", "pruner"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; expected `params:` and `pruner:`")
    entries = raw.get("params")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{source}: `params:` must map at least one `--set` key to its range or choices")
    params: list[Param] = []
    for key, spec in entries.items():
        params.append(_parse_param(str(key), spec, params, source))
    return SearchSpace(source, tuple(params), _parse_pruner(raw.get("pruner"), source))


def _parse_param(key: str, spec: Any, earlier: list[Param], source: str) -> Param:
    where = f"{source}: params.{key}"
    if key.startswith(_FORBIDDEN_PREFIXES) or not key.strip("."):
        raise ConfigError(
            f"{where}: `{key}` cannot be searched (a trial sets name, base and tracking itself)"
        )
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{float: [low, high]}}, got {spec!r}")
    extra = sorted(set(spec) - _PARAM_KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {extra}; a parameter takes {sorted(_PARAM_KEYS)}")
    kinds = [k for k in _KINDS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of float: [low, high], int: [low, high], choice: [...]")
    kind = kinds[0]
    when = _parse_when(spec.get("when"), earlier, where)
    if kind == "choice":
        return Param(key, kind, choices=_parse_choices(spec["choice"], where), when=when)
    low, high = _parse_range(spec[kind], kind, where)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, kind, f"{where}: step")
        if step <= 0 or log:
            raise ConfigError(f"{where}: step must be positive and cannot be combined with log: true")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs a positive low bound, got {low}")
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when)


def _number(value: Any, kind: str, where: str) -> float | int:
    """`value` as a number of `kind` (YAML reads `1e-4` as text; it is accepted here as a float)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind == "int":
        if isinstance(value, int):
            return value
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _parse_range(value: Any, kind: str, where: str) -> tuple[float | int, float | int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{where}: {kind} takes [low, high], got {value!r}")
    low, high = (_number(v, kind, f"{where}: {kind}") for v in value)
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got [{low}, {high}]")
    return low, high


def _parse_choices(value: Any, where: str) -> tuple[Scalar, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: choice takes a non-empty list, got {value!r}")
    for item in value:
        if item is not None and not isinstance(item, bool | int | float | str):
            raise ConfigError(
                f"{where}: a choice must be null, a boolean, a number or text (Optuna stores no lists or "
                f"mappings), got {item!r}"
            )
    if len(set(map(repr, value))) != len(value):
        raise ConfigError(f"{where}: choices repeat a value: {value!r}")
    return tuple(value)


def _parse_when(value: Any, earlier: list[Param], where: str) -> dict[str, tuple[Scalar, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: when takes a mapping {{KEY: VALUE or [VALUES]}}, got {value!r}")
    by_key = {p.key: p for p in earlier}
    out = {}
    for key, allowed in value.items():
        condition = by_key.get(key)
        if condition is None or condition.kind != "choice":
            raise ConfigError(f"{where}: when names '{key}', which is not a categorical parameter above it")
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        unknown = [a for a in allowed if a not in condition.choices]
        if unknown:
            raise ConfigError(f"{where}: when {key} is {unknown}, which is not among its choices")
        out[key] = allowed
    return out


def _parse_pruner(value: Any, source: str) -> PrunerSpec:
    if value is None:
        return PrunerSpec()
    if value is False or value == "none":
        return PrunerSpec(enabled=False)
    where = f"{source}: pruner"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected `none` or a mapping of median pruner settings, got {value!r}")
    fields = {"n_startup_trials": 0, "n_warmup_steps": 0, "interval_steps": 1}
    extra = sorted(set(value) - set(fields))
    if extra:
        raise ConfigError(f"{where}: unknown setting(s) {extra}; known: {sorted(fields)}")
    for name, minimum in fields.items():
        v = value.get(name, minimum)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{where}.{name}: expected a whole number ≥ {minimum}, got {v!r}")
    return PrunerSpec(True, **value)
