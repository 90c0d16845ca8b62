"""`kit predict` as a library call: the fold models of a train run → probability maps and label images.

What is predicted, and by which models:
- a split of the experiment's dataset (`split="test"`): every fold model, probabilities averaged;
- out of fold (`oof=True`): each fold model predicts exactly the ids of its `val_ids.txt`, the images it
  did not train on, so the maps are honest inputs for tuning and for the ensemble;
- any folder (`input_dir`): a DSB-layout folder, plain image files or Zarr folders, or one image file or
  OME-Zarr (`kit.inference.inputs`), all models.

Where and how (`ScaleOptions`, `kit.scale`): images run in this process or on a Dask cluster
(`--workers N`, `--scheduler ADDRESS`), each result written as soon as it is made; an image larger than
the block is predicted block by block into an OME-Zarr (`labels/<id>.ome.zarr`). The run records pixels,
blocks, workers, seconds and nuclei too large for the halo.

The predict stage is a loop over `kit.inference.segmenter.Segmenter` (the object a Python user gets from
`kit.load_segmenter`): one per group of fold models. Out-of-fold predictions of semantic models also tune
the watershed (`kit.inference.tuning`): the label images are made with the tuned settings, which are
stored with the train run (`postprocess_tuned.json`) and used by its later predictions unless
`postprocess.tuned` is false.

The outputs are the artifacts of one predict run (`record_predict_run`, laid out as in
`kit.inference.artifacts`), tagged with the train run consumed and every fold run used; predictions.csv
records per image which folds and fold runs predicted it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit.config import ExperimentConfig
from kit.data.dataset import NucleiDataset, open_dataset
from kit.errors import ConfigError, DataError
from kit.fileio import atomic_write_text, read_image
from kit.inference.artifacts import (
    INDEX_COLUMNS,
    INSTANCE_COLUMNS,
    INSTANCES_FILE,
    LABELS_DIR,
    LARGE_SUFFIX,
    POSTPROCESS_FILE,
    ArtifactWriter,
    prediction_metrics,
    read_probs,
    write_tables,
)
from kit.inference.contract import SegmentationModel
from kit.inference.segmenter import Segmenter, default_thresholds
from kit.inference.thresholds import Thresholds, with_overrides
from kit.inference.tta import check_tta
from kit.models import task_of
from kit.tracking.records import record_predict_run
from kit.tracking.schema import (
    TUNED_POSTPROCESS_FILE,
    FoldModel,
    Tag,
    find_train_run,
    fold_models,
    log_artifact_to,
    run_config,
    tuned_postprocess,
)

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
    """One image to predict: its id, split and file (or Zarr folder); picklable for Dask workers."""

    image_id: str
    split: str
    source: str


@dataclass(frozen=True)
class ScaleOptions:
    """Where images and blocks run (`kit.scale.open_executor`: `workers` local processes or the cluster at
    `scheduler`; None and None: this process) and the block-wise settings that override the model's
    (`kit.scale.BlockSettings`): an image larger than `block` on a side is predicted block by block."""

    workers: int | None = None
    scheduler: str | None = None
    block: int | None = None
    halo: int | None = None


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
    parent_run_id: str | None = None,
    scale: ScaleOptions = ScaleOptions(),
) -> PredictOutcome:
    """Predict one of: `split` (default "test"), out of fold (`oof`), or the images of `input_dir` (a
    folder, one image file or one Zarr/OME-Zarr folder).

    The models are the folds of train run `train_run_id`, by default the newest finished train run of
    `cfg.mlflow_experiment`. `tta` overrides `cfg.inference.tta`; `device` defaults to CUDA when present;
    `parent_run_id` nests the predict run under another run (a search trial); `scale` says where the images
    run and when they are cut into blocks. See the module docstring for the outputs.
    """
    chosen = [
        name
        for name, on in (("--split", split is not None), ("--oof", oof), ("--input", input_dir is not None))
        if on
    ]
    if len(chosen) > 1:
        raise ConfigError(f"choose one of --split, --oof and --input, got {' and '.join(chosen)}")
    tta = tta or cfg.inference.tta
    check_tta(tta)
    started_at = time.time()
    experiment = cfg.mlflow_experiment
    train = find_train_run(experiment, train_run_id)
    folds = fold_models(train)
    kind, groups, dataset = _plan(cfg, train, folds, split=split, oof=oof, input_dir=input_dir)
    task = task_of(cfg.model.name)
    tuned = tuned_postprocess(train) if cfg.postprocess.tuned and kind != "oof" else None
    thresholds = with_overrides(
        default_thresholds(cfg, task),
        (tuned or {}).get("params"),
        f"{TUNED_POSTPROCESS_FILE} of {train.info.run_id}",
    )
    inf = cfg.inference
    params = {
        "tta": tta,
        "scales": ",".join(map(str, inf.scales)),
        "tile": inf.tile,
        "overlap": inf.overlap,
        "split": kind if kind in ("test", "validation") else "",
        "input": str(Path(input_dir).resolve())[:500] if input_dir else "",
        "n_models": len(folds),
        **{f"instances.{k}": v for k, v in cfg.instances.model_dump().items()},
        "postprocess_tuned_by": (tuned or {}).get("oof_predict_run", ""),
        **_compute_params(cfg, device),
    }
    tags = {Tag.TRAIN_RUN: train.info.run_id, Tag.FOLD_RUNS: ",".join(f"{f.fold}:{f.run_id}" for f in folds)}
    with tempfile.TemporaryDirectory(prefix=f"kit-predict-{cfg.name}-") as tmp:
        root = Path(tmp)
        index, instances, work = _predict_groups(
            _fold_groups(groups, cfg, thresholds, tta, device), root, progress, scale
        )
        params.update(work.params)
        tuning = None
        if kind == "oof" and cfg.postprocess.tuned and not index.empty:
            tuning = _tune_on_oof(root, index, instances, dataset, thresholds, task)
            thresholds, instances = tuning["thresholds"], tuning.pop("instances")
        params.update({f"postprocess.{k}": v for k, v in thresholds.model_dump().items()})
        atomic_write_text(root / POSTPROCESS_FILE, thresholds.model_dump_json(indent=2))
        write_tables(root, index, instances)
        run_id = record_predict_run(
            experiment,
            cfg.name,
            kind,
            root,
            tags=tags,
            params=params,
            metrics={**prediction_metrics(index), **work.metrics, **(tuning["metrics"] if tuning else {})},
            command=command,
            started_at=started_at,
            config_yaml=cfg.to_yaml(),
            manifest=dataset.root / "manifest.csv" if dataset else None,
            dataset_name=dataset.name if dataset else "",
            parent_run_id=parent_run_id,
        )
        if tuning is not None:
            record = {**tuning["record"], "oof_predict_run": run_id}
            atomic_write_text(root / TUNED_POSTPROCESS_FILE, json.dumps(record, indent=2))
            log_artifact_to(train.info.run_id, root / TUNED_POSTPROCESS_FILE)
            log_artifact_to(run_id, root / TUNED_POSTPROCESS_FILE)
            if cfg.tracking.log_model:
                from kit.hub import log_train_model

                log_train_model(train.info.run_id)
    return PredictOutcome(run_id, experiment, kind, train.info.run_id, index, instances)


def predict_with_model(
    source: str | Path,
    *,
    input_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    split: str = "test",
    experiment: str = "predictions",
    tta: str | None = None,
    device: str | None = None,
    progress: bool = True,
    command: str = "predict",
    scale: ScaleOptions = ScaleOptions(),
) -> PredictOutcome:
    """Predict the images of `input_dir` (or split `split` of the dataset at `data_root`) with the model
    `source` (anything `kit.load_segmenter` takes: a model URI, a run id, an experiment, a checkpoint),
    as a predict run of MLflow experiment `experiment` tagged `kit.model_source`; `scale` as for
    `predict_experiment`."""
    from kit.hub import load_segmenter

    if (input_dir is None) == (data_root is None):
        raise ConfigError("give one of --input DIR and --data ROOT (with --split) to predict with --model")
    started_at = time.time()
    model = load_segmenter(source, tta=tta, device=device)
    dataset = None
    if input_dir is not None:
        kind, jobs = "input", _input_jobs(Path(input_dir))
    else:
        dataset = open_dataset(data_root)
        kind, jobs = split, _split_jobs(dataset, split)
    name = (
        Path(str(source)).name
        if Path(str(source)).exists()
        else str(source).replace("/", "_").replace(":", "")
    )
    with tempfile.TemporaryDirectory(prefix="kit-predict-model-") as tmp:
        root = Path(tmp)
        index, instances, work = _predict_groups([_Group(lambda: model, "", "", jobs)], root, progress, scale)
        atomic_write_text(root / POSTPROCESS_FILE, model.thresholds.model_dump_json(indent=2))
        write_tables(root, index, instances)
        run_id = record_predict_run(
            experiment,
            name[:60],
            kind,
            root,
            tags={Tag.MODEL_SOURCE: str(source)},
            params={
                "model": str(source)[:500],
                "tta": model.tta,
                "input": str(input_dir or ""),
                **_model_compute_params(model),
                **work.params,
            },
            metrics={**prediction_metrics(index), **work.metrics},
            command=command,
            started_at=started_at,
            config_yaml=model.config.to_yaml() if isinstance(model, Segmenter) else None,
            manifest=dataset.root / "manifest.csv" if dataset else None,
            dataset_name=dataset.name if dataset else "",
        )
    return PredictOutcome(run_id, experiment, kind, "", index, instances)


def _compute_params(cfg: ExperimentConfig, device: str | None) -> dict[str, str]:
    """The precision and memory format the experiment's models run with on `device` (as `Segmenter`
    resolves them)."""
    from kit.models.precision import ComputeMode, default_device

    inf = cfg.inference
    return ComputeMode.resolve(default_device(device), inf.precision, inf.channels_last).params("inference")


def _model_compute_params(model: Any) -> dict[str, str]:
    """The precision and memory format a loaded model runs with; an ensemble's per base model."""
    if isinstance(model, Segmenter):
        return model.compute.params("inference")
    return {
        f"{name}.{k}": v for name, base in model.bases for k, v in base.compute.params("inference").items()
    }


