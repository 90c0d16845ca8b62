"""Load a trained model from whatever a user has at hand: `load_segmenter(source)` returns a
`kit.inference.contract.SegmentationModel` (a `kit.Segmenter`, or a `kit.EnsembleSegmenter` for an
ensemble), whose `predict(image)` gives the instance label image. `source` is:

- a kit checkpoint file (`best.pt`), several, or a folder of them, or a model folder (`kit_model.json`);
- a run id: a train run (its fold models), a fold run, or an ensemble run;
- an experiment name: its newest finished ensemble run, else its newest finished train run, else, for a
  family that works untrained (`classical`), the model its YAML in ./experiments describes;
- an MLflow model URI: `models:/name/version`, `models:/m-...`, `runs:/<run id>/<model name>`.

Models of runs carry the thresholds tuned out of fold.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kit.config import config_from_dict
from kit.errors import KitError, RunNotFoundError
from kit.inference.contract import SegmentationModel
from kit.inference.segmenter import MODEL_FILE, Segmenter, read_model_info
from kit.tracking import store
from kit.tracking.schema import (
    Role,
    Tag,
    find_role_runs,
    find_train_run,
    fold_models,
    get_run,
    local_artifact,
    role_of,
    run_config,
    tuned_thresholds,
)

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
KIT_MODEL_ARTIFACT = "kit_model"
"""The artifact of a logged MLflow Model that holds the kit model folder."""
ENSEMBLE_MODEL_DIR = "model"
"""The LightGBM files of an ensemble run (written by kit.stages.ensemble)."""


def load_segmenter(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    tta: str | None = None,
    device: str | None = None,
) -> SegmentationModel:
    """The model `source` names (see the module docstring); `tta` overrides its test-time augmentation."""
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


def load_model_folder(
    folder: Path, *, tta: str | None = None, device: str | None = None
) -> SegmentationModel:
    """A model folder (`kit_model.json`) of either kind."""
    kind = read_model_info(folder)["kind"]
    if kind == "ensemble":
        from kit.ensemble.segmenter import EnsembleSegmenter

        return EnsembleSegmenter.load(folder, device=device)
    return Segmenter.load(folder, tta=tta, device=device)


def model_of_experiment(
    experiment: str, *, tta: str | None = None, device: str | None = None
) -> SegmentationModel:
    """The model of MLflow experiment `experiment`'s newest finished ensemble run, else train run, else
    the untrained model of a family that needs no training (`untrained_model`)."""
    ensembles = find_role_runs(experiment, Role.ENSEMBLE, max_results=1)
    if ensembles:
        return model_of_run(ensembles[0], tta=tta, device=device)
    try:
        train = find_train_run(experiment)
    except RunNotFoundError:
        untrained = untrained_model(experiment, tta=tta, device=device)
        if untrained is None:
            raise
        return untrained
    return model_of_run(train, tta=tta, device=device)


def untrained_model(
    experiment: str, *, tta: str | None = None, device: str | None = None
) -> SegmentationModel | None:
    """The model of experiment `experiment` (its YAML in ./experiments) as it is before any training, when
    its family is usable so (`FittedModule.ready_untrained`: `classical` with its default parameters and the
    config's thresholds); None for every other family, or when there is no such YAML."""
    from kit.config import available_experiments, load_experiment
    from kit.models import build_model

    if experiment not in available_experiments():
        return None
    cfg = load_experiment(experiment)
    model = build_model(cfg)
    if not getattr(model, "ready_untrained", False):
        return None
    return Segmenter([model], cfg, tta=tta, device=device)


def model_of_run(run: Any, *, tta: str | None = None, device: str | None = None) -> SegmentationModel:
    """The model a train, fold or ensemble run made (with its tuned thresholds)."""
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
    tuned = tuned_thresholds(train) if config.postprocess.tuned else None
    from kit.models.checkpoint import load_checkpoint

    models = [load_checkpoint(f.checkpoint, map_location=device or "cpu")[0] for f in folds]
    return Segmenter(models, config, tta=tta, device=device, thresholds=tuned)


def _ensemble_of_run(run: Any, device: str | None) -> SegmentationModel:
    """An ensemble run's model: its LightGBM files and the models of the train runs behind its bases."""
    from kit.ensemble.model import IoUModel
    from kit.ensemble.segmenter import EnsembleSegmenter

    bases = []
    for item in run.data.tags.get(Tag.BASE_OOF_RUNS, "").split(","):
        name, _, predict_id = item.partition(":")
        train_id = get_run(predict_id).data.tags.get(Tag.TRAIN_RUN)
        if not train_id:
            raise RunNotFoundError(f"base {name} of ensemble run {run.info.run_id} names no train run")
        base = model_of_run(get_run(train_id), device=device)
        assert isinstance(base, Segmenter)
        bases.append((name, base))
    folder = local_artifact(run, ENSEMBLE_MODEL_DIR)
    return EnsembleSegmenter(bases, IoUModel.load(folder))


def _from_model_uri(uri: str, tta: str | None, device: str | None) -> SegmentationModel:
    """The model folder inside an MLflow Model logged by `kit.hub.log.log_run_model`."""
    import mlflow

    store.configure()
    # a model URI names a copy that MLflow makes; everything is read into memory before it goes
    with tempfile.TemporaryDirectory(prefix="kit-model-uri-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as exc:  # MLflow raises several types for an unknown name, version or run
            raise RunNotFoundError(
                f"cannot load model {uri} from {store.tracking_uri()}: {str(exc).splitlines()[0]}"
            ) from None
        folder = local / "artifacts" / KIT_MODEL_ARTIFACT
        if not (folder / MODEL_FILE).is_file():
            raise KitError(f"{uri} is not a kit model (no artifacts/{KIT_MODEL_ARTIFACT}/{MODEL_FILE})")
        return load_model_folder(folder, tta=tta, device=device)
