"""MLflow, the system of record: the store and run lifecycle (`store`) and the run schema (`schema`).

Stages use this package; building blocks never do (checked by the import contracts in pyproject.toml).
"""

from kit.tracking.store import (
    HOST_TAG,
    PID_TAG,
    STORE_DIR,
    configure,
    ensure_experiment,
    find_runs,
    find_runs_in,
    git_state,
    is_live,
    is_stale,
    latest_run,
    log_dataset,
    package_versions,
    standard_tags,
    start_run,
    status_text,
    tracking_uri,
)

__all__ = [
    "HOST_TAG",
    "PID_TAG",
    "STORE_DIR",
    "configure",
    "ensure_experiment",
    "find_runs",
    "find_runs_in",
    "git_state",
    "is_live",
    "is_stale",
    "latest_run",
    "log_dataset",
    "package_versions",
    "standard_tags",
    "start_run",
    "status_text",
    "tracking_uri",
]
