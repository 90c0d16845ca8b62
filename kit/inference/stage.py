"""`kit predict` as a library call: the fold models of a train run → probability maps and label images.

What is predicted, and by which models:
- a split of the experiment's dataset (`split="test"`): every fold model, probabilities averaged;
- out of fold (`oof=True`): each fold model predicts exactly the ids of its `val_ids.txt`, the images it
  did not train on, so the maps are honest inputs for tuning and for the ensemble;
- any folder (`input_dir`): a DSB-layout folder or plain image files (`kit.inference.inputs`), all models.

Each image goes through `normalize_image` (as in training), the `Predictor` (tiling with Gaussian
blending, TTA and scales from `cfg.inference`) and `instances_from_probs` (`cfg.postprocess`). The
outputs are artifacts of one predict run in the experiment's MLflow experiment, laid out as in
`kit.inference.artifacts`, tagged kit.role=predict, kit.predict_kind, kit.train_run_id (the parent
train run consumed) and kit.fold_runs (fold:run of every model used); predictions.csv records per image
which folds and fold runs predicted it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit import tracking
from kit.config import ExperimentConfig
from kit.data.normalize import normalize_image
from kit.errors import ConfigError, DataError
from kit.fileio import atomic_write_text, read_image
from kit.inference.artifacts import (
    INDEX_COLUMNS,
    INDEX_FILE,
    INSTANCE_COLUMNS,
    INSTANCES_FILE,
    instance_rows,
    write_labels,
    write_probs,
)
from kit.inference.runs import PREDICT_ROLE, FoldModel, find_train_run, fold_models, train_config
from kit.inference.tta import TTA_MODES

log = logging.getLogger(__name__)


@dataclass
class PredictOutcome:
    """What a predict run produced: its index (one row per image) and instance table."""

    run_id: str
    experiment: str
    kind: str
    train_run_id: str
    index: pd.DataFrame
    instances: pd.DataFrame


@dataclass(frozen=True)
class _Job:
    image_id: str
    split: str
    source: str
    load: Callable[[], np.ndarray]


def predict_experiment(
    cfg: ExperimentConfig,
    *,
    split: str | None = None,
    oof: bool = False,
    input_dir: str | Path | None = None,
    train_run_id: str | None = None,
    tta: str | None = None,
    device: str | None = None,
    progress: bool = True,
    command: str = "predict",
) -> PredictOutcome:
    """Predict one of: `split` (default "test"), out of fold (`oof`), or the images of `input_dir`.

    The models are the folds of train run `train_run_id`, by default the newest finished train run of
    `cfg.mlflow_experiment`. `tta` overrides `cfg.inference.tta`; `device` defaults to CUDA when present.
    See the module docstring for the outputs.
    """
    chosen = [
        name
        for name, on in (("--split", split is not None), ("--oof", oof), ("--input", input_dir is not None))
        if on
    ]
    if len(chosen) > 1:
        raise ConfigError(f"choose one of --split, --oof and --input, got {' and '.join(chosen)}")
    tta = tta or cfg.inference.tta
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown TTA mode {tta!r}; choose one of {', '.join(TTA_MODES)}")
    experiment = cfg.mlflow_experiment
    train = find_train_run(experiment, train_run_id)
    folds = fold_models(train)
    kind, groups, dataset = _plan(cfg, train, folds, split=split, oof=oof, input_dir=input_dir)
    tuned = tuned_postprocess(train) if cfg.postprocess.tuned and kind != "oof" else None
    postprocess = {**cfg.postprocess.model_dump(exclude={"tuned"}), **(tuned or {}).get("params", {})}
    tags = {
        "kit.role": PREDICT_ROLE,
        "kit.predict_kind": kind,
        "kit.train_run_id": train.info.run_id,
        "kit.fold_runs": ",".join(f"{f.fold}:{f.run_id}" for f in folds),
    }
    import mlflow

    with tracking.start_run(experiment, command, run_name=f"{cfg.name}-predict-{kind}", tags=tags) as run:
        inf = cfg.inference
        mlflow.log_params(
            {
                "tta": tta,
                "scales": ",".join(map(str, inf.scales)),
                "tile": inf.tile,
                "overlap": inf.overlap,
                "split": kind if kind in ("test", "validation") else "",
                "input": str(Path(input_dir).resolve())[:500] if input_dir else "",
                "n_models": len(folds),
                **{f"instances.{k}": v for k, v in cfg.instances.model_dump().items()},
                "postprocess_tuned_by": (tuned or {}).get("oof_predict_run", ""),
            }
        )
        mlflow.log_text(cfg.to_yaml(), "config.yaml")
        if dataset is not None:
            tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="inference")
        with tempfile.TemporaryDirectory(prefix=f"kit-predict-{cfg.name}-") as tmp:
            root = Path(tmp)
            index, instances = _predict_groups(groups, cfg, postprocess, tta, device, root, progress)
            if kind == "oof" and cfg.postprocess.tuned and _semantic(index, root):
                postprocess, instances = _tune_on_oof(
                    root, index, dataset, postprocess, run.info.run_id, train
                )
            mlflow.log_params({f"postprocess.{k}": v for k, v in postprocess.items()})
            atomic_write_text(root / "postprocess.json", json.dumps(postprocess, indent=2))
            atomic_write_text(root / INDEX_FILE, index.to_csv(index=False))
            atomic_write_text(root / INSTANCES_FILE, instances.to_csv(index=False))
            mlflow.log_artifacts(str(root))
        mlflow.log_metrics(
            {
                "n_images": len(index),
                "n_instances": int(index["n_instances"].sum()),
                "instances_per_image": float(index["n_instances"].mean()),
                "seconds_per_image": float(index["seconds"].mean()),
            }
        )
    return PredictOutcome(run.info.run_id, experiment, kind, train.info.run_id, index, instances)


def _plan(
    cfg: ExperimentConfig,
    train: Any,
    folds: list[FoldModel],
    *,
    split: str | None,
    oof: bool,
    input_dir: str | Path | None,
) -> tuple[str, list[tuple[list[FoldModel], list[_Job]]], Any]:
    """(kind, groups of (fold models, images they predict), dataset or None) of a predict request."""
    if input_dir is not None:
        return "input", [(folds, _input_jobs(Path(input_dir)))], None
    from kit.training.stage import open_dataset

    dataset = open_dataset(cfg)
    trained_digest = train.data.tags.get("kit.dataset_digest")
    if trained_digest and trained_digest != dataset.digest:
        log.warning("%s differs from the dataset train run %s trained on", dataset.root, train.info.run_id)
    if oof:
        return "oof", _oof_groups(dataset, folds), dataset
    split = split or "test"
    _check_not_trained_on(split, train)
    return split, [(folds, _split_jobs(dataset, split))], dataset


def _check_not_trained_on(split: str, train: Any) -> None:
    trained = train_config(train).get("data", {}).get("train_splits", ["train"])
    if split in trained:
        raise ConfigError(
            f"the fold models of train run {train.info.run_id} trained on split '{split}'; averaging them over "
            f"it would score images they saw. Use --oof for out-of-fold predictions of those images"
        )


def _split_jobs(dataset: Any, split: str) -> list[_Job]:
    ids = dataset.ids(split)
    if not ids:
        raise DataError(f"{dataset.root}: split '{split}' has no images")
    return [_Job(i, split, str(dataset.image_path(i)), lambda i=i: dataset.load(i).image) for i in ids]


def _oof_groups(dataset: Any, folds: list[FoldModel]) -> list[tuple[list[FoldModel], list[_Job]]]:
    """One group per fold model holding exactly its val_ids; an id in two folds' val_ids is an error."""
    owner: dict[str, int] = {}
    groups = []
    for fold in folds:
        for image_id in fold.val_ids:
            if image_id in owner:
                raise DataError(
                    f"image {image_id!r} is in the val_ids.txt of fold {owner[image_id]} and fold {fold.fold}"
                )
            if image_id not in dataset:
                raise DataError(
                    f"image {image_id!r} of fold run {fold.run_id} is not in {dataset.root}; was the dataset "
                    f"re-imported since training? Point --set data.root at the data the run trained on"
                )
            owner[image_id] = fold.fold
        jobs = [
            _Job(
                i, str(dataset.row(i)["split"]), str(dataset.image_path(i)), lambda i=i: dataset.load(i).image
            )
            for i in fold.val_ids
        ]
        groups.append(([fold], jobs))
    return groups


