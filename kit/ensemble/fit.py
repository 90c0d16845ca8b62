"""The ensemble as a pure computation: fit it on out-of-fold candidates (`fit_ensemble`), and choose the
instances of any image with the result (`FittedEnsemble.select`), the one selection used both by
`kit ensemble` on stored predictions and by `kit.EnsembleSegmenter` on a new image.

Fitting, from the base models' out-of-fold predictions of images with truth:

1. each image's candidates (`kit.ensemble.candidates`, with re-splits at `split_thresholds`), their
   features (`kit.ensemble.features`) and their target against the truth (`kit.ensemble.target`);
2. the bagged LightGBM IoU model (`fit_bagged`, folds over images), whose out-of-fold predictions are
   honest for every image;
3. on those predictions the drop threshold (tuned over `THRESHOLD_GRID` when `threshold` is None, by the
   mean DSB score of the selections), the score estimator (`kit.ensemble.estimate`) and the calibration
   domain (`kit.ensemble.domain`).

No MLflow here: the stage (`kit.stages.ensemble`) finds the runs, and logs what `EnsembleFit` holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit.config import EnsembleConfig, SelectionThresholds
from kit.ensemble.candidates import Candidates, PredictionSource, SourceRun, image_candidates
from kit.ensemble.domain import CalibrationDomain, source_agreement
from kit.ensemble.estimate import ScoreEstimator, agreement
from kit.ensemble.features import candidate_features, feature_names
from kit.ensemble.model import IoUModel, fit_bagged
from kit.ensemble.selection import best_threshold, restrict, select_instances, threshold_scores
from kit.ensemble.target import best_truth_iou, iou_target
from kit.errors import DataError
from kit.metrics import dsb_score, iou_matrix

THRESHOLD_GRID: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.05, 0.801, 0.05), 2))
Source = SourceRun | PredictionSource


@dataclass
class Selection:
    """The instances chosen in one image: labels (int32 H×W), `kept` (one row per kept instance: label,
    candidate, predicted_iou, area, source, split_level), the image's estimated DSB score and its
    calibration flag ("" when no image was given to check)."""

    labels: np.ndarray
    kept: pd.DataFrame
    estimated: float
    flag: str = ""


@dataclass
class FittedEnsemble:
    """The fitted IoU model with everything selection needs: the sources it was trained on (in order),
    the re-split levels and neighbour radii of its features, its selection thresholds, the score
    estimator and the calibration domain."""

    model: IoUModel
    sources: list[str]
    split_thresholds: list[float]
    neighbour_radii: list[int]
    thresholds: SelectionThresholds
    estimator: ScoreEstimator | None = None
    domain: CalibrationDomain | None = None
    target_min_iou: float = 0.5

    def predicted_iou(self, cands: Candidates) -> np.ndarray:
        """The predicted IoU of every candidate, in table order."""
        return self.model.predict(candidate_features(cands, self.sources, self.neighbour_radii))

    def select(
        self,
        cands: Candidates,
        image: np.ndarray | None = None,
        thresholds: SelectionThresholds | None = None,
    ) -> Selection:
        """Choose among the candidates of one image (greedy NMS on predicted IoU, `select_instances`)
        and estimate its score; `image` (raw), with the kept instances and how well the sources agree,
        is checked against the calibration domain when given."""
        used = thresholds or self.thresholds
        labels, kept = select_instances(
            cands.layers,
            cands.table,
            self.predicted_iou(cands),
            threshold=used.threshold,
            nms_overlap=used.nms_overlap,
        )
        kept = kept.join(cands.table[["source", "split_level"]].reset_index(drop=True), on="candidate")
        estimated = self.estimator.image_score(kept["predicted_iou"].to_numpy()) if self.estimator else np.nan
        flag = ""
        if image is not None and self.domain:
            agreement = (
                source_agreement([cands.source_labels(s) for s in self.sources])
                if self.domain.agreements
                else float("nan")
            )
            flag = self.domain.check(image, labels, agreement)[0]
        return Selection(labels, kept, float(estimated), flag)

    def to_metadata(self) -> dict[str, Any]:
        """What `from_model` needs, stored with the IoU model (`IoUModel.metadata`)."""
        return {
            "sources": list(self.sources),
            "neighbour_radii": list(self.neighbour_radii),
            "split_thresholds": list(self.split_thresholds),
            "target_min_iou": self.target_min_iou,
            "threshold": self.thresholds.threshold,
            "nms_overlap": self.thresholds.nms_overlap,
            **({"estimator": self.estimator.to_dict()} if self.estimator else {}),
            **({"domain": self.domain.to_dict()} if self.domain else {}),
        }

    @classmethod
    def from_model(cls, model: IoUModel) -> FittedEnsemble:
        """The fitted ensemble an IoU model saved by `kit ensemble` describes (its metadata)."""
        meta = model.metadata
        return cls(
            model,
            list(meta.get("sources", [])),
            list(meta.get("split_thresholds", [])),
            list(meta.get("neighbour_radii", [50, 100, 150, 200])),
            SelectionThresholds(
                threshold=float(meta.get("threshold", 0.3)), nms_overlap=float(meta.get("nms_overlap", 0.3))
            ),
            ScoreEstimator.from_dict(meta["estimator"]) if "estimator" in meta else None,
            CalibrationDomain.from_dict(meta["domain"]) if "domain" in meta else None,
            float(meta.get("target_min_iou", 0.5)),
        )


@dataclass
class EnsembleFit:
    """What fitting produced, for the stage to log: the fitted ensemble; one row per OOF candidate
    (`table`: image id, candidate columns, features, best IoU, target, predicted IoU); the OOF selections
    at the chosen threshold (by image id); the per-image table (real, estimated and each source's score);
    the threshold curve; agreement of estimate and truth; each source's share of the kept instances; and
    the time candidates and features took (ms per image)."""

    fitted: FittedEnsemble
    table: pd.DataFrame
    selections: dict[str, Selection]
    per_image: pd.DataFrame
    grid: tuple[float, ...]
    curve: np.ndarray
    oof: dict[str, float]
    source_maps: dict[str, float]
    kept_share: dict[str, float]
    timing_ms: tuple[float, float]
    seconds: dict[str, float] = field(default_factory=dict)


def fit_ensemble(
    ids: Sequence[str],
    sources: Sequence[Source],
    settings: EnsembleConfig,
    *,
    truth_of: Callable[[str], np.ndarray],
    image_of: Callable[[str], np.ndarray],
    cache: Path,
    progress: bool = True,
) -> EnsembleFit:
    """Fit the ensemble of `sources` on images `ids` (see the module docstring). `truth_of` and `image_of`
    give an image's truth labels and raw image; candidates are cached under `cache` between passes."""
    names = [s.name for s in sources]
    features = feature_names(names, settings.neighbour_radii)
    table, timing = _training_table(ids, sources, settings, features, truth_of, cache, progress)
    lgbm = settings.lightgbm
    model, table["predicted_iou"] = fit_bagged(
        table,
        table["target"].to_numpy(),
        table["image_id"].to_numpy(),
        features,
        n_bags=settings.n_bags,
        n_folds=settings.n_folds,
        num_leaves=lgbm.num_leaves,
        feature_fraction=lgbm.feature_fraction,
        learning_rate=lgbm.learning_rate,
        num_boost_round=lgbm.num_boost_round,
        min_data_in_leaf=lgbm.min_data_in_leaf,
        num_threads=lgbm.num_threads,
        seed=settings.seed,
    )
    grid = THRESHOLD_GRID if settings.threshold is None else (settings.threshold,)
    at_min, curve, seconds, agreements = _oof_selections(
        ids, table, cache, truth_of, grid, settings.nms_overlap, names
    )
    threshold = best_threshold(grid, curve)
    selections, per_image, estimator = _oof_results(ids, at_min, threshold, table, sources, truth_of)
    domain = CalibrationDomain.fit(
        [image_of(i) for i in ids],
        [selections[i].labels for i in ids],
        agreements,
    )
    fitted = FittedEnsemble(
        model,
        names,
        list(settings.split_thresholds),
        list(settings.neighbour_radii),
        SelectionThresholds(threshold=threshold, nms_overlap=settings.nms_overlap),
        estimator,
        domain,
        settings.target_min_iou,
    )
    model.metadata = fitted.to_metadata()
    return EnsembleFit(
        fitted,
        table,
        selections,
        per_image,
        grid,
        curve,
        agreement(per_image["score"].to_numpy(), per_image["estimated_score"].to_numpy()),
        {s: float(per_image[f"score_{s}"].mean()) for s in names},
        _kept_share(selections.values(), names),
        timing,
        seconds,
    )


def _training_table(
    ids: Sequence[str],
    sources: Sequence[Source],
    settings: EnsembleConfig,
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
        cands = image_candidates(image_id, sources, settings.split_thresholds)
        built = time.perf_counter()
        frame = candidate_features(cands, names, settings.neighbour_radii)
        seconds += (built - started, time.perf_counter() - built)
        best = best_truth_iou(cands, truth_of(image_id))
        info = cands.table.reset_index(drop=True)
        frame = pd.concat([info.drop(columns=[c for c in info.columns if c in frame.columns]), frame], axis=1)
        frame.insert(0, "image_id", image_id)
        frame["best_iou"] = best
        frame["target"] = iou_target(best, settings.target_min_iou)
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
    sources: Sequence[str],
) -> tuple[list[tuple[np.ndarray, pd.DataFrame]], np.ndarray, dict[str, float], list[float]]:
    """Per OOF image the selection at min(grid) (labels, kept), the mean DSB score over the images at
    each grid threshold, each image's selection time (s) and how well its `sources` agree."""
    rows = table.groupby("image_id", sort=False).indices
    selections, curve, seconds, agreements = [], np.zeros(len(grid)), {}, []
    for i, image_id in enumerate(ids):
        cands = Candidates.load(cache / f"{i}.npz", image_id)
        started = time.perf_counter()
        predicted = table["predicted_iou"].to_numpy()[rows[image_id]]
        labels, kept = select_instances(
            cands.layers, cands.table, predicted, threshold=min(grid), nms_overlap=nms_overlap
        )
        kept["candidate"] = rows[image_id][kept["candidate"].to_numpy()]
        seconds[image_id] = time.perf_counter() - started
        selections.append((labels, kept))
        curve += threshold_scores(truth_of(image_id), labels, kept, grid)
        agreements.append(source_agreement([cands.source_labels(s) for s in sources]))
    return selections, curve / len(ids), seconds, agreements


def _oof_results(
    ids: Sequence[str],
    at_min: Sequence[tuple[np.ndarray, pd.DataFrame]],
    threshold: float,
    table: pd.DataFrame,
    sources: Sequence[Source],
    truth_of: Callable[[str], np.ndarray],
) -> tuple[dict[str, Selection], pd.DataFrame, ScoreEstimator]:
    """The OOF selections at `threshold` (kept instances with their source and split level), a per-image
    table (real score, estimated score, each source's score) and the score estimator fitted on them."""
    selections, rows, predicted, target, n_true = {}, [], [], [], []
    for image_id, (labels, kept) in zip(ids, at_min, strict=True):
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
        selections[image_id] = Selection(labels, kept, np.nan)
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
    for selection, p in zip(selections.values(), predicted, strict=True):
        selection.estimated = estimator.image_score(p)
    per_image = pd.DataFrame(rows)
    per_image.insert(4, "estimated_score", [s.estimated for s in selections.values()])
    return selections, per_image, estimator


def _kept_share(selections: Any, names: Sequence[str]) -> dict[str, float]:
    """Share of the kept instances that came from each source."""
    kept = [s.kept["source"].to_numpy(dtype=str) for s in selections]
    sources = np.concatenate(kept) if kept else np.zeros(0, dtype=str)
    return {s: float(np.mean(sources == s)) if sources.size else 0.0 for s in names}
