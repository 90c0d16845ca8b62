"""Dataset evaluation: one row of metrics per image, then a JSON-ready summary.

Per image (one `IoUMatrix`, strict `>` at every threshold): DSB precision at each threshold and the
image score (`kit.metrics.dsb`), object F1 = 2TP / (2TP + FP + FN) at 0.50..0.90, TP/FP/FN at 0.5 and
0.7, the error taxonomy (`kit.metrics.taxonomy`) and the pixel Dice of the foreground.

Aggregation over images:
- macro (mean of per-image values): `map` (the DSB dataset score), `ap_per_threshold`, `f1_avg`
  (Caicedo et al.: mean over t in 0.50..0.90 of the mean over images of the image F1), `dice`;
- pooled (counts summed over images, then one ratio): `precision_*`, `recall_*`, `f1_*`,
  `missed_rate_0.7`; plain sums: `missed_0.7`, `extra_0.7`, `merges`, `splits`, `n_true`, `n_pred`.

Zero denominators follow the DSB empty policy: a ratio over nothing is 1.0 when there is neither truth
nor prediction (image F1, Dice, pooled precision/recall/F1) and 0.0 otherwise, so a model that
predicts nothing on an image with nuclei gets precision 0, and an image with no nuclei and no
prediction counts as perfect. `missed_rate_0.7` is 0.0 when there are no truth objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.metrics.dsb import THRESHOLDS, hits_at
from kit.metrics.overlap import IoUMatrix, iou_matrix
from kit.metrics.taxonomy import (
    SIZE_BINS,
    count_by_size,
    count_extra,
    count_merges,
    count_splits,
    missed_by_size,
)

F1_THRESHOLDS: tuple[float, ...] = THRESHOLDS[:9]
COUNT_THRESHOLDS: tuple[float, ...] = (0.5, 0.7)

AP_COLUMNS = tuple(f"ap_{t:.2f}" for t in THRESHOLDS)
F1_COLUMNS = tuple(f"f1_{t:.2f}" for t in F1_THRESHOLDS)
COUNT_COLUMNS = tuple(f"{kind}_{t}" for t in COUNT_THRESHOLDS for kind in ("tp", "fp", "fn"))
SIZE_COLUMNS = tuple(f"n_true_{name}" for name in SIZE_BINS)
MISSED_COLUMNS = tuple(f"missed_0.7_{name}" for name in SIZE_BINS)
PER_IMAGE_COLUMNS = (
    "image_id",
    "n_true",
    "n_pred",
    *AP_COLUMNS,
    "score",
    *F1_COLUMNS,
    *COUNT_COLUMNS,
    *SIZE_COLUMNS,
    *MISSED_COLUMNS,
    "extra_0.7",
    "merges",
    "splits",
    "dice",
)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Result of `evaluate`: `per_image` (one row per image, `PER_IMAGE_COLUMNS`) and `summary` (JSON-ready)."""

    per_image: pd.DataFrame
    summary: dict[str, Any]

    def to_json(self, indent: int | None = 2) -> str:
        """`{"summary": ..., "per_image": [one object per image]}` as a JSON string."""
        records = json.loads(self.per_image.to_json(orient="records"))
        return json.dumps({"summary": self.summary, "per_image": records}, indent=indent)


def _ratio(numerator: float, denominator: float, nothing_at_all: bool) -> float:
    """numerator / denominator; over a zero denominator 1.0 if there was nothing to find or claim, else 0.0."""
    if denominator == 0:
        return 1.0 if nothing_at_all else 0.0
    return float(numerator / denominator)


def _foreground_dice(m: IoUMatrix) -> float:
    """Pixel Dice 2|T ∩ P| / (|T| + |P|) of truth and predicted foreground; 1.0 when both are empty."""
    total = int(m.truth_areas.sum() + m.pred_areas.sum())
    return _ratio(2 * int(m.intersection.sum()), total, total == 0)


def image_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, int | float]:
    """All per-image metrics of one pair of H×W label images (0 = background), keyed as `PER_IMAGE_COLUMNS`.

    Raises ValueError on bad shapes or dtypes (see `kit.metrics.overlap.label_overlap`).
    """
    m = iou_matrix(truth, pred)
    n_true, n_pred = m.n_true, m.n_pred
    empty = n_true + n_pred == 0
    tp = hits_at(m.iou, THRESHOLDS)
    ap = np.ones(tp.shape) if empty else tp / (n_true + n_pred - tp)
    f1 = np.ones(tp.shape) if empty else 2 * tp / (n_true + n_pred)

    row: dict[str, int | float] = {"n_true": n_true, "n_pred": n_pred}
    row.update(zip(AP_COLUMNS, ap.tolist(), strict=True))
    row["score"] = float(ap.mean())
    row.update(zip(F1_COLUMNS, f1[: len(F1_THRESHOLDS)].tolist(), strict=True))
    for t in COUNT_THRESHOLDS:
        hits = int(hits_at(m.iou, t))
        row.update({f"tp_{t}": hits, f"fp_{t}": n_pred - hits, f"fn_{t}": n_true - hits})
    row.update(zip(SIZE_COLUMNS, count_by_size(m.truth_areas).tolist(), strict=True))
    row.update(zip(MISSED_COLUMNS, missed_by_size(m).tolist(), strict=True))
    row["extra_0.7"] = count_extra(m)
    row["merges"] = count_merges(m)
    row["splits"] = count_splits(m)
    row["dice"] = _foreground_dice(m)
    return row