def _input_jobs(folder: Path) -> list[_Job]:
    from kit.inference.inputs import folder_images

    return [_Job(im.id, "", str(im.path), lambda p=im.path: read_image(p)) for im in folder_images(folder)]


def _load_segmenter(
    folds: list[FoldModel], cfg: ExperimentConfig, postprocess: dict, tta: str, device: str | None
):
    """A segmenter over the best checkpoints of `folds` with the experiment's inference settings: maps
    averaged (semantic models, then the watershed with `postprocess`) or detections merged by mask
    voting (instance models)."""
    import torch

    from kit.inference.segmenter import build_segmenter
    from kit.models.checkpoint import load_checkpoint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = [load_checkpoint(f.checkpoint, map_location=device) for f in folds]
    models = [model for model, _, _ in loaded]
    signatures = {(m.kit_cfg["task"], tuple(m.kit_cfg["channels"]), m.kit_cfg["in_channels"]) for m in models}
    if len(signatures) > 1:
        raise ConfigError(
            f"the fold models disagree on task/output/input channels {sorted(signatures)}; cannot average"
        )
    mode = loaded[0][1].get("training", {}).get("loss", {}).get("mode", "softmax")
    return build_segmenter(models, cfg, mode=mode, tta=tta, device=device, postprocess=postprocess)


