"""Run listings for `kit runs`: training parent runs with their folds' validation scores; a search study
as one line (`studies`), expanded into its trials (`study_trials`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kit import tracking
from kit.tracking.schema import Role, Tag, fold_runs


def leaderboard(experiment: str | None = None, limit: int = 20) -> pd.DataFrame:
    """One row per training parent run: experiment, run, folds, best val mAP mean ± sd, epochs, duration,
    status ("RUNNING (stale?)" when the run's process is gone, `tracking.is_stale`); newest first.
    `experiment` restricts it to one MLflow experiment. The training runs of search trials are left out
    (their study is one line of `studies`)."""
    experiments = [e for e in _experiments(experiment) if Tag.STUDY not in e.tags]
    runs = _search(experiments, Role.TRAIN, limit)
    names = {e.experiment_id: e.name for e in experiments}
    rows = []
    for run in runs:
        children = fold_runs(run, status=None)
        maps = [c.data.metrics["best_val_map"] for c in children if "best_val_map" in c.data.metrics]
        epochs = [int(c.data.params.get("epochs_run", 0)) for c in children]
        rows.append(
            {
                "experiment": names[run.info.experiment_id],
                "run": run.info.run_id[:8],
                "folds": run.data.tags.get(Tag.FOLDS, ""),
                "val mAP": f"{np.mean(maps):.4f} ± {np.std(maps):.4f}" if maps else "-",
                "epochs": sum(epochs),
                "duration": _duration(run),
                "status": tracking.status_text(run),
                "started": _started(run),
            }
        )
    return pd.DataFrame(rows)


def studies(experiment: str | None = None, limit: int = 20) -> pd.DataFrame:
    """One row per search study (its parent run): the study's MLflow experiment, run, the experiment it
    searches, folds, trials by state, the best OOF mAP and its trial, status; newest first."""
    experiments = [e for e in _experiments(experiment) if Tag.STUDY in e.tags]
    names = {e.experiment_id: e.name for e in experiments}
    rows = []
    for run in _search(experiments, Role.STUDY, limit):
        trials = _trial_runs(run.info.experiment_id)
        best = max(
            (t for t in trials if "oof_map_tuned" in t.data.metrics),
            key=lambda t: t.data.metrics["oof_map_tuned"],
            default=None,
        )
        states = pd.Series([t.data.tags.get(Tag.TRIAL_STATE, "?") for t in trials]).value_counts()
        rows.append(
            {
                "experiment": names[run.info.experiment_id],
                "run": run.info.run_id[:8],
                "searches": run.data.params.get("exp", ""),
                "folds": run.data.params.get("folds", ""),
                "trials": ", ".join(f"{n} {state.lower()}" for state, n in states.items()) or "0",
                "best OOF mAP": f"{best.data.metrics['oof_map_tuned']:.4f}" if best else "-",
                "best trial": best.data.tags.get(Tag.TRIAL, "") if best else "-",
                "status": tracking.status_text(run),
                "started": _started(run),
            }
        )
    return pd.DataFrame(rows)


def study_trials(experiment: str) -> pd.DataFrame:
    """The trials of the study whose MLflow experiment is `experiment`, by trial number: run, state,
    OOF mAP after tuned post-processing, fold val mAP, the sampled values (one per line), duration,
    status."""
    (exp,) = _experiments(experiment) or [None]
    if exp is None or Tag.STUDY not in exp.tags:
        return pd.DataFrame()
    rows = []
    for run in _trial_runs(exp.experiment_id):
        metrics = run.data.metrics
        rows.append(
            {
                "trial": int(run.data.tags.get(Tag.TRIAL, -1)),
                "run": run.info.run_id[:8],
                "state": run.data.tags.get(Tag.TRIAL_STATE, "?"),
                "OOF mAP": f"{metrics['oof_map_tuned']:.4f}" if "oof_map_tuned" in metrics else "-",
                "val mAP": f"{metrics['cv_val_map_mean']:.4f}" if "cv_val_map_mean" in metrics else "-",
                "values": "\n".join(f"{k}={_short(v)}" for k, v in sorted(run.data.params.items())),
                "duration": _duration(run),
                "status": tracking.status_text(run),
            }
        )
    return pd.DataFrame(rows).sort_values("trial", ignore_index=True) if rows else pd.DataFrame()


def is_study(experiment: str) -> bool:
    """Whether MLflow experiment `experiment` holds a search study."""
    return any(Tag.STUDY in e.tags for e in _experiments(experiment))


def _experiments(name: str | None) -> list[Any]:
    client = tracking.configure().MlflowClient()
    experiments = client.search_experiments()
    return [e for e in experiments if name is None or e.name == name]


def _search(experiments: list[Any], role: str, limit: int) -> list[Any]:
    if not experiments:
        return []
    return (
        tracking.configure()
        .MlflowClient()
        .search_runs(
            [e.experiment_id for e in experiments],
            filter_string=f"tags.`{Tag.ROLE}` = '{role}'",
            order_by=["attributes.start_time DESC"],
            max_results=limit,
        )
    )


def _trial_runs(experiment_id: str) -> list[Any]:
    return tracking.find_runs_in(experiment_id, tags={Tag.ROLE: Role.TRIAL}, status=None)


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def _duration(run: Any) -> str:
    end = run.info.end_time or run.info.start_time
    return f"{(end - run.info.start_time) / 1000:.0f} s"


def _started(run: Any) -> str:
    return pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M")
