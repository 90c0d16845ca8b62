"""MLflow, the system of record: the store and run lifecycle (`store`) and the run schema (`schema`).

Stages use this package; building blocks never do (checked by the import contracts in pyproject.toml).
"""

from kit.tracking.store import (
    STORE_DIR,
    configure,
    ensure_experiment,
    find_runs,
    find_runs_in,
    git_state,
    latest_run,
    log_dataset,
    package_versions,
    standard_tags,
    start_run,
    tracking_uri,
)

__all__ = [
    "STORE_DIR",
    "configure",
    "ensure_experiment",
    "find_runs",
    "find_runs_in",
    "git_state",
    "latest_run",
    "log_dataset",
    "package_versions",
    "standard_tags",
    "start_run",
    "tracking_uri",
]
