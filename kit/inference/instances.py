"""Instance candidates (detections) → merged across predictions → a non-overlapping label image.

`Detections` is the sparse form a Mask R-CNN prediction takes in kit: N candidates, each a float32
mask-probability crop inside an integer box of the image, with a score. It stays small at any image size
(a full-size mask per candidate would cost gigabytes on a 1000² image with hundreds of nuclei).

- `merge_detections`: mask voting over several predictions of one image (TTA copies mapped back to the
  image, fold models): candidates matched by mask IoU, kept when found by enough predictions.
- `drop_duplicates`: one candidate per nucleus where predictions of different tiles overlap.
- `detections_to_labels`: candidates → int32 label image. A pixel claimed by several instances goes to
  the instance whose centroid is nearest (Vuola et al. 2019: better than score order), or to the highest score.

All functions are numpy only. Boxes are (y0, x0, y1, x1), half-open pixel ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kit.inference.postprocess import size_limit
from kit.inference.tta import d4_inverse

OVERLAP_RULES = ("centroid", "score")


@dataclass(frozen=True)
class Detections:
    """N instance candidates of an image of `shape` (H, W).

    boxes: int64 (N, 4) (y0, x0, y1, x1) inside the image, non-empty; masks: N float32 arrays of shape
    (y1 − y0, x1 − x0), each pixel's probability of belonging to the instance; scores: float32 (N,).
    """

    boxes: np.ndarray
    masks: tuple[np.ndarray, ...]
    scores: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.masks)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,):
            raise ValueError(f"need boxes (N, 4) and scores (N,) for N = {n} masks")
        for box, mask in zip(self.boxes, self.masks, strict=True):
            if mask.shape != (box[2] - box[0], box[3] - box[1]) or mask.size == 0:
                raise ValueError(f"mask of shape {mask.shape} does not fill its box {tuple(box)}")

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def build(
        cls, boxes: Sequence, masks: Sequence[np.ndarray], scores: Sequence[float], shape: tuple[int, int]
    ) -> Detections:
        """Detections from lists (any lengths, 0 included), cast to the documented dtypes."""
        return cls(
            np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
            tuple(np.asarray(m, dtype=np.float32) for m in masks),
            np.asarray(scores, dtype=np.float32).reshape(-1),
            (int(shape[0]), int(shape[1])),
        )

    @classmethod
    def from_dense(cls, masks: np.ndarray, scores: Sequence[float]) -> Detections:
        """Full-size probability masks (N, H, W) → Detections, each cropped to its nonzero pixels (a mask
        without any is left out)."""
        masks = np.asarray(masks, dtype=np.float32)
        boxes, crops, kept = [], [], []
        for mask, score in zip(masks, scores, strict=True):
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if rows.size:
                box = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
                boxes.append(box)
                crops.append(mask[box[0] : box[2], box[1] : box[3]])
                kept.append(score)
        return cls.build(boxes, crops, kept, masks.shape[1:])

    def dense(self) -> np.ndarray:
        """Full-size probability masks float32 (N, H, W) (for small images and tests)."""
        out = np.zeros((len(self), *self.shape), dtype=np.float32)
        for k, ((y0, x0, y1, x1), mask) in enumerate(zip(self.boxes, self.masks, strict=True)):
            out[k, y0:y1, x0:x1] = mask
        return out

    def select(self, index: np.ndarray) -> Detections:
        """The candidates at integer positions `index`, in that order."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        return Detections(
            self.boxes[index], tuple(self.masks[i] for i in index), self.scores[index], self.shape
        )

    def shifted(self, dy: int, dx: int, shape: tuple[int, int]) -> Detections:
        """The same candidates placed at offset (dy, dx) in a frame of `shape` (a tile into its image)."""
        return Detections(self.boxes + np.array([dy, dx, dy, dx]), self.masks, self.scores, shape)

    def d4_inverse(self, k: int) -> Detections:
        """Candidates predicted on `d4_forward(image, k)` mapped back to the image (`kit.inference.tta`)."""
        boxes, (h, w) = self.boxes.copy(), self.shape
        if k >= 4:  # undo the left-right flip
            boxes[:, [1, 3]] = w - boxes[:, [3, 1]]
        for _ in range(k % 4):  # undo one counter-clockwise quarter turn: (y, x) → (x, h − 1 − y)
            boxes = np.stack([boxes[:, 1], h - boxes[:, 2], boxes[:, 3], h - boxes[:, 0]], axis=1)
            h, w = w, h
        masks = tuple(np.ascontiguousarray(d4_inverse(m, k)) for m in self.masks)
        return Detections(boxes.reshape(-1, 4), masks, self.scores, (h, w))

    def centres(self) -> np.ndarray:
        """Box centres float64 (N, 2) as (y, x)."""
        return (self.boxes[:, :2] + self.boxes[:, 2:]) / 2

    def probability_map(self) -> np.ndarray:
        """float32 (H, W): each pixel's highest score × mask probability over the candidates, a foreground
        probability that needs no threshold (low-score candidates count little)."""
        out = np.zeros(self.shape, dtype=np.float32)
        for (y0, x0, y1, x1), mask, score in zip(self.boxes, self.masks, self.scores, strict=True):
            np.maximum(out[y0:y1, x0:x1], score * mask, out=out[y0:y1, x0:x1])
        return out