def _plan(
    cfg: ExperimentConfig,
    train: Any,
    folds: list[FoldModel],
    *,
    split: str | None,
    oof: bool,
    input_dir: str | Path | None,
) -> tuple[str, list[tuple[list[FoldModel], list[_Job]]], NucleiDataset | None]:
    """(kind, groups of (fold models, images they predict), dataset or None) of a predict request."""
    if input_dir is not None:
        return "input", [(folds, _input_jobs(Path(input_dir)))], None
    dataset = open_dataset(cfg.data.root)
    trained_digest = train.data.tags.get(Tag.DATASET_DIGEST)
    if trained_digest and trained_digest != dataset.digest:
        log.warning("%s differs from the dataset train run %s trained on", dataset.root, train.info.run_id)
    if oof:
        return "oof", _oof_groups(dataset, folds), dataset
    split = split or "test"
    _check_not_trained_on(split, train)
    return split, [(folds, _split_jobs(dataset, split))], dataset


def _check_not_trained_on(split: str, train: Any) -> None:
    from kit.config import config_from_dict

    trained = config_from_dict(
        run_config(train), f"config of train run {train.info.run_id}"
    ).data.train_splits
    if split in trained:
        raise ConfigError(
            f"the fold models of train run {train.info.run_id} trained on split '{split}'; averaging them over "
            f"it would score images they saw. Use --oof for out-of-fold predictions of those images"
        )


