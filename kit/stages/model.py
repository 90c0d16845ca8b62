"""Trained models outside the training project: load one from anywhere, log it as an MLflow Model,
register it.

`load_segmenter(source)` takes what a user has at hand and returns a `kit.Segmenter` (or, for an
ensemble, a `kit.EnsembleSegmenter`), whose `predict(image)` gives the instance label image:
- a kit checkpoint file (`best.pt`), several, or a folder of them, or a model folder (`kit_model.json`);
- a run id: a train run (its fold models), a fold run, or an ensemble run;
- an experiment name: its newest finished train run (ensemble run for an ensemble experiment);
- an MLflow model URI: `models:/name/version`, `models:/m-...`, `runs:/<run id>/model`.
Models of runs carry the post-processing tuned out of fold.

Every finished train and ensemble run logs an MLflow Model (`log_run_model`): a pyfunc whose
artifacts are a model folder, so `mlflow.pyfunc.load_model(uri).predict(image)` works in any process
with kit installed, without kit's training code. Its input is one image array (H×W or H×W×C, any dtype)
or a batch: an (N, H, W[, C]) array, or a 1-D object array of images of different sizes; its output
the label image(s).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kit.config import config_from_dict
from kit.errors import ConfigError, KitError, RunNotFoundError
from kit.inference.segmenter import MODEL_FILE, Segmenter, read_model_info
from kit.tracking import store
from kit.tracking.schema import (
    MODEL_NAME,
    TUNED_POSTPROCESS_FILE,
    Role,
    Tag,
    find_role_runs,
    find_train_run,
    fold_models,
    get_run,
    load_json_artifact,
    role_of,
    run_config,
)

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
KIT_MODEL_ARTIFACT = "kit_model"
ENSEMBLE_MODEL_DIR = "model"  # the LightGBM files of an ensemble run (kit.stages.ensemble)


def load_segmenter(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    tta: str | None = None,
    device: str | None = None,
) -> Any:
    """A `Segmenter` (or `EnsembleSegmenter`) from `source`; see the module docstring."""
    if not isinstance(source, (str, os.PathLike)):
        return Segmenter.from_checkpoints(source, tta=tta, device=device)
    text = str(source)
    path = Path(text).expanduser()
    if text.startswith(("models:/", "runs:/")):
        return _from_model_uri(text, tta, device)
    if path.exists():
        if path.is_dir() and (path / MODEL_FILE).is_file():
            return load_model_folder(path, tta=tta, device=device)
        return Segmenter.from_checkpoints(path, tta=tta, device=device)
    if _RUN_ID.match(text):
        return model_of_run(get_run(text), tta=tta, device=device)
    if "/" in text or text.endswith((".pt", ".pth")):
        raise KitError(f"no model at {path}: the file or folder does not exist")
    return model_of_experiment(text, tta=tta, device=device)


def load_model_folder(folder: Path, *, tta: str | None = None, device: str | None = None) -> Any:
    """A model folder (`kit_model.json`) of either kind."""
    kind = read_model_info(folder)["kind"]
    if kind == "ensemble":
        from kit.ensemble.segmenter import EnsembleSegmenter

        return EnsembleSegmenter.load(folder, device=device)
    return Segmenter.load(folder, tta=tta, device=device)


def model_of_experiment(experiment: str, *, tta: str | None = None, device: str | None = None) -> Any:
    """The model of MLflow experiment `experiment`'s newest finished ensemble run, else train run."""
    ensembles = find_role_runs(experiment, Role.ENSEMBLE, max_results=1)
    if ensembles:
        return model_of_run(ensembles[0], tta=tta, device=device)
    return model_of_run(find_train_run(experiment), tta=tta, device=device)


def model_of_run(run: Any, *, tta: str | None = None, device: str | None = None) -> Any:
    """The model a train, fold or ensemble run made (with its tuned post-processing)."""
    role = role_of(run)
    if role == Role.ENSEMBLE:
        return _ensemble_of_run(run, device)
    if role == Role.TRAIN_FOLD:
        parent = get_run(run.data.tags[Tag.PARENT_RUN])
        folds = [f for f in fold_models(parent) if f.run_id == run.info.run_id]
        train = parent
    elif role == Role.TRAIN:
        folds, train = fold_models(run), run
    else:
        raise RunNotFoundError(
            f"run {run.info.run_id} is a {role or 'non-kit'} run; give a train, fold or ensemble run"
        )
    if not folds:
        raise RunNotFoundError(f"run {run.info.run_id} has no finished fold model")
    config = config_from_dict(run_config(train), f"config of train run {train.info.run_id}")
    tuned = load_json_artifact(train, TUNED_POSTPROCESS_FILE) if config.postprocess.tuned else None
    from kit.models.checkpoint import load_checkpoint

    models = [load_checkpoint(f.checkpoint, map_location=device or "cpu")[0] for f in folds]
    return Segmenter(models, config, tta=tta, device=device, postprocess=(tuned or {}).get("params"))