def concatenate(parts: Sequence[Detections], shape: tuple[int, int]) -> Detections:
    """All candidates of `parts` (each of `shape`) in one `Detections`, in order."""
    if any(p.shape != tuple(shape) for p in parts):
        raise ValueError(f"cannot concatenate detections of shapes {[p.shape for p in parts]} into {shape}")
    return Detections.build(
        np.concatenate([p.boxes for p in parts]) if parts else [],
        [m for p in parts for m in p.masks],
        np.concatenate([p.scores for p in parts]) if parts else [],
        shape,
    )


def merge_detections(
    predictions: Sequence[Detections],
    *,
    iou_threshold: float = 0.5,
    min_votes: int = 1,
    mask_threshold: float = 0.5,
) -> Detections:
    """Mask voting over several predictions of the same image, all in the image's frame.

    Greedy by score: the best unclaimed candidate opens a group, and from each other prediction the
    unclaimed candidate with the highest mask IoU (masks > `mask_threshold`) above `iou_threshold` joins
    it. A group found by at least `min_votes` predictions becomes one candidate: its mask the mean of the
    members' probabilities over the union of their boxes (0 outside a member's box), its score the sum of
    the members' scores divided by the number of predictions, so a candidate some predictions missed
    scores lower. Returns the merged candidates by descending score.
    """
    if not predictions:
        raise ValueError("merge_detections needs at least one prediction")
    shape = predictions[0].shape
    pooled = concatenate(predictions, shape)
    source = np.repeat(np.arange(len(predictions)), [len(p) for p in predictions])
    binary = [m > mask_threshold for m in pooled.masks]
    areas = np.array([b.sum() for b in binary], dtype=np.int64)
    claimed = np.zeros(len(pooled), dtype=bool)
    boxes, masks, scores = [], [], []
    for i in np.argsort(-pooled.scores, kind="stable"):
        if claimed[i]:
            continue
        claimed[i] = True
        group = [i]
        candidates = np.flatnonzero(
            ~claimed & (source != source[i]) & _overlapping(pooled.boxes[i], pooled.boxes)
        )
        ious = np.array([_mask_iou(pooled.boxes, binary, areas, i, j) for j in candidates])
        for s in np.unique(source[candidates]):
            in_s = np.flatnonzero(source[candidates] == s)
            best = in_s[np.argmax(ious[in_s])]
            if ious[best] > iou_threshold:
                group.append(candidates[best])
                claimed[candidates[best]] = True
        if len(group) < min_votes:
            continue
        box, mask = _mean_mask(pooled.boxes[group], [pooled.masks[j] for j in group])
        boxes.append(box)
        masks.append(mask)
        scores.append(pooled.scores[group].sum() / len(predictions))
    merged = Detections.build(boxes, masks, scores, shape)
    return merged.select(np.argsort(-merged.scores, kind="stable"))


