"""An estimate of an image's DSB score from the predicted IoUs of its kept instances, for images
without truth (a test set before submitting).

For each DSB threshold t, the DSB precision is TP / (n_pred + n_true − TP). With the kept instances'
predicted IoUs p_k:
- n_pred is known (the number kept);
- E[TP(t)] = Σ_k P(IoU_k > t | p_k). The model's predictions shrink towards the mean (a true 0.95 is
  predicted ~0.85), so p_k > t would undercount hits at high t and overcount them at low t; instead
  P(IoU > t | p) is calibrated on the OOF kept instances: one isotonic (non-decreasing) regression of
  the hit indicator on p per threshold, stored on a grid of p and interpolated;
- n_true = E[TP(0.5)] / (1 − miss_rate), where `miss_rate` is the OOF share of truth nuclei that no kept
  instance hits at IoU > 0.5 (nuclei no source found leave no trace in the predictions; their rate on
  annotated images is the best guess for new images of the same kind).
The image estimate is the mean over thresholds of E[TP] / (n_pred + n_true − E[TP]); with nothing kept
it is 0.0 (1.0 would need certainty that the image has no nucleus). The calibration is fitted on the OOF
images (`fit`), where the estimate is reported beside the real score so it can be judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kit.metrics import THRESHOLDS

P_GRID: tuple[float, ...] = tuple(float(p) for p in np.round(np.linspace(0, 1, 21), 2))


@dataclass(frozen=True)
class ScoreEstimator:
    """`hit_probability[i][j]`: P(IoU > THRESHOLDS[i]) for a kept instance predicted `P_GRID[j]`;
    `miss_rate`: share of truth nuclei no kept instance hits at IoU > 0.5."""

    hit_probability: tuple[tuple[float, ...], ...]
    miss_rate: float

    def expected_hits(self, predicted: np.ndarray) -> np.ndarray:
        """E[TP(t)] for each of the 10 `THRESHOLDS`, from the kept instances' predicted IoUs [K]."""
        p = np.asarray(predicted, dtype=np.float64)
        return np.array([np.interp(p, P_GRID, row).sum() for row in self.hit_probability])

    def image_score(self, predicted: np.ndarray) -> float:
        """Estimated DSB score of one image whose kept instances have predicted IoUs `predicted`."""
        if len(predicted) == 0:
            return 0.0
        tp = self.expected_hits(predicted)
        n_true = tp[0] / max(1.0 - self.miss_rate, 1e-6)
        return float(np.mean(tp / np.maximum(len(predicted) + n_true - tp, 1e-9)))

    def to_dict(self) -> dict[str, object]:
        return {
            "p_grid": list(P_GRID),
            "hit_probability": [list(r) for r in self.hit_probability],
            "miss_rate": self.miss_rate,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ScoreEstimator:
        """The estimator `to_dict` described."""
        if list(data.get("p_grid", P_GRID)) != list(P_GRID):
            raise ValueError("score estimator saved on another probability grid")
        return cls(
            tuple(tuple(float(v) for v in row) for row in data["hit_probability"]), float(data["miss_rate"])
        )

    @classmethod
    def fit(
        cls, predicted: Sequence[np.ndarray], target: Sequence[np.ndarray], n_true: Sequence[int]
    ) -> ScoreEstimator:
        """Fit on OOF images: per image the kept instances' predicted IoUs, their true targets (best IoU
        with the truth if above 0.5, else 0) and the image's number of truth nuclei. Without kept
        instances the calibration falls back to P(IoU > t | p) = [p > t]."""
        from sklearn.isotonic import IsotonicRegression

        p = np.concatenate([np.asarray(x, dtype=np.float64) for x in predicted]) if predicted else np.zeros(0)
        y = np.concatenate([np.asarray(x, dtype=np.float64) for x in target]) if target else np.zeros(0)
        grid = np.asarray(P_GRID)
        rows = []
        for t in THRESHOLDS:
            if p.size == 0:
                rows.append(tuple((grid > t).astype(float).tolist()))
                continue
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            rows.append(tuple(iso.fit(p, (y > t).astype(float)).predict(grid).tolist()))
        total = int(np.sum(n_true))
        miss_rate = (total - int((y > 0.5).sum())) / total if total else 0.0
        return cls(tuple(rows), float(min(max(miss_rate, 0.0), 0.95)))


def agreement(real: np.ndarray, estimated: np.ndarray) -> dict[str, float]:
    """How well per-image estimates match real scores: mean of each, mean absolute error, Pearson r."""
    real, estimated = np.asarray(real, dtype=np.float64), np.asarray(estimated, dtype=np.float64)
    r = (
        float(np.corrcoef(real, estimated)[0, 1])
        if real.size > 1 and real.std() > 0 and estimated.std() > 0
        else 0.0
    )
    return {
        "real_map": float(real.mean()) if real.size else float("nan"),
        "estimated_map": float(estimated.mean()) if estimated.size else float("nan"),
        "estimate_mae": float(np.abs(real - estimated).mean()) if real.size else float("nan"),
        "estimate_r": r,
    }