def _split_jobs(dataset: NucleiDataset, split: str) -> list[_Job]:
    ids = dataset.ids(split)
    if not ids:
        raise DataError(f"{dataset.root}: split '{split}' has no images")
    return [_Job(i, split, str(dataset.image_path(i))) for i in ids]


def _oof_groups(dataset: NucleiDataset, folds: list[FoldModel]) -> list[tuple[list[FoldModel], list[_Job]]]:
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
        jobs = [_Job(i, str(dataset.row(i)["split"]), str(dataset.image_path(i))) for i in fold.val_ids]
        groups.append(([fold], jobs))
    return groups


def _input_jobs(path: Path) -> list[_Job]:
    from kit.inference.inputs import input_images

    return [_Job(im.id, "", str(im.path)) for im in input_images(path)]


@dataclass
class _Group:
    """Images predicted by one model: how to build it (once, when the group starts) and how the index
    names it (fold numbers, fold runs)."""

    make: Callable[[], SegmentationModel]
    folds: str
    model_runs: str
    jobs: list[_Job]


def _fold_groups(
    groups: list[tuple[list[FoldModel], list[_Job]]],
    cfg: ExperimentConfig,
    thresholds: Thresholds,
    tta: str,
    device: str | None,
) -> list[_Group]:
    """A `Segmenter` over each group's fold models, built when its turn comes."""

    def make(folds: list[FoldModel]) -> Callable[[], Segmenter]:
        return lambda: Segmenter(
            _load_models([f.checkpoint for f in folds], device),
            cfg,
            tta=tta,
            device=device,
            thresholds=thresholds,
        )

    return [
        _Group(make(folds), ";".join(str(f.fold) for f in folds), ";".join(f.run_id for f in folds), jobs)
        for folds, jobs in groups
    ]