def _predict_groups(
    groups: list[tuple[list[FoldModel], list[_Job]]],
    cfg: ExperimentConfig,
    postprocess: dict,
    tta: str,
    device: str | None,
    root: Path,
    progress: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every job of every group with its group's models; write the per-image files under `root`."""
    from tqdm.auto import tqdm

    rows, instances = [], []
    bar = tqdm(total=sum(len(jobs) for _, jobs in groups), desc="predict", unit="image", disable=not progress)
    for folds, jobs in groups:
        if not jobs:
            continue
        segmenter = _load_segmenter(folds, cfg, postprocess, tta, device)
        fold_names = ";".join(str(f.fold) for f in folds)
        for job in jobs:
            started = time.perf_counter()
            image = job.load()
            try:
                normalized = normalize_image(image, segmenter.in_channels)
            except ValueError as exc:
                raise DataError(f"{job.source}: {exc}") from None
            seg = segmenter(normalized)
            labels = seg.labels
            rows.append(
                {
                    "image_id": job.image_id,
                    "split": job.split,
                    "height": labels.shape[0],
                    "width": labels.shape[1],
                    "n_instances": int(labels.max(initial=0)),
                    "folds": fold_names,
                    "model_runs": ";".join(f.run_id for f in folds),
                    "probs": write_probs(root, job.image_id, seg.probs, seg.channels),
                    "labels": write_labels(root, job.image_id, labels),
                    "source": job.source,
                    "seconds": time.perf_counter() - started,
                }
            )
            instances.extend(instance_rows(job.image_id, labels, seg.foreground(), fold_names, seg.scores))
            bar.update(1)
        del segmenter
    bar.close()
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS)), pd.DataFrame(
        instances, columns=list(INSTANCE_COLUMNS)
    )


TUNED_FILE = "postprocess_tuned.json"


def tuned_postprocess(train: Any) -> dict | None:
    """The post-processing tuned for train run `train` by its newest `kit predict --oof` (the contents of
    its postprocess_tuned.json: params, score, start_score, oof_predict_run), or None."""
    import mlflow

    try:
        return json.loads(mlflow.artifacts.load_text(f"{train.info.artifact_uri}/{TUNED_FILE}"))
    except Exception:  # never tuned: MLflow raises several types for a missing artifact
        return None


def _semantic(index: pd.DataFrame, root: Path) -> bool:
    """Whether the predict run under `root` holds semantic maps (a "body" channel) to re-segment."""
    from kit.inference.artifacts import read_probs

    return not index.empty and "body" in read_probs(root / index["probs"].iloc[0])[1]


def _tune_on_oof(
    root: Path, index: pd.DataFrame, dataset: Any, start: dict, run_id: str, train: Any
) -> tuple[dict, pd.DataFrame]:
    """Tune the watershed on the out-of-fold maps under `root`, rewrite every label image with the best
    settings and record them with this run and the train run; (settings, new instance table)."""
    import mlflow

    from kit.inference.artifacts import read_probs
    from kit.inference.postprocess import instances_from_probs
    from kit.inference.tuning import tune_postprocess

    maps = {row.image_id: read_probs(root / row.probs) for row in index.itertuples(index=False)}
    items = [(probs, channels, np.asarray(dataset.load(i).labels)) for i, (probs, channels) in maps.items()]
    result = tune_postprocess(items, start)
    params = {**start, **result.params}
    log.info(
        "post-processing tuned on %d OOF images: %.4f → %.4f %s",
        len(items),
        result.start_score,
        result.score,
        result.params,
    )
    instances = []
    for k, row in enumerate(index.itertuples(index=False)):
        probs, channels = maps[row.image_id]
        labels = instances_from_probs(probs, channels, **params)
        write_labels(root, row.image_id, labels)
        index.loc[k, "n_instances"] = int(labels.max(initial=0))
        body = probs[list(channels).index("body")]
        instances.extend(instance_rows(row.image_id, labels, body, row.folds, None))
    record = {
        "params": result.params,
        "score": result.score,
        "start_score": result.start_score,
        "n_images": len(items),
        "oof_predict_run": run_id,
    }
    atomic_write_text(root / "tuning.csv", result.trials.to_csv(index=False))
    atomic_write_text(root / TUNED_FILE, json.dumps(record, indent=2))
    mlflow.log_metrics({"oof_map_untuned": result.start_score, "oof_map_tuned": result.score})
    tracking.configure().MlflowClient().log_artifact(train.info.run_id, str(root / TUNED_FILE))
    return params, pd.DataFrame(instances, columns=list(INSTANCE_COLUMNS))
