"""Trained models into MLflow: each finished train and ensemble run logs an MLflow Model, and
`register` adds one to the Model Registry.

The MLflow Model is logged from code (`kit/hub/pyfunc_model.py`, no pickled object): a pyfunc whose
artifact `kit_model` is the kit model folder, so `mlflow.pyfunc.load_model(uri).predict(...)` and
`mlflow models serve` work in any process with kit installed, without kit's training code. What it
takes and returns is `kit.hub.serve`'s to say. Each Model is named after its experiment and role
(`unet_lite0-train`, `ensemble-ensemble`), so the MLflow UI tells them apart.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kit.errors import ConfigError, RunNotFoundError
from kit.hub.load import KIT_MODEL_ARTIFACT, model_of_run
from kit.hub.serve import example_input
from kit.inference.contract import SegmentationModel
from kit.tracking import store
from kit.tracking.schema import Role, find_role_runs, find_train_run, get_run, role_of

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


def model_name(experiment: str, role: str) -> str:
    """The name of the MLflow Model a run of `role` in `experiment` logs, e.g. "unet_lite0-train"."""
    return f"{experiment}-{role}"


def log_run_model(run_id: str, model: SegmentationModel) -> str:
    """Log `model` as the MLflow Model of run `run_id` (which may be finished); its model URI."""
    import mlflow

    store.configure()
    run = get_run(run_id)
    name = model_name(run.data.tags.get(store.EXPERIMENT_TAG, "kit"), role_of(run) or "model")
    with tempfile.TemporaryDirectory(prefix="kit-model-") as tmp:
        folder = model.save(Path(tmp) / KIT_MODEL_ARTIFACT)
        active = mlflow.active_run()
        resume = active is None or active.info.run_id != run_id
        if resume:
            mlflow.start_run(run_id=run_id, nested=active is not None)
        try:
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(PYFUNC_CODE),
                artifacts={KIT_MODEL_ARTIFACT: str(folder)},
                input_example=example_input(model.in_channels),
                signature=False,  # no schema describes any image or batch (kit.hub.serve)
                pip_requirements=_requirements(),
            )
        finally:
            if resume:
                mlflow.end_run()
    return info.model_uri


def log_train_model(run_id: str) -> str:
    """Log train run `run_id`'s fold models (with its tuned thresholds, if any) as its MLflow Model; the
    model URI. Called when training ends and again when `kit predict --oof` has tuned it."""
    return log_run_model(run_id, model_of_run(get_run(run_id), device="cpu"))


def _requirements() -> list[str]:
    """What a serving environment installs: kit itself (whose dependencies bring the rest)."""
    from kit import __version__

    return [f"kit=={__version__}"]


def newest_model_uri(run: Any) -> str:
    """The URI of the newest MLflow Model logged by `run`; RunNotFoundError when it logged none."""
    import mlflow

    store.configure()
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        output_format="list",
    )
    if not found:
        raise RunNotFoundError(f"run {run.info.run_id} logged no MLflow Model")
    return found[0].model_uri


def register(experiment: str, name: str, run_id: str | None = None) -> tuple[str, str]:
    """Register the MLflow Model of `run_id` (default: the experiment's newest ensemble or train run)
    under `name` in the Model Registry; (model URI, version)."""
    import mlflow

    if run_id is not None:
        run = get_run(run_id)
    else:
        ensembles = find_role_runs(experiment, Role.ENSEMBLE, max_results=1)
        run = ensembles[0] if ensembles else find_train_run(experiment)
    if role_of(run) not in (Role.TRAIN, Role.ENSEMBLE):
        raise ConfigError(f"run {run.info.run_id} is a {role_of(run)} run; register a train or ensemble run")
    uri = newest_model_uri(run)
    store.configure()
    version = mlflow.register_model(uri, name)
    return uri, str(version.version)
