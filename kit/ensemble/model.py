"""The IoU model: LightGBM regressors bagged over repeated K-fold splits of the images.

`fit_bagged` repeats a shuffled K-fold split of the *images* (all candidates of an image fall in the
same fold, so a model never scores an image whose candidates it trained on) `n_bags` times. Each of
the n_bags × n_folds boosters (native `lgb.train`, L2 regression) draws its own `num_leaves`,
`feature_fraction` and `learning_rate` from the given ranges (topcoders: 50 × 3-fold; Vuola et al. 2019:
"multiple models with varying learning rate, number of leaves and feature fraction, averaged").
The out-of-fold prediction of a candidate is the mean over bags of the booster that did not see its
image; a new candidate gets the mean of all boosters. Predictions are clipped to [0, 1].

On disk (`save` / `load`): `booster_<i>.txt` (LightGBM model text) per booster and `model.json` with the
feature names, each booster's parameters and free-form metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.fileio import atomic_write_text

MODEL_FILE = "model.json"


@dataclass
class IoUModel:
    """Averaged LightGBM boosters predicting a candidate's IoU with the truth from `features`."""

    features: list[str]
    boosters: list[Any]
    params: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted IoU in [0, 1] of every row of `frame` (which must hold the `features` columns)."""
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise DataError(
                f"candidate features lack {', '.join(missing[:5])}: the model was trained on other sources"
            )
        if len(frame) == 0:
            return np.zeros(0)
        x = frame[self.features].to_numpy(dtype=np.float64)
        # One image's few hundred rows: a single thread beats OpenMP's start-up per booster.
        predictions = [b.predict(x, num_threads=1) for b in self.boosters]
        return np.clip(np.mean(predictions, axis=0), 0.0, 1.0)

    def feature_importance(self) -> pd.Series:
        """Mean share of the total split gain per feature over the boosters, largest first."""
        shares = []
        for booster in self.boosters:
            gain = booster.feature_importance(importance_type="gain")
            shares.append(gain / gain.sum() if gain.sum() > 0 else gain)
        return pd.Series(np.mean(shares, axis=0), index=self.features).sort_values(ascending=False)

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write the boosters and model.json into `folder`; return the files written."""
        folder = Path(folder)
        files = [
            atomic_write_text(folder / f"booster_{i}.txt", booster.model_to_string())
            for i, booster in enumerate(self.boosters)
        ]
        meta = {"features": self.features, "params": self.params, "metadata": self.metadata}
        files.append(atomic_write_text(folder / MODEL_FILE, json.dumps(meta, indent=2)))
        return files

    @classmethod
    def load(cls, folder: str | os.PathLike) -> IoUModel:
        """Read a model written by `save`."""
        import lightgbm as lgb

        folder = Path(folder)
        try:
            meta = json.loads((folder / MODEL_FILE).read_text())
            boosters = [
                lgb.Booster(model_str=(folder / f"booster_{i}.txt").read_text())
                for i in range(len(meta["params"]))
            ]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{folder}: not an ensemble model folder ({exc})") from None
        return cls(meta["features"], boosters, meta["params"], meta.get("metadata", {}))


def fit_bagged(
    frame: pd.DataFrame,
    target: np.ndarray,
    groups: Sequence[str],
    features: Sequence[str],
    *,
    n_bags: int = 10,
    n_folds: int = 3,
    num_leaves: tuple[int, int] = (15, 63),
    feature_fraction: tuple[float, float] = (0.5, 0.9),
    learning_rate: tuple[float, float] = (0.02, 0.1),
    num_boost_round: int = 200,
    min_data_in_leaf: int = 20,
    num_threads: int = 1,
    seed: int = 0,
) -> tuple[IoUModel, np.ndarray]:
    """Train the bagged model on rows of `frame` (columns `features`) with `target`, folds over `groups`
    (one image id per row); return it and the out-of-fold prediction of every row (see module docstring).

    Ranges are inclusive (low, high): num_leaves uniform over integers, the others uniform. Raises
    DataError with fewer than two images.
    """
    import lightgbm as lgb

    images, image_index = np.unique(np.asarray(groups), return_inverse=True)
    if images.size < 2:
        raise DataError(
            f"the IoU model needs candidates from at least 2 images to cross-validate, got {images.size}"
        )
    n_folds = min(n_folds, images.size)
    x = frame[list(features)].to_numpy(dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boosters, params_list = [], []
    oof = np.zeros(len(y))
    for _ in range(n_bags):
        fold_of_image = np.empty(images.size, dtype=np.int64)
        fold_of_image[rng.permutation(images.size)] = np.arange(images.size) % n_folds
        fold = fold_of_image[image_index]
        for k in range(n_folds):
            params = {
                "objective": "regression",
                "num_leaves": int(rng.integers(num_leaves[0], num_leaves[1] + 1)),
                "feature_fraction": float(rng.uniform(*feature_fraction)),
                "learning_rate": float(rng.uniform(*learning_rate)),
                "min_data_in_leaf": min_data_in_leaf,
                "bagging_fraction": 0.8,
                "bagging_freq": 1,
                "seed": int(rng.integers(2**31 - 1)),
                "deterministic": True,
                "num_threads": num_threads,
                "force_row_wise": True,
                "verbosity": -1,
            }
            train = fold != k
            dataset = lgb.Dataset(x[train], y[train], feature_name=list(features), free_raw_data=True)
            booster = lgb.train(params, dataset, num_boost_round=num_boost_round)
            oof[~train] += np.clip(booster.predict(x[~train]), 0.0, 1.0)
            boosters.append(booster)
            params_list.append({**params, "num_boost_round": num_boost_round})
    return IoUModel(list(features), boosters, params_list), oof / n_bags
