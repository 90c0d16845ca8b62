"""Run listings for `kit runs`: training parent runs with their folds' validation scores."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kit import tracking
from kit.tracking.schema import Role, Tag, fold_runs


def leaderboard(experiment: str | None = None, limit: int = 20) -> pd.DataFrame:
    """One row per training parent run: experiment, run, folds, best val mAP mean ± sd, epochs, duration,
    status ("RUNNING (stale?)" when the run's process is gone, `tracking.is_stale`); newest first.
    `experiment` restricts it to one MLflow experiment."""
    mlflow = tracking.configure()
    client = mlflow.MlflowClient()
    experiments = client.search_experiments()
    if experiment is not None:
        experiments = [e for e in experiments if e.name == experiment]
    ids = [e.experiment_id for e in experiments]
    names = {e.experiment_id: e.name for e in experiments}
    if not ids:
        return pd.DataFrame()
    runs = client.search_runs(
        ids,
        filter_string=f"tags.`{Tag.ROLE}` = '{Role.TRAIN}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    rows = []
    for run in runs:
        children = fold_runs(run, status=None)
        maps = [c.data.metrics["best_val_map"] for c in children if "best_val_map" in c.data.metrics]
        epochs = [int(c.data.params.get("epochs_run", 0)) for c in children]
        end = run.info.end_time or run.info.start_time
        rows.append(
            {
                "experiment": names[run.info.experiment_id],
                "run": run.info.run_id[:8],
                "folds": run.data.tags.get(Tag.FOLDS, ""),
                "val mAP": f"{np.mean(maps):.4f} ± {np.std(maps):.4f}" if maps else "-",
                "epochs": sum(epochs),
                "duration": f"{(end - run.info.start_time) / 1000:.0f} s",
                "status": tracking.status_text(run),
                "started": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
            }
        )
    return pd.DataFrame(rows)