def bootstrap_ci(values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> list[float] | None:
    """95 % percentile bootstrap interval [lo, hi] of the mean of `values` (resampling images).

    Deterministic for a given seed; None when `n_bootstrap` is 0 or there are no values.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    values = np.asarray(values, dtype=np.float64)
    if n_bootstrap == 0 or values.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_bootstrap, values.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, n_bootstrap: int = 1000, seed: int = 0
) -> list[float] | None:
    """95 % percentile bootstrap interval [lo, hi] of mean(a − b) over paired per-image values, resampling
    images (the test for "A beats B" on one image set: an interval above 0). None when `n_bootstrap` is 0
    or there are no values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, n_bootstrap, seed)


def f1_curve(per_image: pd.DataFrame) -> dict[str, float]:
    """Mean over images of the object F1 = 2TP / (2TP + FP + FN) at every DSB threshold (0.50..0.95),
    from the per-image AP columns: per image and threshold F1 = 2·AP / (1 + AP), AP being the DSB
    precision TP / (TP + FP + FN) (both 1 for an image with nothing to find or claim)."""
    return {c[3:]: float((2 * per_image[c] / (1 + per_image[c])).mean()) for c in AP_COLUMNS}


def summarize(per_image: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Dataset summary of a per-image table (as built by `evaluate`); plain floats, ints, lists and dicts.

    See the module docstring for which keys are macro means over images and which are pooled counts.
    """
    totals = {c: int(per_image[c].sum()) for c in ("n_true", "n_pred", *COUNT_COLUMNS, *SIZE_COLUMNS)}
    n_true, n_pred = totals["n_true"], totals["n_pred"]
    nothing = n_true + n_pred == 0
    missed = {name: int(per_image[f"missed_0.7_{name}"].sum()) for name in SIZE_BINS}

    summary: dict[str, Any] = {
        "n_images": len(per_image),
        "n_true": n_true,
        "n_pred": n_pred,
        "map": float(per_image["score"].mean()),
        "map_ci95": bootstrap_ci(per_image["score"].to_numpy(), n_bootstrap, seed),
        "ap_per_threshold": {c[3:]: float(per_image[c].mean()) for c in AP_COLUMNS},
        "f1_per_threshold": {c[3:]: float(per_image[c].mean()) for c in F1_COLUMNS},
    }
    summary["f1_avg"] = float(np.mean(list(summary["f1_per_threshold"].values())))
    for t in COUNT_THRESHOLDS:
        tp, fp, fn = totals[f"tp_{t}"], totals[f"fp_{t}"], totals[f"fn_{t}"]
        summary[f"precision_{t}"] = _ratio(tp, tp + fp, nothing)
        summary[f"recall_{t}"] = _ratio(tp, tp + fn, nothing)
        summary[f"f1_{t}"] = _ratio(2 * tp, 2 * tp + fp + fn, nothing)
    summary["n_true_by_size"] = {name: totals[f"n_true_{name}"] for name in SIZE_BINS}
    summary["missed_0.7"] = missed
    summary["missed_rate_0.7"] = _ratio(sum(missed.values()), n_true, False)
    summary["extra_0.7"] = int(per_image["extra_0.7"].sum())
    summary["merges"] = int(per_image["merges"].sum())
    summary["splits"] = int(per_image["splits"].sum())
    summary["dice"] = float(per_image["dice"].mean())
    return summary


def evaluate(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> Evaluation:
    """Score a dataset of `(image_id, truth, pred)` H×W label image pairs (0 = background).

    Returns per-image metrics and a summary (see the module docstring); `map_ci95` is a seeded
    bootstrap over images. Raises DataError naming the image on a bad pair, a repeated image id,
    or when `pairs` is empty.
    """
    from tqdm import tqdm

    rows = []
    seen: set[str] = set()
    for image_id, truth, pred in tqdm(pairs, desc="evaluate", unit="image", disable=not progress):
        if image_id in seen:
            raise DataError(f"image {image_id!r} appears twice in the evaluation set")
        seen.add(image_id)
        try:
            rows.append({"image_id": image_id, **image_metrics(truth, pred)})
        except ValueError as err:
            raise DataError(f"image {image_id!r}: {err}") from err
    if not rows:
        raise DataError("nothing to evaluate: no (image_id, truth, pred) pairs were given")
    per_image = pd.DataFrame(rows, columns=list(PER_IMAGE_COLUMNS))
    return Evaluation(per_image=per_image, summary=summarize(per_image, n_bootstrap=n_bootstrap, seed=seed))