def _ensemble_of_run(run: Any, device: str | None) -> Any:
    """An ensemble run's model: its LightGBM files and the models of the train runs behind its bases."""
    import mlflow

    from kit.ensemble.model import IoUModel
    from kit.ensemble.segmenter import EnsembleSegmenter

    bases = []
    for item in run.data.tags.get(Tag.BASE_OOF_RUNS, "").split(","):
        name, _, predict_id = item.partition(":")
        train_id = get_run(predict_id).data.tags.get(Tag.TRAIN_RUN)
        if not train_id:
            raise RunNotFoundError(f"base {name} of ensemble run {run.info.run_id} names no train run")
        bases.append((name, model_of_run(get_run(train_id), device=device)))
    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=ENSEMBLE_MODEL_DIR)
    return EnsembleSegmenter(bases, IoUModel.load(folder))


def _from_model_uri(uri: str, tta: str | None, device: str | None) -> Any:
    """The model folder inside an MLflow Model logged by `log_run_model`."""
    import mlflow

    store.configure()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:  # MLflow raises several types for an unknown name, version or run
        raise RunNotFoundError(
            f"cannot load model {uri} from {store.tracking_uri()}: {str(exc).splitlines()[0]}"
        ) from None
    folder = local / "artifacts" / KIT_MODEL_ARTIFACT
    if not (folder / MODEL_FILE).is_file():
        raise KitError(f"{uri} is not a kit model (no artifacts/{KIT_MODEL_ARTIFACT}/{MODEL_FILE})")
    return load_model_folder(folder, tta=tta, device=device)


def log_run_model(run_id: str, model: Any, input_example: np.ndarray) -> str:
    """Log `model` as the MLflow Model of run `run_id` (which may be finished); its model URI."""
    import mlflow

    from kit.stages.pyfunc import KitPyfuncModel, signature

    store.configure()
    with tempfile.TemporaryDirectory(prefix="kit-model-") as tmp:
        folder = model.save(Path(tmp) / KIT_MODEL_ARTIFACT)
        active = mlflow.active_run()
        resume = active is None or active.info.run_id != run_id
        if resume:
            mlflow.start_run(run_id=run_id, nested=active is not None)
        try:
            with warnings.catch_warnings():
                # MLflow asks for type hints on predict; kit's input (any image, or a batch) has none to give.
                warnings.filterwarnings("ignore", message=".*type hints.*")
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME,
                    python_model=KitPyfuncModel(),
                    artifacts={KIT_MODEL_ARTIFACT: str(folder)},
                    signature=signature(),
                    input_example=input_example,
                    pip_requirements=_requirements(),
                )
        finally:
            if resume:
                mlflow.end_run()
    return info.model_uri


def example_image(in_channels: int, size: int = 64) -> np.ndarray:
    """A blank uint8 image of the input a model takes: the input example of its MLflow Model."""
    shape = (size, size) if in_channels == 1 else (size, size, in_channels)
    return np.zeros(shape, dtype=np.uint8)


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


EXPORT_FORMATS = ("torchscript", "onnx")


def export_model(
    source: str,
    out_dir: Path,
    images: Sequence[np.ndarray],
    *,
    formats: Sequence[str] = EXPORT_FORMATS,
) -> list[dict]:
    """Export the network of every fold model of `source` (a U-Net model, anything `load_segmenter`
    takes) as `formats` into `out_dir`, and check each file against PyTorch on `images` (raw images,
    normalised as in training): one record per file with its largest absolute difference."""
    import json

    import torch

    from kit.data.normalize import normalize_image
    from kit.fileio import atomic_write_text
    from kit.inference import export

    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise ConfigError(
            f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(EXPORT_FORMATS)}"
        )
    model = load_segmenter(source, device="cpu")
    if not isinstance(model, Segmenter) or model.task != "semantic":
        raise ConfigError(f"{source}: only U-Net/FPN models export (their network); this is not one")
    if not images:
        raise ConfigError("exporting needs at least one image to check the exported files on")
    mode = model.config.training.loss.mode
    batches = []
    for image in images:
        x = (
            normalize_image(np.asarray(image), model.in_channels).transpose(2, 0, 1)[None].astype(np.float32)
            / 255
        )
        batches.append(export.pad_to(np.ascontiguousarray(x), model.models[0].kit_cfg["output_stride"]))
    writers = {
        "torchscript": (export.export_torchscript, export.run_torchscript, ".pt"),
        "onnx": (export.export_onnx, export.run_onnx, ".onnx"),
    }
    records = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, network in enumerate(model.models):
        net = export.ProbabilityNet(network, mode)
        example = torch.from_numpy(batches[0])
        with torch.no_grad():
            expected = [net(torch.from_numpy(b)).numpy() for b in batches]
        for fmt in formats:
            write, run, suffix = writers[fmt]
            path = write(net, out_dir / f"model{k}{suffix}", example)
            diff = max(float(np.abs(run(path, b) - e).max()) for b, e in zip(batches, expected, strict=True))
            records.append(
                {
                    "file": path.name,
                    "format": fmt,
                    "fold_model": k,
                    "max_abs_diff": diff,
                    "checked_on": [list(b.shape) for b in batches],
                }
            )
    info = {
        "source": str(source),
        "input": "float32 (N, C, H, W) in [0, 1]: normalize_image(image) / 255, H and W multiples of "
        f"{model.models[0].kit_cfg['output_stride']} (pad at the bottom/right)",
        "output": f"probabilities (N, K, H, W), channels {list(net.channels)}",
        "not_included": "normalisation, tiling, test-time augmentation, fold averaging, watershed post-processing",
        "postprocess": model.postprocess,
        "files": records,
    }
    atomic_write_text(out_dir / "export.json", json.dumps(info, indent=2))
    return records
