"""`kit ensemble` as a library call: train the IoU model on the base experiments' out-of-fold instances,
choose among overlapping candidates, and write the result as predict runs of the ensemble experiment.

1. The newest finished `oof` predict run of every base experiment (`cfg.ensemble.bases`) is read
   (`SourceRun`), with the truth of `cfg.data.root`.
2. `kit.ensemble.fit.fit_ensemble` fits the ensemble on them (candidates, features, bagged LightGBM IoU
   model, threshold, score estimator, calibration domain): a pure computation, no MLflow.
3. `FittedEnsemble.select` is applied to the newest `apply_kind` (test or input) predict runs of the bases,
   the same selection `kit.EnsembleSegmenter` makes on a new image.

This stage only finds the runs and records what the fit made.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit import tracking
from kit.config import APPLY_KINDS, EnsembleConfig, ExperimentConfig
from kit.data.dataset import open_dataset
from kit.ensemble.candidates import SourceRun, image_candidates
from kit.ensemble.domain import IN_CALIBRATION
from kit.ensemble.fit import EnsembleFit, FittedEnsemble, Selection, fit_ensemble
from kit.errors import ConfigError, DataError
from kit.fileio import atomic_write_text, read_image
from kit.inference.artifacts import (
    INDEX_COLUMNS,
    INSTANCE_COLUMNS,
    prediction_metrics,
    write_labels,
    write_tables,
)
from kit.tracking.records import record_predict_run
from kit.tracking.schema import CONFIG_FILE, Role, Tag, find_predict_run, role_tags, run_folder

log = logging.getLogger(__name__)

MODEL_DIR = "model"


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
        fit_started = time.time()
        fit = fit_ensemble(
            ids,
            oof_sources,
            ens,
            truth_of=lambda image_id: np.asarray(dataset.load(image_id).labels),
            image_of=lambda image_id: dataset.load(image_id).image,
            cache=tmp / "candidates",
            progress=progress,
        )
        _log_fit(tmp / "report", fit)
        oof_images = [(i, s, fit.seconds[i]) for i, s in fit.selections.items()]
        oof_run_id, _ = _log_predictions(
            cfg, run.info.run_id, "oof", oof_sources, oof_images, tmp / "oof", command, fit_started
        )
        outcome = EnsembleOutcome(
            run.info.run_id,
            cfg.mlflow_experiment,
            oof_run_id,
            fit.fitted.thresholds.threshold,
            fit.oof,
            fit.source_maps,
            fit.kept_share,
            len(ids),
            len(fit.table),
            *fit.timing_ms,
        )
        if cfg.tracking.log_model:
            _log_ensemble_model(run.info.run_id, fit.fitted.model, oof_sources)
        if apply_sources:
            apply_started = time.time()
            applied = _apply(fit.fitted, apply_sources, progress)
            mlflow.log_metric(
                f"{kind}_images_out_of_calibration", sum(s.flag != IN_CALIBRATION for _, s, _ in applied)
            )
            outcome.apply_kind = kind
            outcome.apply_run_id, outcome.apply_index = _log_predictions(
                cfg, run.info.run_id, kind, apply_sources, applied, tmp / kind, command, apply_started
            )
            mlflow.log_metric(f"{kind}_estimated_map", float(outcome.apply_index["estimated_score"].mean()))
    return outcome


def _log_ensemble_model(run_id: str, model: object, sources: Sequence[SourceRun]) -> str:
    """Log the ensemble (the models of the train runs behind its sources + the IoU model) as the MLflow
    Model of ensemble run `run_id`; the model URI."""
    from kit.ensemble.segmenter import EnsembleSegmenter
    from kit.hub import log_run_model, model_of_run
    from kit.tracking.schema import get_run

    bases = []
    for source in sources:
        train_id = get_run(source.run_id).data.tags.get(Tag.TRAIN_RUN)
        bases.append((source.name, model_of_run(get_run(train_id), device="cpu")))
    return log_run_model(run_id, EnsembleSegmenter(bases, model))


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


def _apply(
    fitted: FittedEnsemble, sources: Sequence[SourceRun], progress: bool
) -> list[tuple[str, Selection, float]]:
    """(image id, selection, seconds) for every image all apply runs predicted."""
    from tqdm.auto import tqdm

    out = []
    for image_id in tqdm(
        _common_ids(sources, "apply"), desc="ensemble: apply", unit="image", disable=not progress
    ):
        started = time.perf_counter()
        cands = image_candidates(image_id, sources, fitted.split_thresholds)
        image = read_image(sources[0].index.loc[image_id, "source"])
        out.append((image_id, fitted.select(cands, image), time.perf_counter() - started))
    return out


def _log_fit(folder: Path, fit: EnsembleFit) -> None:
    """The ensemble run's model files, tables, plots and metrics."""
    import mlflow

    from kit.ensemble.plots import (
        plot_estimate,
        plot_feature_importance,
        plot_oof_scatter,
        plot_threshold_curve,
    )

    model, table, per_image = fit.fitted.model, fit.table, fit.per_image
    threshold = fit.fitted.thresholds.threshold
    model.save(folder / MODEL_DIR)
    importance = model.feature_importance()
    atomic_write_text(
        folder / "feature_importance.csv", importance.rename("gain_share").to_csv(index_label="feature")
    )
    table.to_csv(folder / "oof_candidates.csv.gz", index=False, compression="gzip")
    atomic_write_text(folder / "oof_images.csv", per_image.to_csv(index=False))
    atomic_write_text(
        folder / "threshold_curve.csv",
        pd.DataFrame({"threshold": list(fit.grid), "oof_map": fit.curve}).to_csv(index=False),
    )
    plot_feature_importance(importance, folder / "feature_importance.png")
    plot_oof_scatter(
        table["predicted_iou"].to_numpy(),
        table["target"].to_numpy(),
        table["source"].to_numpy(),
        folder / "oof_scatter.png",
    )
    plot_threshold_curve(fit.grid, fit.curve, threshold, fit.source_maps, folder / "threshold_curve.png")
    plot_estimate(
        per_image["score"].to_numpy(), per_image["estimated_score"].to_numpy(), folder / "oof_estimate.png"
    )
    mlflow.log_artifacts(str(folder))
    mlflow.log_metrics(
        {
            "threshold": threshold,
            "oof_map": fit.oof["real_map"],
            "oof_estimated_map": fit.oof["estimated_map"],
            "oof_estimate_mae": fit.oof["estimate_mae"],
            "oof_estimate_r": fit.oof["estimate_r"],
            **{f"oof_map_{s}": v for s, v in fit.source_maps.items()},
            **{f"kept_share_{s}": v for s, v in fit.kept_share.items()},
            "n_images": len(per_image),
            "n_candidates": len(table),
            "candidates_ms_per_image": fit.timing_ms[0],
            "features_ms_per_image": fit.timing_ms[1],
            "estimate_miss_rate": fit.fitted.estimator.miss_rate if fit.fitted.estimator else float("nan"),
        }
    )