@dataclass
class _Work:
    """What a predict run did, for its params and metrics: pixels, blocks, workers, wall seconds."""

    params: dict[str, Any]
    metrics: dict[str, float]


def _predict_groups(
    groups: list[_Group], root: Path, progress: bool, scale: ScaleOptions
) -> tuple[pd.DataFrame, pd.DataFrame, _Work]:
    """Predict every job of every group with its model, on the executor `scale` opens; each image's
    files go under `root` as soon as it is done (written in the background, off the network's path), and
    its instances are appended to instances.csv, so memory does not grow with the number of images. An
    image larger than the block is predicted block by block into `labels/<id>.ome.zarr`."""
    from tqdm.auto import tqdm

    from kit.scale import BlockSettings, open_executor

    started = time.perf_counter()
    rows: list[dict] = []
    pixels = blocks = too_large = 0
    bar = tqdm(total=sum(len(g.jobs) for g in groups), desc="predict", unit="image", disable=not progress)
    with (
        bar,  # the bar ends its line even when an image fails
        open_executor(scale.workers, scale.scheduler) as executor,
        ArtifactWriter(root) as writer,
        _InstanceTable(root / INSTANCES_FILE) as table,
    ):
        for group in groups:
            if not group.jobs:
                continue
            model = group.make()
            settings = BlockSettings.for_model(model, block=scale.block, halo=scale.halo)
            whole, large = _by_size(group.jobs, settings.block)
            for job, result in executor.map(_predict_image, whole, model=model):
                row = _image_row(job, group, result, writer)
                rows.append(row)
                table.append(_instance_table(job.image_id, group.folds, result.instances))
                pixels += row["height"] * row["width"]
                blocks += 1
                bar.update(1)
            for job in large:
                row, instances, result = _predict_large(model, job, group, root, settings, executor, progress)
                rows.append(row)
                table.append(_instance_table(job.image_id, group.folds, instances))
                pixels += row["height"] * row["width"]
                blocks += result.blocks
                too_large += result.too_large
                bar.update(1)
            del model
        workers = executor.workers
    seconds = time.perf_counter() - started
    work = _Work(
        params={
            "workers": workers,
            "scheduler": scale.scheduler or "",
            "block": scale.block or "",
            "halo": scale.halo or "",
        },
        metrics={
            "pixels": pixels,
            "blocks": blocks,
            "workers": workers,
            "seconds": seconds,
            "nuclei_too_large": too_large,
        },
    )
    # rows arrive as images finish (any order on a cluster): give them the order of the jobs
    order = {job.image_id: k for k, job in enumerate(j for g in groups for j in g.jobs)}
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    index = index.sort_values("image_id", key=lambda ids: ids.map(order), kind="stable", ignore_index=True)
    instances = table.read()
    instances = instances.sort_values(
        ["image_id", "label"], key=lambda c: c.map(order) if c.name == "image_id" else c, ignore_index=True
    )
    return index, instances, work


