"""Mask R-CNN models as a function: normalised image → `Detections` in the image's frame.

For each model and each dihedral transform of the TTA mode, the transformed image is predicted in
overlapping tiles (`predict_tiled_instances`; whole when it fits in one), each tile's masks are pasted
into their boxes only (`paste_masks`), and the copy is mapped back (`Detections.d4_inverse`). The copies
of all transforms and all models are merged by mask voting (`merge_detections`): fold models are
combined exactly like TTA copies.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kit.errors import ConfigError
from kit.inference.instances import Detections, concatenate, drop_duplicates, merge_detections
from kit.inference.predictor import image_tensor
from kit.inference.tiling import tile_starts
from kit.inference.tta import TRANSFORMS, check_tta, d4_forward
from kit.models.precision import ComputeMode

DetectFn = Callable[[list[torch.Tensor]], list[Detections]]
"""Tiles, each float32 (C, h, w) → their `Detections` in the tile's frame."""

CORE_MARGIN = 2
"""Pixels a tile keeps beyond its core, so that a nucleus on a core boundary whose box centre moves by
a pixel between two tiles' predictions is kept by at least one (duplicates are then dropped)."""


def paste_masks(
    boxes: torch.Tensor, masks: torch.Tensor, scores: torch.Tensor, shape: Sequence[int]
) -> Detections:
    """torchvision's raw detections of an image of `shape` (H, W) → `Detections`.

    boxes float (N, 4) as (x0, y0, x1, y1), masks (N, 1, M, M) or (N, M, M) probabilities over each box,
    scores (N,). Each mask is sampled at the pixels whose centres lie in its box, bilinearly and as the
    exact inverse of the RoI Align that made its training target (mask bin k is centred on pixel
    coordinate x0 + (k + 0.5)·(x1 − x0)/M). A box holding no pixel centre is left out.
    """
    h, w = int(shape[0]), int(shape[1])
    boxes = boxes.detach().float().cpu()
    masks = masks.detach().float().cpu().reshape(len(boxes), 1, *masks.shape[-2:])
    out_boxes, crops, kept = [], [], []
    for (x0, y0, x1, y1), mask, score in zip(boxes.tolist(), masks, scores.tolist(), strict=True):
        r0, r1 = max(math.ceil(y0), 0), min(math.floor(y1), h - 1)
        c0, c1 = max(math.ceil(x0), 0), min(math.floor(x1), w - 1)
        if r1 < r0 or c1 < c0 or y1 <= y0 or x1 <= x0:
            continue
        gy = (torch.arange(r0, r1 + 1, dtype=torch.float32) - y0) * (2 / (y1 - y0)) - 1
        gx = (torch.arange(c0, c1 + 1, dtype=torch.float32) - x0) * (2 / (x1 - x0)) - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        crop = F.grid_sample(
            mask[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
        )
        out_boxes.append((r0, c0, r1 + 1, c1 + 1))
        crops.append(crop[0, 0].numpy())
        kept.append(score)
    return Detections.build(out_boxes, crops, kept, (h, w))


def model_detector(model: nn.Module, compute: ComputeMode | None = None) -> DetectFn:
    """A `DetectFn` of a Mask R-CNN model (kit's `maskrcnn`, in eval mode), run under `compute`'s
    autocast (default: float32); boxes, masks and scores come out float32."""
    compute = compute or ComputeMode(next(model.parameters()).device, "fp32", channels_last=False)

    def detect(tiles: list[torch.Tensor]) -> list[Detections]:
        with compute.autocast():
            outputs = model([t.to(compute.device) for t in tiles])
        return [
            paste_masks(out["boxes"], out["masks"], out["scores"], tile.shape[-2:])
            for out, tile in zip(outputs, tiles, strict=True)
        ]

    return detect


def tile_cores(starts: Sequence[int], tile: int, length: int) -> list[tuple[int, int]]:
    """Per tile along one axis, the half-open range [lo, hi) it is responsible for: consecutive tiles
    split their overlap in the middle, so the cores partition [0, length)."""
    bounds = [0, *((a + tile + b) // 2 for a, b in itertools.pairwise(starts)), length]
    return list(itertools.pairwise(bounds))


@torch.no_grad()
def predict_tiled_instances(
    detect: DetectFn, image: torch.Tensor, *, tile: int = 512, overlap: int = 64, batch_size: int = 4
) -> Detections:
    """Detections of an image float32 (C, H, W) of any size, from overlapping `tile`² tiles.

    A tile keeps a candidate when its box centre lies in the tile's core (`tile_cores`, widened by
    `CORE_MARGIN`), so a nucleus cut by one tile's edge is taken whole from the tile that sees it centred:
    guaranteed for nuclei reaching less than `overlap` / 2 − `CORE_MARGIN` pixels from their centre.
    Candidates two tiles both kept (mask IoU > 0.5) count once, the higher score.
    """
    if tile < 1 or batch_size < 1 or not 0 <= overlap < tile:
        raise ConfigError(
            f"tiling needs tile, batch_size >= 1 and 0 <= overlap < tile; got tile={tile}, "
            f"batch_size={batch_size}, overlap={overlap}"
        )
    _, h, w = image.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    if len(ys) == len(xs) == 1:
        return detect([image])[0]
    cores_y = dict(zip(ys, tile_cores(ys, th, h), strict=True))
    cores_x = dict(zip(xs, tile_cores(xs, tw, w), strict=True))
    windows = [(y, x) for y in ys for x in xs]
    parts: list[Detections] = []
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        for (y, x), found in zip(
            group, detect([image[:, y : y + th, x : x + tw] for y, x in group]), strict=True
        ):
            (y_lo, y_hi), (x_lo, x_hi) = cores_y[y], cores_x[x]
            cy, cx = (found.centres() + np.array([y, x])).T
            inside = (
                (y_lo - CORE_MARGIN <= cy)
                & (cy < y_hi + CORE_MARGIN)
                & (x_lo - CORE_MARGIN <= cx)
                & (cx < x_hi + CORE_MARGIN)
            )
            parts.append(found.select(np.flatnonzero(inside)).shifted(y, x, (h, w)))
    tile_of = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    return drop_duplicates(concatenate(parts, (h, w)), tile_of)


class InstancePredictor:
    """`Detections` of a normalised uint8 H×W×C image from one or more Mask R-CNN models.

    `models` share input channels (e.g. the K fold models of one experiment). With several models or a
    TTA mode, the copies (models × transforms) are merged by `merge_detections`: groups matched at mask
    IoU > `vote_iou` and found in at least `min_vote_fraction` of the copies are kept. `precision` and
    `channels_last` say how the networks run (`kit.models.precision`).
    """

    channels: tuple[str, ...] = ("mask",)

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        tta: str = "none",
        tile: int = 512,
        overlap: int = 64,
        batch_size: int = 4,
        device: torch.device | str | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        vote_iou: float = 0.5,
        min_vote_fraction: float = 0.5,
    ) -> None:
        if not models:
            raise ValueError("InstancePredictor needs at least one model")
        check_tta(tta)
        self.device = torch.device(device) if device is not None else next(models[0].parameters()).device
        self.compute = ComputeMode.resolve(self.device, precision, channels_last)
        self.models = [self.compute.prepare(m).eval() for m in models]
        self.in_channels = int(self.models[0].kit_cfg["in_channels"])
        self._detectors = [model_detector(m, self.compute) for m in self.models]
        self.transforms = TRANSFORMS[tta]
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.vote_iou, self.min_vote_fraction = vote_iou, min_vote_fraction

    @torch.no_grad()
    def predict_detections(self, image: np.ndarray, tta: str | None = None) -> Detections:
        """Candidates of one image, merged over models and the transforms of `tta` (default the
        predictor's)."""
        transforms = self.transforms if tta is None else TRANSFORMS[tta]
        x = image_tensor(image, self.in_channels, self.device)
        copies = [
            predict_tiled_instances(
                detect, d4_forward(x, k), tile=self.tile, overlap=self.overlap, batch_size=self.batch_size
            ).d4_inverse(k)
            for detect in self._detectors
            for k in transforms
        ]
        if len(copies) == 1:
            return copies[0]
        min_votes = max(1, math.ceil(self.min_vote_fraction * len(copies) - 1e-9))
        return merge_detections(copies, iou_threshold=self.vote_iou, min_votes=min_votes)