def _log_predictions(
    cfg: ExperimentConfig,
    ensemble_run_id: str,
    kind: str,
    sources: Sequence[SourceRun],
    images: Sequence[tuple[str, Selection, float]],
    folder: Path,
    command: str,
    started_at: float,
) -> tuple[str, pd.DataFrame]:
    """Write the selections `images` (image id, selection, seconds) as a nested predict run of `kind`
    (the `kit.inference.artifacts` layout); the split and image file of each image are those the first
    source recorded."""
    index_rows, instance_rows = [], []
    model_runs = ";".join(s.run_id for s in sources)
    for image_id, selection, seconds in images:
        meta = sources[0].index.loc[image_id]
        kept = selection.kept
        index_rows.append(
            {
                "image_id": image_id,
                "split": meta["split"],
                "height": selection.labels.shape[0],
                "width": selection.labels.shape[1],
                "n_instances": len(kept),
                "folds": "",
                "model_runs": model_runs,
                "probs": "",
                "labels": write_labels(folder, image_id, selection.labels),
                "source": meta["source"],
                "seconds": seconds,
                "estimated_score": selection.estimated,
                "estimate_flag": selection.flag,
            }
        )
        known = {
            "image_id": image_id,
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
    write_tables(folder, index, instances)
    run_id = record_predict_run(
        cfg.mlflow_experiment,
        cfg.name,
        kind,
        folder,
        tags={
            Tag.TRAIN_RUN: ensemble_run_id,
            Tag.ENSEMBLE_RUN: ensemble_run_id,
            Tag.BASE_PREDICT_RUNS: ",".join(f"{s.name}:{s.run_id}" for s in sources),
        },
        params={"kind": kind, "n_sources": len(sources)},
        metrics={
            **prediction_metrics(index),
            "estimated_map": float(index["estimated_score"].mean()) if len(index) else 0.0,
        },
        command=command,
        started_at=started_at,
        config_yaml=cfg.to_yaml(),
        parent_run_id=ensemble_run_id,
        texts={
            "bases.json": json.dumps({"base_predict_runs": {s.name: s.run_id for s in sources}}, indent=2)
        },
    )
    return run_id, index
