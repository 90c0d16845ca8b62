"""Per-candidate features for the IoU model (topcoders' ~41 features, Vuola et al. 2019's regionprops), one image
at a time and vectorised over its candidates.

Groups (names in `feature_names`):
- shape (`kit.ensemble.shape`): area, convex area, solidity, eccentricity, extent, perimeter, axes and
  their ratio, Euler number, equivalent diameter, circularity, min-area-rect sides and angle, on-border;
- probabilities inside the mask, from the candidate's source maps (NaN for a source without maps):
  mean / std / min / max of "body", mean of "border" and "mask", `core_fraction` (share of pixels with
  body·(1 − border) > 0.5, the seed region), and `score` (the source's own confidence);
- image context, against the source's own instances (split level 0) in the same image: `image_count`,
  `image_median_area`, `area_rel_median`; neighbours (other own instances whose centroid lies within r
  px of the candidate's) `nb_count_<r>` and `nb_median_area_<r>` for each radius;
- agreement: `agree_iou` (best IoU with any candidate of another source) and `agree_sources` (how many
  other sources have one at IoU > 0.5);
- split: `split_level`, `n_siblings`, `n_parts`, `parent_area_ratio` (area / the parent's area);
- `source_<name>`: one-hot of the source.

Cost: one `np.bincount` pass per layer and map, one `label_overlap` per pair of layers of different
sources, a C call per candidate for its convex hull; see `benchmarks/bench_ensemble.py`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kit.ensemble.candidates import Candidates
from kit.ensemble.shape import POSITION_COLUMNS, SHAPE_FEATURES, shape_features
from kit.metrics import iou_matrix

MAP_FEATURES: tuple[str, ...] = (
    "body_mean",
    "body_std",
    "body_min",
    "body_max",
    "border_mean",
    "mask_mean",
    "core_fraction",
    "score",
)
CONTEXT_FEATURES: tuple[str, ...] = ("image_count", "image_median_area", "area_rel_median")
AGREEMENT_FEATURES: tuple[str, ...] = ("agree_iou", "agree_sources")
SPLIT_FEATURES: tuple[str, ...] = ("split_level", "n_siblings", "n_parts", "parent_area_ratio")


def feature_names(sources: Sequence[str], radii: Sequence[int]) -> list[str]:
    """The model's feature columns, in order, for these source names and neighbour radii."""
    neighbours = [f"nb_{kind}_{r}" for r in radii for kind in ("count", "median_area")]
    return [
        *SHAPE_FEATURES,
        *MAP_FEATURES,
        *CONTEXT_FEATURES,
        *neighbours,
        *AGREEMENT_FEATURES,
        *SPLIT_FEATURES,
        *(f"source_{s}" for s in sources),
    ]


def candidate_features(cands: Candidates, sources: Sequence[str], radii: Sequence[int]) -> pd.DataFrame:
    """`feature_names(sources, radii)` of every candidate of `cands`, one row per row of `cands.table`
    (same order, a fresh 0..n-1 index)."""
    table = cands.table.reset_index(drop=True)
    columns = feature_names(sources, radii)
    if table.empty:
        return pd.DataFrame(columns=columns, dtype=float)
    per_layer = []
    for layer, rows in table.groupby("layer", sort=True):
        labels = cands.layers[layer]
        ids = rows["label"].to_numpy()
        shape = shape_features(labels).reindex(ids)
        maps = _map_features(labels, ids, cands.maps.get(str(rows["source"].iloc[0]), {}))
        per_layer.append(pd.concat([shape.set_index(rows.index), maps.set_index(rows.index)], axis=1))
    frame = pd.concat(per_layer).sort_index()
    frame["score"] = table["score"].to_numpy(dtype=float)
    frame = pd.concat([frame, _context_features(table, frame, radii)], axis=1)
    frame["agree_iou"], frame["agree_sources"] = _agreement(cands, table)
    frame["split_level"] = table["split_level"].to_numpy(dtype=float)
    frame["n_siblings"] = table["n_siblings"].to_numpy(dtype=float)
    frame["n_parts"] = table["n_parts"].to_numpy(dtype=float)
    own = table["split_level"].to_numpy() == 0
    parent_area = pd.Series(frame["area"].to_numpy()[own], index=_keys(table[own], "label"))
    frame["parent_area_ratio"] = (
        frame["area"].to_numpy() / parent_area.reindex(_keys(table, "parent")).to_numpy()
    )
    for source in sources:
        frame[f"source_{source}"] = (table["source"] == source).to_numpy(dtype=float)
    return frame[columns].astype(float)


def _keys(table: pd.DataFrame, column: str) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([table["source"].to_numpy(), table[column].to_numpy()])


