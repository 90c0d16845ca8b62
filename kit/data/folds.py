"""Image-style clusters and style-stratified K-fold splits.

As in Vuola et al. 2019 (§4.4.2; see docs/references.md), images are clustered by k-means on
intensity-histogram features and the training folds are stratified by cluster, so every fold holds every image
type. Clusters are fit on all splits, so reports can show test styles that are rare in training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from kit.data.sample import SPLITS
from kit.errors import DataError

_DARK_LEVEL = 0.2
_MAX_AUTO_CLUSTERS = 8
_KMEANS_N_INIT = 10
_PROGRESS_MIN_IMAGES = 50


def style_features(image: np.ndarray, bins: int = 32) -> np.ndarray:
    """Style feature vector (float64, length ``3 * bins + 5``) of one image.

    The image (H×W, H×W×1, H×W×2 grey + alpha, or H×W×C with C >= 3, of which the first three channels
    are used) is scaled to [0, 1] by its dtype's range (uint8 / 255, uint16 / 65535; floats are taken as
    already in [0, 1] and clipped), not by its own percentiles, so a dim fluorescence image stays dark.
    Grey images count as three equal channels. Features: the square root of each channel's normalised
    histogram (Euclidean distances between them are Hellinger distances, so one large background peak
    does not swamp the rest), the mean of each channel, the mean channel spread (max − min over channels;
    0 for grey), and the fraction of dark pixels (mean over channels < 0.2).
    """
    rgb = _unit_rgb(image)
    idx = np.minimum((rgb * bins).astype(np.int64), bins - 1)
    offsets = np.arange(3) * bins
    counts = np.bincount((idx + offsets).reshape(-1), minlength=3 * bins).astype(np.float64)
    hist = np.sqrt(counts / (rgb.shape[0] * rgb.shape[1]))
    grey = rgb.mean(axis=2)
    stats = [
        *rgb.mean(axis=(0, 1)),
        float((rgb.max(axis=2) - rgb.min(axis=2)).mean()),
        float((grey < _DARK_LEVEL).mean()),
    ]
    return np.concatenate([hist, np.asarray(stats, dtype=np.float64)])


def _unit_rgb(image: np.ndarray) -> np.ndarray:
    """H×W×3 float32 in [0, 1], scaled by the dtype's range."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] <= 2:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or img.size == 0:
        raise DataError(f"style_features expects an H×W or H×W×C image, got shape {img.shape}.")
    if img.dtype == np.bool_:
        unit = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer):
        unit = img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)
    else:
        unit = img.astype(np.float32)
    unit = np.clip(unit, 0.0, 1.0)
    if unit.ndim == 2:
        return np.repeat(unit[:, :, None], 3, axis=2)
    return unit[:, :, :3]


