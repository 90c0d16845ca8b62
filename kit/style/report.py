"""`kit data styles`: which image styles each split holds, as a table and a PNG mosaic.

The style clusters are the manifest's ``style`` column (k-means on intensity histograms, fit over every
split; see `kit.data.folds`), the same clusters the folds are stratified by.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kit.data.dataset import NucleiDataset
from kit.data.folds import style_summary
from kit.data.sample import SPLITS
from kit.errors import DataError
from kit.visualize import display_rgb, save_figure

RARE_FACTOR = 2.0


def styles_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per style (rows) and split, the share (%) of the train and test splits each style makes
    up, and ``rare_in_train``: the style's test share exceeds `RARE_FACTOR` × its train share."""
    if (manifest["style"] < 0).all():
        raise DataError("no style clusters in the manifest; run `kit data folds` first")
    table = style_summary(manifest[manifest["style"] >= 0])
    for split in ("train", "test"):
        count = table[split] if split in table else pd.Series(0, index=table.index)
        table[f"{split} %"] = 100.0 * count / max(int(count.sum()), 1)
    table["rare_in_train"] = table["test %"] > RARE_FACTOR * table["train %"]
    return table.reset_index()


def style_mosaic(
    dataset: NucleiDataset, path: str | os.PathLike, *, per_style: int = 6, tile: int = 160, seed: int = 0
) -> Path:
    """PNG with one row per style: up to `per_style` images (square centre crops, `tile` px), taken in
    turn from each split so rare splits show; each tile is titled with its split."""
    from matplotlib.figure import Figure

    manifest = dataset.manifest[dataset.manifest["style"] >= 0]
    if manifest.empty:
        raise DataError(f"{dataset.root}: no style clusters in the manifest; run `kit data folds` first")
    styles = sorted(int(s) for s in manifest["style"].unique())
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(1.9 * per_style, 2.1 * len(styles)))
    axes = fig.subplots(len(styles), per_style, squeeze=False)
    for row, style in zip(axes, styles, strict=True):
        rows = manifest[manifest["style"] == style]
        counts = ", ".join(f"{s} {int((rows['split'] == s).sum())}" for s in SPLITS)
        row[0].set_ylabel(f"style {style}\n{counts}", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        for ax, image_id in zip(row, _interleaved_ids(rows, per_style, rng), strict=False):
            ax.imshow(_tile(dataset.load(image_id).image, tile))
            ax.set_title(str(rows.set_index("id").loc[image_id, "split"]), fontsize=8)
    return save_figure(fig, path)


def _interleaved_ids(rows: pd.DataFrame, limit: int, rng: np.random.Generator) -> list[str]:
    """Up to `limit` ids, one from each split in turn (random order within a split)."""
    queues = [list(rng.permutation(rows.loc[rows["split"] == s, "id"].to_numpy())) for s in SPLITS]
    picked: list[str] = []
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(str(queue.pop(0)))
    return picked


def _tile(image: np.ndarray, size: int) -> np.ndarray:
    """Display RGB of the image's centred square crop, resized to `size`²."""
    rgb = display_rgb(image)
    side = min(rgb.shape[:2])
    top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    return cv2.resize(rgb[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