def _by_size(jobs: list[_Job], block: int) -> tuple[list[_Job], list[_Job]]:
    """(images predicted whole, images larger than `block` on a side: predicted block by block), by their
    headers (an image whose format does not tell its size is predicted whole)."""
    from kit.scale.sources import image_shape

    whole, large = [], []
    for job in jobs:
        shape = image_shape(job.source)
        (large if shape is not None and max(shape) > block else whole).append(job)
    return whole, large


@dataclass
class _ImageResult:
    """One image's prediction as a worker sends it back: labels, maps quantised as stored, instances."""

    labels: np.ndarray
    probs: np.ndarray | None
    channels: tuple[str, ...]
    instances: pd.DataFrame
    estimated_score: float
    estimate_flag: str
    seconds: float


def _predict_image(model: Any, job: _Job) -> _ImageResult:
    """Predict one whole image (runs on the executor: in this process or on a Dask worker)."""
    from kit.inference.artifacts import quantize_probs
    from kit.scale.sources import read_whole

    started = time.perf_counter()
    try:
        image = read_image(job.source) if Path(job.source).is_file() else read_whole(job.source)
        seg = model.predict(image, details=True)
    except DataError as exc:
        named = job.source in str(exc)  # a reader's error names the file already
        raise DataError(str(exc) if named else f"{job.source}: {exc}") from None
    return _ImageResult(
        seg.labels,
        quantize_probs(seg.probs) if seg.channels else None,
        tuple(seg.channels),
        seg.instances(),
        seg.estimated_score,
        seg.estimate_flag,
        time.perf_counter() - started,
    )


def _image_row(job: _Job, group: _Group, result: _ImageResult, writer: ArtifactWriter) -> dict:
    """The predictions.csv row of a whole image, its files handed to `writer`."""
    labels = result.labels
    return {
        "image_id": job.image_id,
        "split": job.split,
        "height": labels.shape[0],
        "width": labels.shape[1],
        "n_instances": int(labels.max(initial=0)),
        "folds": group.folds,
        "model_runs": group.model_runs,
        "probs": writer.probs(job.image_id, result.probs, result.channels) if result.channels else "",
        "labels": writer.labels(job.image_id, labels),
        "source": job.source,
        "seconds": result.seconds,
        "estimated_score": result.estimated_score,
        "estimate_flag": result.estimate_flag,
    }


def _predict_large(
    model: Any, job: _Job, group: _Group, root: Path, settings: Any, executor: Any, progress: bool
) -> tuple[dict, pd.DataFrame, Any]:
    """Predict one large image block by block into `labels/<id>.ome.zarr` under `root` (no probability
    maps: they would be larger than the image); its predictions.csv row, instances and
    `kit.scale.BlockwiseResult`."""
    from kit.scale import predict_blockwise

    rel = f"{LABELS_DIR}/{job.image_id}{LARGE_SUFFIX}"
    try:
        result = predict_blockwise(
            model, job.source, root / rel, settings=settings, executor=executor, progress=progress
        )
    except DataError as exc:
        raise DataError(str(exc) if job.source in str(exc) else f"{job.source}: {exc}") from None
    if result.too_large:
        log.warning(
            "%s: %d nuclei larger than the halo (%d px) were left out; raise --halo",
            job.source,
            result.too_large,
            settings.halo,
        )
    row = {
        "image_id": job.image_id,
        "split": job.split,
        "height": result.shape[0],
        "width": result.shape[1],
        "n_instances": result.n_instances,
        "folds": group.folds,
        "model_runs": group.model_runs,
        "probs": "",
        "labels": rel,
        "source": job.source,
        "seconds": result.seconds,
        "estimated_score": np.nan,
        "estimate_flag": "",
    }
    return row, result.table[["label", "area", "mean_prob", "score"]], result