def _map_features(labels: np.ndarray, ids: np.ndarray, maps: dict[str, np.ndarray]) -> pd.DataFrame:
    """Probability statistics inside each instance `ids` of `labels` (NaN where a map is missing).

    Only the pixels of `ids` are visited: one gather per map, then per-instance sums with `np.bincount`.
    """
    out = pd.DataFrame(np.nan, index=np.arange(ids.size), columns=[c for c in MAP_FEATURES if c != "score"])
    if ids.size == 0 or not maps:
        return out
    lut = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    lut[ids] = np.arange(ids.size)
    pixels = np.flatnonzero(lut[labels.ravel()] >= 0)
    group = lut[labels.ravel()[pixels]]
    area = np.bincount(group, minlength=ids.size)
    values = {name: m.ravel()[pixels].astype(np.float64) for name, m in maps.items()}

    def mean(v: np.ndarray) -> np.ndarray:
        return np.bincount(group, v, ids.size) / area

    if "body" in values:
        body = values["body"]
        out["body_mean"] = mean(body)
        out["body_std"] = np.sqrt(np.maximum(mean(body * body) - out["body_mean"].to_numpy() ** 2, 0))
        low, high = np.full(ids.size, np.inf), np.full(ids.size, -np.inf)
        np.minimum.at(low, group, body)
        np.maximum.at(high, group, body)
        out["body_min"], out["body_max"] = low, high
        core = body if "border" not in values else body * (1 - values["border"])
        out["core_fraction"] = mean((core > 0.5).astype(np.float64))
    for channel in ("border", "mask"):
        if channel in values:
            out[f"{channel}_mean"] = mean(values[channel])
    return out


def _context_features(table: pd.DataFrame, frame: pd.DataFrame, radii: Sequence[int]) -> pd.DataFrame:
    """Image context and neighbourhood of each candidate among its source's own (level-0) instances."""
    out = pd.DataFrame(index=frame.index, columns=list(CONTEXT_FEATURES), dtype=float)
    for r in radii:
        out[f"nb_count_{r}"] = 0.0
        out[f"nb_median_area_{r}"] = np.nan
    for _, rows in table.groupby("source", sort=False):
        own = rows[rows["split_level"] == 0]
        areas = frame.loc[own.index, "area"].to_numpy()
        centres = frame.loc[own.index, list(POSITION_COLUMNS)].to_numpy()
        median = float(np.median(areas)) if areas.size else np.nan
        out.loc[rows.index, "image_count"] = float(areas.size)
        out.loc[rows.index, "image_median_area"] = median
        out.loc[rows.index, "area_rel_median"] = frame.loc[rows.index, "area"].to_numpy() / median
        if areas.size == 0:
            continue
        points = frame.loc[rows.index, list(POSITION_COLUMNS)].to_numpy()
        distance = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2)
        not_parent = rows["parent"].to_numpy()[:, None] != own["label"].to_numpy()[None, :]
        for r in radii:
            near = (distance <= r) & not_parent
            out.loc[rows.index, f"nb_count_{r}"] = near.sum(axis=1).astype(float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # rows without neighbours: NaN
                out.loc[rows.index, f"nb_median_area_{r}"] = np.nanmedian(
                    np.where(near, areas, np.nan), axis=1
                )
    return out


def _agreement(cands: Candidates, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(best IoU with any candidate of another source, number of other sources with one above 0.5)."""
    layer_source = table.groupby("layer")["source"].first()
    sources = sorted(set(layer_source))
    best = np.zeros((len(sources), len(table)))  # [other source, candidate]
    rows_of = {}  # layer -> id -> row of table (-1: not a candidate)
    for layer, rows in table.groupby("layer"):
        lut = np.full(int(cands.layers[layer].max(initial=0)) + 1, -1)
        lut[rows["label"].to_numpy()] = rows.index.to_numpy()
        rows_of[layer] = lut
    for a in layer_source.index:
        for b in layer_source.index:
            if b <= a or layer_source[a] == layer_source[b]:
                continue
            m = iou_matrix(cands.layers[a], cands.layers[b])
            if m.iou.size == 0:
                continue
            for layer, ids, values, other in (
                (a, m.truth_ids, m.iou.max(axis=1), layer_source[b]),
                (b, m.pred_ids, m.iou.max(axis=0), layer_source[a]),
            ):
                rows = rows_of[layer][ids]
                valid = rows >= 0
                np.maximum.at(best[sources.index(other)], rows[valid], values[valid])
    return best.max(axis=0, initial=0.0), (best > 0.5).sum(axis=0).astype(float)
