"""Stitching: which block keeps each nucleus, so every nucleus appears once, whole, under one global label.

The rule, after studying the two reference systems:

- StarDist's `predict_instances_big` (stardist/big.py) keeps an object in the one block that is
  "responsible" for it: the object must not touch the block's cut edge (so it was seen whole), and the
  block's responsible region is chosen so that exactly one block of a chain qualifies. It is exact when
  neighbouring blocks see the same object the same way, and raises when an object exceeds the overlap.
- Cellpose's distributed segmentation (cellpose/contrib/distributed_segmentation.py) segments overlapping
  blocks, crops the overlaps, and merges labels that touch across block faces with a union-find over the
  label adjacency graph. A nucleus cut by a face is glued back, but two different nuclei that touch at a
  face are glued too, and a nucleus that the two blocks segment differently is split at the seam
  (cellpose #1364).

kit follows StarDist (keep whole objects in one block; never glue pieces), and adds an arbitration for
the case StarDist assumes away, that two blocks segment a nucleus near their seam slightly differently
(different context gives slightly different probabilities, so a centre can move across the seam):

1. A block proposes every object of its window that touches none of the window's cut edges (it was seen
   whole) and whose bounding-box centre lies inside its core or within `margin` pixels of it. An
   object centred inside the core but touching a cut edge is larger than the halo allows: it is dropped,
   and its box kept, so the caller can say how many such nuclei there were (`too_large`: the pieces
   different blocks saw of one nucleus overlap, and count once) and "raise the halo".
2. A proposal whose box lies inside the core shrunk by the halo (an *interior* object) cannot be seen by
   any other block: it is kept as it is. The others (*seam* objects, few) are arbitrated.
3. Seam proposals are taken in order of depth (how far the centre lies inside its own block's core, the
   block whose view had the most context first). One that shares more than half its pixels with those
   already kept is the same nucleus seen again and is dropped (`duplicates`); otherwise it is kept with
   the pixels no earlier one took.
4. Global labels 1..N are given block by block (row-major), in each block in the order of its own labels.

With blocks that agree (any model on well-separated context, and the test's exact models) this keeps
exactly one copy of every nucleus; where they disagree it still keeps one, from the block that saw it
best. The halo must exceed the largest nucleus (the centre may lie `margin` outside the core and the
object must still fit inside the window).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from kit.scale.plan import Block, Region

TABLE_COLUMNS = (
    "label",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "centroid_y",
    "centroid_x",
    "area",
    "score",
    "mean_prob",
)
"""The instance table: global label, bounding box (half-open, global pixels), centroid, area in pixels,
the model's score (detection score or predicted IoU; NaN for semantic models) and mean foreground
probability (NaN where the model has none)."""

_INTEGER_COLUMNS = ("label", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area")
DUPLICATE_FRACTION = 0.5


@dataclass
class SeamObject:
    """A proposal near a seam: its block, local label, box (global), depth, model values, and its mask
    cropped to the box. After arbitration, `mask` holds only the pixels it owns and `label` is global."""

    block: int
    local: int
    box: Region
    depth: float
    score: float
    mean_prob: float
    mask: np.ndarray = field(repr=False)
    label: int = 0


@dataclass
class BlockProposals:
    """What one block proposes: interior objects (local labels and their final table rows, without the
    global label), seam objects, and the boxes of objects too large for the halo."""

    block: int
    interior: pd.DataFrame
    seam: list[SeamObject]
    too_large: list[Region]


def propose(
    block: Block,
    labels: np.ndarray,
    halo: int,
    margin: int,
    values: pd.DataFrame | None = None,
) -> tuple[BlockProposals, np.ndarray]:
    """Proposals of `block` from the label image of its window, and the core's label image holding only
    the interior objects (local labels). `values` holds per local label a score and a mean_prob."""
    wy0, wy1, wx0, wx1 = block.window
    cy0, cy1, cx0, cx1 = block.core
    if labels.shape != (wy1 - wy0, wx1 - wx0):
        raise ValueError(f"labels of block {block.index} have shape {labels.shape}, window is {block.window}")
    sy0, sy1, sx0, sx1 = block.seams
    inner = (cy0 + halo * sy0, cy1 - halo * sy1, cx0 + halo * sx0, cx1 - halo * sx1)
    top, bottom, left, right = block.cut
    scores, probs = _values(values)
    interior_ids, rows, seam = [], [], []
    too_large: list[Region] = []
    for local, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        ly0, ly1, lx0, lx1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        gy0, gy1, gx0, gx1 = ly0 + wy0, ly1 + wy0, lx0 + wx0, lx1 + wx0
        depth = block.depth((gy0 + gy1) / 2, (gx0 + gx1) / 2)
        if depth < -margin:
            continue  # a neighbour's nucleus
        touches = (top and ly0 == 0) or (bottom and ly1 == labels.shape[0])
        touches = touches or (left and lx0 == 0) or (right and lx1 == labels.shape[1])
        if touches:
            if depth >= 0:
                too_large.append((gy0, gy1, gx0, gx1))
            continue
        mask = labels[box] == local
        score, prob = scores.get(local, np.nan), probs.get(local, np.nan)
        if inner[0] <= gy0 and gy1 <= inner[1] and inner[2] <= gx0 and gx1 <= inner[3]:
            interior_ids.append(local)
            rows.append(_row(mask, (gy0, gy1, gx0, gx1), score, prob))
        else:
            seam.append(SeamObject(block.index, local, (gy0, gy1, gx0, gx1), depth, score, prob, mask))
    core = labels[cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0]
    keep = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    keep[interior_ids] = True
    core_labels = np.where(keep[core], core, 0).astype(np.int32)
    interior = pd.DataFrame(rows, columns=list(TABLE_COLUMNS[1:]))
    interior.insert(0, "local", np.asarray(interior_ids, dtype=np.int64))
    return BlockProposals(block.index, interior, seam, too_large), core_labels


def _values(values: pd.DataFrame | None) -> tuple[dict, dict]:
    if values is None or values.empty:
        return {}, {}
    labels = values["label"].to_numpy()
    return (
        dict(zip(labels, values["score"].to_numpy(dtype=float), strict=True)) if "score" in values else {},
        dict(zip(labels, values["mean_prob"].to_numpy(dtype=float), strict=True))
        if "mean_prob" in values
        else {},
    )


def _row(mask: np.ndarray, box: Region, score: float, prob: float) -> tuple:
    """A table row (without label) for an object given by its mask inside `box`."""
    ys, xs = np.nonzero(mask)
    y0, _, x0, _ = box
    return (
        y0 + int(ys.min()),
        x0 + int(xs.min()),
        y0 + int(ys.max()) + 1,
        x0 + int(xs.max()) + 1,
        y0 + float(ys.mean()),
        x0 + float(xs.mean()),
        int(ys.size),
        float(score),
        float(prob),
    )


@dataclass
class Arbitration:
    """The seam objects kept (owned pixels only, in the order they were kept) and how many proposals were
    dropped as a second view of a nucleus already kept."""

    kept: list[SeamObject]
    duplicates: int


def arbitrate(seam: Iterable[SeamObject], cell: int = 64) -> Arbitration:
    """Keep one view of every nucleus among seam proposals (rule 3 of the module docstring)."""
    order = sorted(seam, key=lambda o: (-o.depth, o.block, o.local))
    kept: list[SeamObject] = []
    grid: dict[tuple[int, int], list[int]] = {}
    duplicates = 0
    for obj in order:
        mask = obj.mask.copy()
        area = int(mask.sum())
        taken = 0
        for i in _near(grid, obj.box, cell):
            other = kept[i]
            overlap = _intersection(obj.box, other.box)
            if overlap is None:
                continue
            mine, theirs = _crop(mask, obj.box, overlap), _crop(other.mask, other.box, overlap)
            both = mine & theirs
            taken += int(both.sum())
            mine &= ~both  # a view of `mask`: the pixels stay with the earlier object
        if taken > DUPLICATE_FRACTION * area:
            duplicates += 1
            continue
        obj.mask = mask
        kept.append(obj)
        for key in _cells(obj.box, cell):
            grid.setdefault(key, []).append(len(kept) - 1)
    return Arbitration(kept, duplicates)


def _cells(box: Region, cell: int) -> list[tuple[int, int]]:
    y0, y1, x0, x1 = box
    return [
        (r, c)
        for r in range(y0 // cell, (y1 - 1) // cell + 1)
        for c in range(x0 // cell, (x1 - 1) // cell + 1)
    ]


def _near(grid: dict[tuple[int, int], list[int]], box: Region, cell: int) -> list[int]:
    return sorted({i for key in _cells(box, cell) for i in grid.get(key, ())})


def _intersection(a: Region, b: Region) -> Region | None:
    y0, y1, x0, x1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def _crop(mask: np.ndarray, box: Region, region: Region) -> np.ndarray:
    """The part of `mask` (covering `box`) inside `region` (a view)."""
    return mask[region[0] - box[0] : region[1] - box[0], region[2] - box[2] : region[3] - box[2]]


@dataclass
class Labelling:
    """Global labels: per block, the interior objects' (local → global) lookup and the seam objects it
    kept; the instance table; counts."""

    luts: dict[int, np.ndarray]
    seam: list[SeamObject]
    table: pd.DataFrame
    duplicates: int
    too_large: int


def assign_labels(proposals: Sequence[BlockProposals], arbitration: Arbitration) -> Labelling:
    """Number the kept objects 1..N block by block, each block's in the order of its local labels
    (rule 4), and build the instance table."""
    seam_by_block: dict[int, list[SeamObject]] = {}
    for obj in arbitration.kept:
        seam_by_block.setdefault(obj.block, []).append(obj)
    luts, frames = {}, []
    next_label = 1
    for prop in sorted(proposals, key=lambda p: p.block):
        seam = seam_by_block.get(prop.block, [])
        locals_ = np.concatenate(
            [prop.interior["local"].to_numpy(np.int64), np.asarray([o.local for o in seam], dtype=np.int64)]
        )
        order = np.argsort(locals_, kind="stable")
        labels = np.empty(locals_.size, dtype=np.int64)
        labels[order] = np.arange(next_label, next_label + locals_.size)
        next_label += locals_.size
        n_interior = len(prop.interior)
        lut = np.zeros(int(locals_.max(initial=0)) + 1, dtype=np.int32)
        lut[locals_[:n_interior]] = labels[:n_interior]
        luts[prop.block] = lut
        for obj, label in zip(seam, labels[n_interior:], strict=True):
            obj.label = int(label)
        interior = prop.interior.drop(columns="local").assign(label=labels[:n_interior])
        frames.append(interior)
        if seam:
            rows = [(o.label, *_row(o.mask, o.box, o.score, o.mean_prob)) for o in seam]
            frames.append(pd.DataFrame(rows, columns=list(TABLE_COLUMNS)))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(TABLE_COLUMNS))
    table = table[list(TABLE_COLUMNS)].sort_values("label", ignore_index=True)
    table = table.astype({c: ("int64" if c in _INTEGER_COLUMNS else "float64") for c in TABLE_COLUMNS})
    return Labelling(
        luts,
        arbitration.kept,
        table,
        arbitration.duplicates,
        count_overlapping([box for p in proposals for box in p.too_large]),
    )


def count_overlapping(boxes: Sequence[Region]) -> int:
    """The number of groups of boxes that overlap (directly or through others)."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(boxes):
        for j in range(i):
            if _intersection(a, boxes[j]) is not None:
                parent[root(i)] = root(j)
    return len({root(i) for i in range(len(boxes))})


def paint_core(
    block: Block, core_labels: np.ndarray, lut: np.ndarray, seam: Iterable[SeamObject]
) -> np.ndarray:
    """The final labels of `block`'s core: its interior objects through `lut`, then the pixels each kept
    seam object owns inside the core."""
    out = lut[core_labels] if core_labels.size else core_labels.astype(np.int32)
    y0, _, x0, _ = block.core
    for obj in seam:
        overlap = _intersection(obj.box, block.core)
        if overlap is None:
            continue
        mask = _crop(obj.mask, obj.box, overlap)
        target = out[overlap[0] - y0 : overlap[1] - y0, overlap[2] - x0 : overlap[3] - x0]
        target[mask] = obj.label
    return out