def style_clusters(
    images: Sequence[np.ndarray] | np.ndarray, n_clusters: int | None = None, seed: int = 0
) -> np.ndarray:
    """Cluster images by style; returns int64 cluster ids (n,), 0 = the largest cluster.

    `images` is either a 2-D feature matrix (one `style_features` row per image) or a sequence of images.
    With `n_clusters` None the number of clusters is the one in 2..min(8, n − 1) with the best silhouette
    score (the smaller on ties); a single image, two images, or images with identical features give one
    cluster. A given `n_clusters` is capped at the number of distinct feature rows. KMeans uses ``n_init=10`` and ``random_state=seed``. Ties in cluster size are ordered by
    first appearance, so the ids are deterministic.
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        features = images.astype(np.float64)
    else:
        features = np.array([style_features(img) for img in images], dtype=np.float64)
    n = len(features)
    if n_clusters is not None and not 1 <= n_clusters <= max(n, 1):
        raise DataError(f"n_clusters must lie in 1..{n} (the number of images), got {n_clusters}.")
    if n <= 1:
        return np.zeros(n, dtype=np.int64)

    n_distinct = len(np.unique(features, axis=0))
    if n_clusters is None:
        candidates = range(2, min(_MAX_AUTO_CLUSTERS, n - 1, n_distinct) + 1)
        best_score, labels = -np.inf, np.zeros(n, dtype=np.int64)
        for k in candidates:
            fitted = _kmeans(features, k, seed)
            if len(np.unique(fitted)) < 2:
                continue
            score = silhouette_score(features, fitted)
            if score > best_score:
                best_score, labels = score, fitted
    else:
        labels = _kmeans(features, min(n_clusters, n_distinct), seed)
    return _order_by_size(labels)


def _kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k == 1:
        return np.zeros(len(features), dtype=np.int64)
    with warnings.catch_warnings():
        # Near-duplicate images can leave fewer distinct centres than k; the labels are still usable.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=_KMEANS_N_INIT, random_state=seed).fit_predict(features)


def _order_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster ids 0.. by decreasing size, ties by first appearance."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    lut = np.empty(ids.max() + 1, dtype=np.int64)
    lut[ids[order]] = np.arange(len(ids))
    return lut[labels]


def stratified_folds(clusters: np.ndarray, k: int = 4, seed: int = 0) -> np.ndarray:
    """Fold ids (int64, 0..k−1) for images with the given style clusters, stratified by cluster.

    Uses StratifiedKFold(shuffle=True, random_state=seed). Clusters with fewer than `k` members cannot be
    spread over every fold: they are pooled into one "rare" stratum, and if that pool itself has fewer
    than `k` members it joins the largest cluster's stratum. Raises DataError unless 2 <= k <= n.
    """
    clusters = np.asarray(clusters).reshape(-1)
    n = len(clusters)
    if k < 2:
        raise DataError(f"K-fold needs k >= 2 folds, got k={k}.")
    if k > n:
        raise DataError(f"Cannot split {n} image(s) into k={k} folds; use k <= {n} or add images.")

    ids, inverse, counts = np.unique(clusters, return_inverse=True, return_counts=True)
    rare = counts < k
    strata = inverse.copy()
    rare_rows = rare[inverse]
    if rare_rows.sum() >= k:
        strata[rare_rows] = len(ids)
    else:
        strata[rare_rows] = int(np.argmax(counts))

    folds = np.empty(n, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros((n, 1)), strata)):
        folds[held_out] = fold
    return folds


def assign_styles_and_folds(
    manifest: pd.DataFrame,
    load_image: Callable[[str], np.ndarray],
    k: int = 4,
    n_clusters: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Copy of `manifest` with integer columns ``style`` (all rows) and ``fold`` (train rows, else −1).

    `manifest` needs columns ``id`` and ``split``; ``load_image(id)`` returns the image. Styles are
    clustered over every row (see `style_clusters`); folds split the "train" rows by style (see
    `stratified_folds`). Fewer train rows than `k` get one fold each (`fold_count` tells how many folds
    were made); a manifest with fewer than two train rows gets fold −1 everywhere. A progress bar is
    shown above 50 images.
    """
    missing = [c for c in ("id", "split") if c not in manifest.columns]
    if missing:
        raise DataError(f"Manifest is missing column(s) {missing}; it needs at least 'id' and 'split'.")
    out = manifest.copy()
    ids = out["id"].astype(str).tolist()
    progress = tqdm(ids, desc="style features", disable=len(ids) <= _PROGRESS_MIN_IMAGES)
    rows = [style_features(load_image(image_id)) for image_id in progress]
    features = np.array(rows, dtype=np.float64) if rows else np.empty((0, 0))
    out["style"] = style_clusters(features, n_clusters=n_clusters, seed=seed)
    train = (out["split"] == "train").to_numpy()
    folds = np.full(len(out), -1, dtype=np.int64)
    if train.sum() >= 2:
        k = min(k, int(train.sum()))
        folds[train] = stratified_folds(out.loc[train, "style"].to_numpy(), k=k, seed=seed)
    out["fold"] = folds
    return out


def fold_count(manifest: pd.DataFrame) -> int:
    """The number of folds a manifest's train split is divided into (0 when it has none)."""
    folds = manifest["fold"] if "fold" in manifest else pd.Series(dtype=int)
    return int(folds[folds >= 0].nunique())


def fold_remark(n_train: int, requested: int, made: int) -> str | None:
    """One line saying that fewer folds than `requested` were made for `n_train` train images, or None."""
    if made >= requested:
        return None
    if made == 0:
        return (
            f"{n_train} train image(s): no folds (K-fold training needs at least 2); "
            "the images can still be predicted and scored"
        )
    return f"{n_train} train image(s): {made} folds instead of {requested}"


def style_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Image counts per style (rows) and split (columns, known splits first), plus a ``total`` column."""
    missing = [c for c in ("style", "split") if c not in manifest.columns]
    if missing:
        raise DataError(f"style_summary needs columns 'style' and 'split'; missing {missing}.")
    table = pd.crosstab(manifest["style"], manifest["split"])
    present = list(table.columns)
    table = table[[s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)]
    table["total"] = table.sum(axis=1)
    table.columns.name = None
    return table