def drop_duplicates(
    detections: Detections, groups: np.ndarray, *, iou_threshold: float = 0.5, mask_threshold: float = 0.5
) -> Detections:
    """Leave out each candidate whose mask (> `mask_threshold`) has IoU > `iou_threshold` with a higher
    scored candidate of another group (`groups`: int (N,), e.g. the tile each came from). Order kept."""
    binary = [m > mask_threshold for m in detections.masks]
    areas = np.array([b.sum() for b in binary], dtype=np.int64)
    kept = np.zeros(len(detections), dtype=bool)
    for i in np.argsort(-detections.scores, kind="stable"):
        rivals = np.flatnonzero(
            kept & (groups != groups[i]) & _overlapping(detections.boxes[i], detections.boxes)
        )
        kept[i] = all(_mask_iou(detections.boxes, binary, areas, i, j) <= iou_threshold for j in rivals)
    return detections.select(np.flatnonzero(kept))


def _overlapping(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Bool (N,): which `boxes` share at least one pixel with `box`."""
    return (boxes[:, 0] < box[2]) & (box[0] < boxes[:, 2]) & (boxes[:, 1] < box[3]) & (box[1] < boxes[:, 3])


def _mask_iou(boxes: np.ndarray, binary: list[np.ndarray], areas: np.ndarray, i: int, j: int) -> float:
    y0, x0 = np.maximum(boxes[i, :2], boxes[j, :2])
    y1, x1 = np.minimum(boxes[i, 2:], boxes[j, 2:])
    if y0 >= y1 or x0 >= x1:
        return 0.0
    (ai, bi), (aj, bj) = boxes[i, :2], boxes[j, :2]
    inter = np.count_nonzero(
        binary[i][y0 - ai : y1 - ai, x0 - bi : x1 - bi] & binary[j][y0 - aj : y1 - aj, x0 - bj : x1 - bj]
    )
    union = areas[i] + areas[j] - inter
    return float(inter / union) if union else 0.0


def _mean_mask(boxes: np.ndarray, masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(union box, mean of `masks` over it)."""
    union = np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])
    total = np.zeros((union[2] - union[0], union[3] - union[1]), dtype=np.float32)
    for (y0, x0, y1, x1), mask in zip(boxes - np.tile(union[:2], 2), masks, strict=True):
        total[y0:y1, x0:x1] += mask
    return union, total / len(masks)


def detections_to_labels(
    detections: Detections,
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_size: int = 10,
    min_area_fraction: float = 0.0,
    overlap: Literal["centroid", "score"] = "centroid",
) -> tuple[np.ndarray, np.ndarray]:
    """(labels int32 (H, W), scores float32 (n,)): the candidates scoring ≥ `score_threshold` as instances.

    An instance is the pixels of its mask > `mask_threshold`. A pixel claimed by several instances goes
    to the one whose centroid (of its own mask) is nearest with `overlap="centroid"`, or to the highest
    score with "score"; ties go to the higher score. Instances left with fewer than `min_size` pixels, or
    under `min_area_fraction` of the median area of the image's instances, are dropped. Labels run 1..n by descending score; label i has score `scores[i - 1]`.
    """
    if overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {OVERLAP_RULES}, got {overlap!r}")
    order = np.argsort(-detections.scores, kind="stable")
    order = order[detections.scores[order] >= score_threshold]
    owner = np.zeros(detections.shape, dtype=np.int32)
    key = np.full(detections.shape, np.inf, dtype=np.float32)  # the current owner's claim; lower wins
    for rank, i in enumerate(order, start=1):
        y0, x0, y1, x1 = detections.boxes[i]
        mask = detections.masks[i] > mask_threshold
        if not mask.any():
            continue
        if overlap == "centroid":
            ys, xs = np.nonzero(mask)
            rows, cols = np.ogrid[: mask.shape[0], : mask.shape[1]]
            claim = ((rows - ys.mean()) ** 2 + (cols - xs.mean()) ** 2).astype(np.float32)
        else:
            claim = np.full(mask.shape, rank, dtype=np.float32)
        region = key[y0:y1, x0:x1]
        take = mask & (claim < region)
        region[take] = claim[take]
        owner[y0:y1, x0:x1][take] = rank
    areas = np.bincount(owner.ravel(), minlength=len(order) + 1)
    keep = areas >= max(size_limit(areas, min_size, min_area_fraction), 1)
    keep[0] = False
    lut = np.zeros(keep.size, dtype=np.int32)
    lut[keep] = np.arange(1, np.count_nonzero(keep) + 1, dtype=np.int32)
    return lut[owner], detections.scores[order][keep[1:]]
