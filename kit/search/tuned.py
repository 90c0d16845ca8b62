"""The experiment file a search's winner becomes: `base:` the searched experiment, then the values
that differ (the study's fixed `--set` values, its per-trial budget and the winner's parameters) as
nested sections, so it trains, predicts and ensembles like any other experiment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from kit.config import BASE_KEY, set_values


def tuned_experiment_yaml(base: str, values: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """YAML text of an experiment inheriting from `base` with `section.key` → value set, preceded by
    `header` as comment lines."""
    body = yaml.safe_dump({BASE_KEY: base, **set_values({}, dict(sorted(values.items())))}, sort_keys=False)
    comments = "".join(f"# {line}\n" for line in header)
    return comments + body
