"""Predict runs as records: the one way a stage logs predictions it has made (per-image files already
written to a folder, in the layout of `kit.inference.artifacts`), used by `kit predict` and by the
ensemble's own predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kit.tracking import store
from kit.tracking.schema import CONFIG_FILE, Role, Tag, role_tags


def record_predict_run(
    experiment: str,
    name: str,
    kind: str,
    folder: Path,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    command: str,
    started_at: float,
    config_yaml: str | None = None,
    manifest: Path | None = None,
    dataset_name: str = "",
    parent_run_id: str | None = None,
    texts: Mapping[str, str] | None = None,
) -> str:
    """Log a predict run of `kind` in MLflow experiment `experiment` whose files are under `folder`:
    params, the config, the dataset's `manifest` (as an MLflow dataset input), every file, `metrics`;
    the run starts at `started_at` (unix seconds, when the predictions began). Returns the run id."""
    import mlflow

    with store.start_run(
        experiment,
        command,
        run_name=f"{name}-predict-{kind}",
        tags=role_tags(Role.PREDICT, **{Tag.PREDICT_KIND: kind}, **tags),
        parent_run_id=parent_run_id,
        started_at=started_at,
    ) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        if config_yaml is not None:
            mlflow.log_text(config_yaml, CONFIG_FILE)
        for path, text in (texts or {}).items():
            mlflow.log_text(text, path)
        if manifest is not None:
            store.log_dataset(manifest, name=dataset_name, context="inference")
        mlflow.log_artifacts(str(folder))
        mlflow.log_metrics(dict(metrics))
    return run.info.run_id