class _InstanceTable:
    """instances.csv written as images are predicted (appended image by image), read back at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def __enter__(self) -> _InstanceTable:
        self._file = open(self.path, "w", newline="")
        self._file.write(",".join(INSTANCE_COLUMNS) + "\n")
        return self

    def append(self, rows: pd.DataFrame) -> None:
        rows.to_csv(self._file, header=False, index=False)
        self._file.flush()

    def read(self) -> pd.DataFrame:
        return pd.read_csv(
            self.path,
            dtype={"image_id": str, "folds": str},
            keep_default_na=False,
            na_values={"mean_prob": [""], "score": [""]},
        )

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _load_models(checkpoints: Iterable[Path], device: str | None) -> list:
    from kit.models.checkpoint import load_checkpoint

    return [load_checkpoint(path, map_location=device or "cpu")[0] for path in checkpoints]


def _instance_table(image_id: str, folds: str, table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(image_id=image_id, folds=folds)[list(INSTANCE_COLUMNS)]


def _concat(tables: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(INSTANCE_COLUMNS))


def _tune_on_oof(
    root: Path,
    index: pd.DataFrame,
    instances: pd.DataFrame,
    dataset: NucleiDataset,
    start: Thresholds,
    task: str,
) -> dict:
    """Tune the thresholds on the out-of-fold predictions under `root` (semantic models: the watershed
    on the stored maps; instance models: the score threshold and size rule on the label images) and
    rewrite every label image (and the index's instance counts) with the best ones. Returns thresholds
    (those used), instances (the new table), metrics and the record to store with the train run."""
    from kit.inference.artifacts import read_labels
    from kit.inference.contract import Segmentation
    from kit.inference.postprocess import drop_small, instances_from_probs
    from kit.inference.tuning import tune_instances, tune_postprocess

    maps = {row.image_id: read_probs(root / row.probs) for row in index.itertuples(index=False)}
    truth = {i: np.asarray(dataset.load(i).labels) for i in maps}
    if task == "semantic":
        result = tune_postprocess([(p, c, truth[i]) for i, (p, c) in maps.items()], start.model_dump())
    else:
        by_image = {i: g.sort_values("label") for i, g in instances.groupby("image_id")}
        predicted = {row.image_id: read_labels(root / row.labels) for row in index.itertuples(index=False)}
        scores = {i: _label_scores(by_image.get(i), int(lab.max(initial=0))) for i, lab in predicted.items()}
        result = tune_instances([(predicted[i], scores[i], truth[i]) for i in maps], start.model_dump())
    thresholds = with_overrides(start, result.params, "tuned thresholds")
    params = thresholds.model_dump()
    log.info(
        "post-processing tuned on %d OOF images: %.4f -> %.4f %s",
        len(maps),
        result.start_score,
        result.score,
        result.params,
    )
    tables = []
    with ArtifactWriter(root) as writer:
        for k, row in enumerate(index.itertuples(index=False)):
            probs, channels = maps[row.image_id]
            if task == "semantic":
                seg = Segmentation(instances_from_probs(probs, channels, **params), probs, channels)
            else:
                old, old_scores = predicted[row.image_id], scores[row.image_id]
                keep = np.concatenate([[False], old_scores >= params["score_threshold"]])
                labels = drop_small(
                    np.where(keep[old], old, 0), params["min_size"], params["min_area_fraction"]
                )
                kept_ids = np.unique(old[labels > 0]) if labels.any() else np.zeros(0, dtype=int)
                seg = Segmentation(labels, probs, channels, old_scores[kept_ids - 1])
            writer.labels(row.image_id, seg.labels)
            index.loc[k, "n_instances"] = int(seg.labels.max(initial=0))
            tables.append(_instance_table(row.image_id, row.folds, seg.instances()))
    atomic_write_text(root / "tuning.csv", result.trials.to_csv(index=False))
    return {
        "thresholds": thresholds,
        "instances": _concat(tables),
        "metrics": {"oof_map_untuned": result.start_score, "oof_map_tuned": result.score},
        "record": {
            "params": result.params,
            "score": result.score,
            "start_score": result.start_score,
            "n_images": len(maps),
        },
    }


def _label_scores(table: pd.DataFrame | None, n: int) -> np.ndarray:
    """The detection score of labels 1..n (index i − 1) from an image's rows of instances.csv."""
    scores = np.zeros(n, dtype=np.float64)
    if table is not None and len(table):
        scores[table["label"].to_numpy() - 1] = table["score"].to_numpy(dtype=float)
    return scores
