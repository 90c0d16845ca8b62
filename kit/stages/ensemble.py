"""`kit ensemble` as a library call: train the IoU model on the base experiments' out-of-fold instances,
choose among overlapping candidates, and write the result as predict runs of the ensemble experiment.

1. The newest finished `oof` predict run of every base experiment (`cfg.ensemble.bases`) gives, for each
   image they all predicted, the candidates (`kit.ensemble.candidates`, with re-splits at
   `split_thresholds` for sources with probability maps), their features (`kit.ensemble.features`) and
   their target against the truth of `cfg.data.root` (`kit.ensemble.target`).
2. `fit_bagged` trains the bagged LightGBM model with folds over images; its out-of-fold predictions are
   honest for every image.
3. On those predictions the drop threshold is tuned (`threshold: null`) by the OOF DSB mAP over a grid,
   the selection (`kit.ensemble.selection`) is made, and the score estimator (`kit.ensemble.estimate`)
   is fitted and reported beside the real scores.
4. The model is applied to the newest `apply_kind` (test or input) predict runs of the bases.

MLflow: one run (kit.role=ensemble, kit.base_experiments, kit.base_oof_runs, kit.base_apply_runs) with the
model (`model/`: LightGBM text files + model.json), the OOF candidate table, the per-image estimate table,
plots and metrics; and, nested in it, predict runs (kit.role=predict, kit.predict_kind oof and test/input,
kit.train_run_id = kit.ensemble_run_id = the ensemble run, kit.base_predict_runs) in the artifact layout of
`kit.inference.artifacts` (labels/, predictions.csv with an `estimated_score` column, instances.csv with
the `source`, `split_level` and `predicted_iou` of each kept instance, also as its `score`), so `kit evaluate --exp E` and
`kit submit --exp E` work on them unchanged.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit import tracking
from kit.config import APPLY_KINDS, EnsembleConfig, ExperimentConfig
from kit.data.dataset import open_dataset
from kit.ensemble.candidates import Candidates, SourceRun, image_candidates
from kit.ensemble.domain import IN_CALIBRATION, CalibrationDomain, median_area
from kit.ensemble.estimate import ScoreEstimator, agreement
from kit.ensemble.features import candidate_features, feature_names
from kit.ensemble.model import IoUModel, fit_bagged
from kit.ensemble.selection import best_threshold, restrict, select_instances, threshold_scores
from kit.ensemble.target import best_truth_iou, iou_target
from kit.errors import ConfigError, DataError
from kit.fileio import atomic_write_text, read_image
from kit.inference.artifacts import INDEX_COLUMNS, INSTANCE_COLUMNS, write_labels
from kit.metrics import dsb_score, iou_matrix
from kit.stages.predict import record_predict_run
from kit.tracking.schema import CONFIG_FILE, Role, Tag, find_predict_run, role_tags, run_folder

log = logging.getLogger(__name__)

MODEL_DIR = "model"
THRESHOLD_GRID: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.05, 0.801, 0.05), 2))


@dataclass
class EnsembleOutcome:
    """What `kit ensemble` produced: its runs, the tuned threshold and the OOF numbers."""

    run_id: str
    experiment: str
    oof_run_id: str
    threshold: float
    oof: dict[str, float]
    source_maps: dict[str, float]
    kept_share: dict[str, float]
    n_images: int
    n_candidates: int
    candidates_ms_per_image: float
    features_ms_per_image: float
    apply_kind: str | None = None
    apply_run_id: str | None = None
    apply_index: pd.DataFrame | None = None


@dataclass
class _Image:
    """The selection of one image, ready to be written as predictions."""

    image_id: str
    labels: np.ndarray
    kept: pd.DataFrame
    estimated: float
    seconds: float
    flag: str = ""


def ensemble_experiment(
    cfg: ExperimentConfig, *, kind: str | None = None, progress: bool = True, command: str = "ensemble"
) -> EnsembleOutcome:
    """Train the ensemble of `cfg.ensemble` and apply it; see the module docstring.

    `kind` overrides `cfg.ensemble.apply_kind` (test, input, or none to train only).
    """
    ens = _settings(cfg)
    kind = kind or ens.apply_kind
    if kind not in APPLY_KINDS:
        raise ConfigError(f"apply kind must be one of {', '.join(APPLY_KINDS)}; got {kind!r}")
    dataset = open_dataset(cfg.data.root)
    oof_sources = [_source(base, "oof", dataset.digest) for base in ens.bases]
    ids = _common_ids(oof_sources, "oof")
    missing = [i for i in ids if i not in dataset or dataset.mask_paths(i) is None]
    if missing:
        raise DataError(
            f"{len(missing)} out-of-fold image(s) of {', '.join(ens.bases)} have no truth in {dataset.root}, "
            f"e.g. {missing[0]!r}; point the ensemble at the data the bases trained on (--set data.root=...)"
        )
    apply_sources = [_source(base, kind, None) for base in ens.bases] if kind != "none" else []
    names = [s.name for s in oof_sources]
    features = feature_names(names, ens.neighbour_radii)
    tags = role_tags(
        Role.ENSEMBLE,
        **{
            Tag.BASE_EXPERIMENTS: ",".join(names),
            Tag.BASE_OOF_RUNS: ",".join(f"{s.name}:{s.run_id}" for s in oof_sources),
            Tag.BASE_APPLY_RUNS: ",".join(f"{s.name}:{s.run_id}" for s in apply_sources),
        },
    )
    import mlflow

    with (
        tracking.start_run(cfg.mlflow_experiment, command, run_name=f"{cfg.name}-ensemble", tags=tags) as run,
        tempfile.TemporaryDirectory(prefix=f"kit-ensemble-{cfg.name}-") as tmp_name,
    ):
        tmp = Path(tmp_name)
        mlflow.log_params({k: str(v)[:500] for k, v in ens.model_dump().items() if k != "lightgbm"})
        mlflow.log_params({f"lightgbm.{k}": str(v) for k, v in ens.lightgbm.model_dump().items()})
        mlflow.log_text(cfg.to_yaml(), CONFIG_FILE)
        tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="ensemble")

        def truth_of(image_id: str) -> np.ndarray:
            return np.asarray(dataset.load(image_id).labels)

        table, timing = _training_table(
            ids, oof_sources, ens, features, truth_of, tmp / "candidates", progress
        )
        lgbm = ens.lightgbm
        model, table["predicted_iou"] = fit_bagged(
            table,
            table["target"].to_numpy(),
            table["image_id"].to_numpy(),
            features,
            n_bags=ens.n_bags,
            n_folds=ens.n_folds,
            num_leaves=lgbm.num_leaves,
            feature_fraction=lgbm.feature_fraction,
            learning_rate=lgbm.learning_rate,
            num_boost_round=lgbm.num_boost_round,
            min_data_in_leaf=lgbm.min_data_in_leaf,
            seed=ens.seed,
        )
        grid = THRESHOLD_GRID if ens.threshold is None else (ens.threshold,)
        selections, curve = _oof_selections(ids, table, tmp / "candidates", truth_of, grid, ens.nms_overlap)
        threshold = best_threshold(grid, curve)
        images, per_image, estimator = _oof_results(ids, selections, threshold, table, oof_sources, truth_of)
        model.metadata = {
            "sources": names,
            "neighbour_radii": list(ens.neighbour_radii),
            "split_thresholds": list(ens.split_thresholds),
            "target_min_iou": ens.target_min_iou,
            "threshold": threshold,
            "nms_overlap": ens.nms_overlap,
            "estimator": estimator.to_dict(),
            "domain": CalibrationDomain.fit(
                [dataset.load(i).image for i in ids], [median_area(image.labels) for image in images]
            ).to_dict(),
        }
        oof_numbers = agreement(per_image["score"].to_numpy(), per_image["estimated_score"].to_numpy())
        source_maps = {s: float(per_image[f"score_{s}"].mean()) for s in names}
        kept_share = _kept_share(images, names)

        _log_model_run(tmp / "report", model, table, per_image, grid, curve, threshold, source_maps)
        mlflow.log_metrics(
            {
                "threshold": threshold,
                "oof_map": oof_numbers["real_map"],
                "oof_estimated_map": oof_numbers["estimated_map"],
                "oof_estimate_mae": oof_numbers["estimate_mae"],
                "oof_estimate_r": oof_numbers["estimate_r"],
                **{f"oof_map_{s}": v for s, v in source_maps.items()},
                **{f"kept_share_{s}": v for s, v in kept_share.items()},
                "n_images": len(ids),
                "n_candidates": len(table),
                "candidates_ms_per_image": timing[0],
                "features_ms_per_image": timing[1],
                "estimate_miss_rate": estimator.miss_rate,
            }
        )
        oof_run_id, _ = _log_predictions(
            cfg, run.info.run_id, "oof", oof_sources, images, tmp / "oof", command
        )
        outcome = EnsembleOutcome(
            run.info.run_id,
            cfg.mlflow_experiment,
            oof_run_id,
            threshold,
            oof_numbers,
            source_maps,
            kept_share,
            len(ids),
            len(table),
            timing[0],
            timing[1],
        )
        if cfg.tracking.log_model:
            _log_ensemble_model(run.info.run_id, model, oof_sources)
        if apply_sources:
            applied = _apply(model, apply_sources, ens, estimator, threshold, progress)
            mlflow.log_metric(
                f"{kind}_images_out_of_calibration", sum(a.flag != IN_CALIBRATION for a in applied)
            )
            outcome.apply_kind = kind
            outcome.apply_run_id, outcome.apply_index = _log_predictions(
                cfg, run.info.run_id, kind, apply_sources, applied, tmp / kind, command
            )
            mlflow.log_metric(f"{kind}_estimated_map", float(outcome.apply_index["estimated_score"].mean()))
    return outcome


def _log_ensemble_model(run_id: str, model: IoUModel, sources: Sequence[SourceRun]) -> str:
    """Log the ensemble (the models of the train runs behind its sources + the IoU model) as the MLflow
    Model of ensemble run `run_id`; the model URI."""
    from kit.ensemble.segmenter import EnsembleSegmenter
    from kit.stages.model import example_image, log_run_model, model_of_run
    from kit.tracking.schema import get_run

    bases = []
    for source in sources:
        train_id = get_run(source.run_id).data.tags.get(Tag.TRAIN_RUN)
        bases.append((source.name, model_of_run(get_run(train_id), device="cpu")))
    ensemble = EnsembleSegmenter(bases, model)
    return log_run_model(run_id, ensemble, example_image(bases[0][1].in_channels))


def _settings(cfg: ExperimentConfig) -> EnsembleConfig:
    ens = cfg.ensemble
    if ens is None or not ens.bases:
        raise ConfigError(
            f"experiment '{cfg.name}' has no ensemble.bases; list the base experiments in its `ensemble:` "
            f"section (e.g. bases: [unet_effb0, maskrcnn_cpu]) or --set ensemble.bases=[A,B]"
        )
    if len(set(ens.bases)) < len(ens.bases):
        raise ConfigError(f"ensemble.bases lists an experiment twice: {', '.join(ens.bases)}")
    if cfg.mlflow_experiment in ens.bases:
        raise ConfigError(f"ensemble '{cfg.name}' cannot be one of its own bases")
    return ens


def _source(base: str, kind: str, digest: str | None) -> SourceRun:
    """The newest finished `kind` predict run of base experiment `base`, read from its artifacts."""
    run = find_predict_run(base, kind)
    trained = run.data.tags.get(Tag.DATASET_DIGEST)
    if digest and trained and trained != digest:
        log.warning("predict run %s of %s was made on other data than the ensemble's", run.info.run_id, base)
    return SourceRun.from_folder(base, run.info.run_id, run_folder(run))


def _common_ids(sources: Sequence[SourceRun], kind: str) -> list[str]:
    """The images every source predicted (sorted); a warning when they differ, DataError when none."""
    sets = [set(s.image_ids) for s in sources]
    common = sorted(set.intersection(*sets))
    if any(s != sets[0] for s in sets):
        runs = ", ".join(f"{s.name} ({s.run_id[:8]}: {len(s.image_ids)})" for s in sources)
        log.warning(
            "the %s predict runs cover different images (%s); using the %d in all", kind, runs, len(common)
        )
    if not common:
        raise DataError(
            f"the {kind} predict runs of {', '.join(s.name for s in sources)} have no image in common; "
            f"predict the same data with every base experiment"
        )
    return common


def _training_table(
    ids: Sequence[str],
    sources: Sequence[SourceRun],
    ens: EnsembleConfig,
    features: Sequence[str],
    truth_of: Callable[[str], np.ndarray],
    cache: Path,
    progress: bool,
) -> tuple[pd.DataFrame, tuple[float, float]]:
    """One row per OOF candidate: image id, candidate columns, features, best IoU and target; the
    candidates are cached under `cache/<i>.npz` for the selection. Also (candidates, features) ms/image."""
    from tqdm.auto import tqdm

    names = [s.name for s in sources]
    frames, seconds = [], np.zeros(2)
    for i, image_id in enumerate(tqdm(ids, desc="ensemble: candidates", unit="image", disable=not progress)):
        started = time.perf_counter()
        cands = image_candidates(image_id, sources, ens.split_thresholds)
        built = time.perf_counter()
        frame = candidate_features(cands, names, ens.neighbour_radii)
        seconds += (built - started, time.perf_counter() - built)
        best = best_truth_iou(cands, truth_of(image_id))
        info = cands.table.reset_index(drop=True)
        frame = pd.concat([info.drop(columns=[c for c in info.columns if c in frame.columns]), frame], axis=1)
        frame.insert(0, "image_id", image_id)
        frame["best_iou"] = best
        frame["target"] = iou_target(best, ens.target_min_iou)
        frames.append(frame)
        cands.save(cache / f"{i}.npz")
    table = pd.concat(frames, ignore_index=True)
    if table.empty:
        raise DataError(f"the out-of-fold predictions of {', '.join(names)} hold no instance to learn from")
    return table, tuple(1000 * seconds / len(ids))


def _oof_selections(
    ids: Sequence[str],
    table: pd.DataFrame,
    cache: Path,
    truth_of: Callable[[str], np.ndarray],
    grid: Sequence[float],
    nms_overlap: float,
) -> tuple[list[tuple[np.ndarray, pd.DataFrame, float]], np.ndarray]:
    """Per OOF image the selection at min(grid) (labels, kept, seconds), and the mean DSB score over the
    images at each grid threshold."""
    rows = table.groupby("image_id", sort=False).indices
    selections, curve = [], np.zeros(len(grid))
    for i, image_id in enumerate(ids):
        cands = Candidates.load(cache / f"{i}.npz", image_id)
        started = time.perf_counter()
        predicted = table["predicted_iou"].to_numpy()[rows[image_id]]
        labels, kept = select_instances(
            cands.layers, cands.table, predicted, threshold=min(grid), nms_overlap=nms_overlap
        )
        kept["candidate"] = rows[image_id][kept["candidate"].to_numpy()]
        selections.append((labels, kept, time.perf_counter() - started))
        curve += threshold_scores(truth_of(image_id), labels, kept, grid)
    return selections, curve / len(ids)


def _oof_results(
    ids: Sequence[str],
    selections: Sequence[tuple[np.ndarray, pd.DataFrame, float]],
    threshold: float,
    table: pd.DataFrame,
    sources: Sequence[SourceRun],
    truth_of: Callable[[str], np.ndarray],
) -> tuple[list[_Image], pd.DataFrame, ScoreEstimator]:
    """The OOF selections at `threshold` (kept instances with their source and split level), a per-image
    table (real score, estimated score, each source's score) and the score estimator fitted on them."""
    images, rows, predicted, target, n_true = [], [], [], [], []
    for image_id, (labels, kept, seconds) in zip(ids, selections, strict=True):
        labels, kept = restrict(labels, kept, threshold)
        kept = kept.join(table[["source", "split_level"]], on="candidate")
        truth = truth_of(image_id)
        m = iou_matrix(truth, labels)
        best = np.zeros(len(kept) + 1)
        if m.iou.size:
            best[m.pred_ids] = m.iou.max(axis=0)
        predicted.append(kept["predicted_iou"].to_numpy())
        target.append(iou_target(best[1:], 0.5))
        n_true.append(m.n_true)
        images.append(_Image(image_id, labels, kept, np.nan, seconds))
        rows.append(
            {
                "image_id": image_id,
                "n_true": m.n_true,
                "n_pred": len(kept),
                "score": dsb_score(truth, labels),
                **{f"score_{s.name}": dsb_score(truth, s.labels(image_id)) for s in sources},
            }
        )
    estimator = ScoreEstimator.fit(predicted, target, n_true)
    for image, p in zip(images, predicted, strict=True):
        image.estimated = estimator.image_score(p)
    per_image = pd.DataFrame(rows)
    per_image.insert(4, "estimated_score", [image.estimated for image in images])
    return images, per_image, estimator


def _kept_share(images: Sequence[_Image], names: Sequence[str]) -> dict[str, float]:
    """Share of the kept instances that came from each source."""
    sources = np.concatenate([image.kept["source"].to_numpy(dtype=str) for image in images])
    return {s: float(np.mean(sources == s)) if sources.size else 0.0 for s in names}


def _apply(
    model: IoUModel,
    sources: Sequence[SourceRun],
    ens: EnsembleConfig,
    estimator: ScoreEstimator,
    threshold: float,
    progress: bool,
) -> list[_Image]:
    """Candidates → predicted IoU → selection for every image all apply runs predicted."""
    from tqdm.auto import tqdm

    names = [s.name for s in sources]
    domain = CalibrationDomain.from_dict(model.metadata["domain"])
    images = []
    for image_id in tqdm(
        _common_ids(sources, "apply"), desc="ensemble: apply", unit="image", disable=not progress
    ):
        started = time.perf_counter()
        cands = image_candidates(image_id, sources, ens.split_thresholds)
        predicted = model.predict(candidate_features(cands, names, ens.neighbour_radii))
        labels, kept = select_instances(
            cands.layers, cands.table, predicted, threshold=threshold, nms_overlap=ens.nms_overlap
        )
        kept = kept.join(cands.table[["source", "split_level"]].reset_index(drop=True), on="candidate")
        estimated = estimator.image_score(kept["predicted_iou"].to_numpy())
        flag, _ = domain.check(read_image(sources[0].index.loc[image_id, "source"]), median_area(labels))
        images.append(_Image(image_id, labels, kept, estimated, time.perf_counter() - started, flag))
    return images


def _log_model_run(
    folder: Path,
    model: IoUModel,
    table: pd.DataFrame,
    per_image: pd.DataFrame,
    grid: Sequence[float],
    curve: np.ndarray,
    threshold: float,
    source_maps: dict[str, float],
) -> None:
    """Model files, tables and plots of the ensemble run."""
    import mlflow

    from kit.ensemble.plots import (
        plot_estimate,
        plot_feature_importance,
        plot_oof_scatter,
        plot_threshold_curve,
    )

    model.save(folder / MODEL_DIR)
    importance = model.feature_importance()
    atomic_write_text(
        folder / "feature_importance.csv", importance.rename("gain_share").to_csv(index_label="feature")
    )
    table.to_csv(folder / "oof_candidates.csv.gz", index=False, compression="gzip")
    atomic_write_text(folder / "oof_images.csv", per_image.to_csv(index=False))
    atomic_write_text(
        folder / "threshold_curve.csv",
        pd.DataFrame({"threshold": list(grid), "oof_map": curve}).to_csv(index=False),
    )
    plot_feature_importance(importance, folder / "feature_importance.png")
    plot_oof_scatter(
        table["predicted_iou"].to_numpy(),
        table["target"].to_numpy(),
        table["source"].to_numpy(),
        folder / "oof_scatter.png",
    )
    plot_threshold_curve(grid, curve, threshold, source_maps, folder / "threshold_curve.png")
    plot_estimate(
        per_image["score"].to_numpy(), per_image["estimated_score"].to_numpy(), folder / "oof_estimate.png"
    )
    mlflow.log_artifacts(str(folder))


def _log_predictions(
    cfg: ExperimentConfig,
    ensemble_run_id: str,
    kind: str,
    sources: Sequence[SourceRun],
    images: Sequence[_Image],
    folder: Path,
    command: str,
) -> tuple[str, pd.DataFrame]:
    """Write `images` as a nested predict run of `kind` (the `kit.inference.artifacts` layout); the
    split and image file of each image are those the first source recorded."""

    index_rows, instance_rows = [], []
    model_runs = ";".join(s.run_id for s in sources)
    for image in images:
        meta = sources[0].index.loc[image.image_id]
        index_rows.append(
            {
                "image_id": image.image_id,
                "split": meta["split"],
                "height": image.labels.shape[0],
                "width": image.labels.shape[1],
                "n_instances": len(image.kept),
                "folds": "",
                "model_runs": model_runs,
                "probs": "",
                "labels": write_labels(folder, image.image_id, image.labels),
                "source": meta["source"],
                "seconds": image.seconds,
                "estimated_score": image.estimated,
                "estimate_flag": image.flag,
            }
        )
        kept = image.kept
        known = {
            "image_id": image.image_id,
            "label": kept["label"].to_numpy(),
            "area": kept["area"].to_numpy(),
            "folds": "",
            "score": kept["predicted_iou"].to_numpy(),
        }
        frame = pd.DataFrame({c: known.get(c, np.nan) for c in INSTANCE_COLUMNS}, index=kept.index)
        frame["source"] = kept["source"].to_numpy()
        frame["split_level"] = kept["split_level"].to_numpy()
        frame["predicted_iou"] = kept["predicted_iou"].to_numpy()
        instance_rows.append(frame)
    index = pd.DataFrame(index_rows, columns=list(INDEX_COLUMNS))
    instances = (
        pd.concat(instance_rows, ignore_index=True)
        if instance_rows
        else pd.DataFrame(columns=[*INSTANCE_COLUMNS, "source", "split_level", "predicted_iou"])
    )
    run_id = record_predict_run(
        cfg.mlflow_experiment,
        cfg.name,
        kind,
        folder,
        index,
        instances,
        tags={
            Tag.TRAIN_RUN: ensemble_run_id,
            Tag.ENSEMBLE_RUN: ensemble_run_id,
            Tag.BASE_PREDICT_RUNS: ",".join(f"{s.name}:{s.run_id}" for s in sources),
        },
        params={"kind": kind, "n_sources": len(sources)},
        config_yaml=cfg.to_yaml(),
        command=command,
        parent_run_id=ensemble_run_id,
        metrics={"estimated_map": float(index["estimated_score"].mean()) if len(index) else 0.0},
        texts={
            "bases.json": json.dumps({"base_predict_runs": {s.name: s.run_id for s in sources}}, indent=2)
        },
    )
    return run_id, index
