"""Instances from detections: overlap resolution, mask voting across TTA copies, D4 mapping, tiled
prediction that keeps nuclei on tile borders whole, and the InstancePredictor end to end on a fake
Mask R-CNN whose detections are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.draw import disk
from torch import nn
from torchvision.ops import roi_align

from kit.inference.instance_predictor import (
    InstancePredictor,
    paste_masks,
    predict_tiled_instances,
    tile_cores,
)
from kit.inference.instances import Detections, detections_to_labels, drop_duplicates, merge_detections
from kit.inference.tta import d4_forward
from kit.metrics import dsb_score
from kit.targets import instance_targets


def disc(
    shape: tuple[int, int], centre: tuple[float, float], radius: float, value: float = 1.0
) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    out[disk(centre, radius, shape=shape)] = value
    return out


def disc_labels(shape: tuple[int, int], discs: list[tuple[tuple[int, int], int]]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for k, (centre, radius) in enumerate(discs, start=1):
        labels[disk(centre, radius, shape=shape)] = k
    return labels


# --------------------------------------------------------------------------------------------------
# detections → label image


def test_contested_pixels_go_to_the_nearest_centroid() -> None:
    shape = (40, 60)
    big, small = disc(shape, (20, 20), 12), disc(shape, (20, 32), 8)
    # The small disc scores higher, so score order would give it the whole overlap.
    detections = Detections.from_dense(np.stack([big, small]), [0.7, 0.9])
    labels, scores = detections_to_labels(detections, min_size=1)
    np.testing.assert_allclose(scores, [0.9, 0.7])  # labels run by descending score: small = 1, big = 2
    contested = (big > 0) & (small > 0)
    assert contested.sum() > 20
    ys, xs = np.nonzero(contested)
    # x = 26 is as near to both centroids: a tie goes to the higher score
    nearer_small = (ys - 20) ** 2 + (xs - 32) ** 2 <= (ys - 20) ** 2 + (xs - 20) ** 2
    assert nearer_small.any() and not nearer_small.all()
    np.testing.assert_array_equal(labels[ys, xs], np.where(nearer_small, 1, 2))
    assert np.array_equal(labels > 0, (big > 0) | (small > 0))  # no pixel lost or added

    by_score, _ = detections_to_labels(detections, min_size=1, overlap="score")
    assert np.all(by_score[contested] == 1)


def test_score_threshold_min_size_and_mask_threshold() -> None:
    shape = (30, 30)
    masks = np.stack([disc(shape, (8, 8), 5, 0.9), disc(shape, (20, 20), 5, 0.4), disc(shape, (22, 6), 1)])
    detections = Detections.from_dense(masks, [0.8, 0.95, 0.6])
    labels, scores = detections_to_labels(detections, score_threshold=0.5, mask_threshold=0.5, min_size=10)
    # disc 2 scores best but its mask is under the threshold; disc 3 (5 px) is too small
    assert labels.max() == 1 and np.array_equal(labels == 1, masks[0] > 0)
    np.testing.assert_allclose(scores, [0.8])
    labels, _ = detections_to_labels(detections, score_threshold=0.9)
    assert labels.max() == 0
    empty, none = detections_to_labels(Detections.build([], [], [], shape))
    assert empty.shape == shape and empty.dtype == np.int32 and none.shape == (0,)


# --------------------------------------------------------------------------------------------------
# mask voting across copies


def test_two_copies_of_the_same_instance_merge_into_one() -> None:
    shape = (40, 40)
    first = Detections.from_dense(disc(shape, (20, 20), 8)[None], [0.9])
    second = Detections.from_dense(disc(shape, (21, 20), 8, 0.8)[None], [0.7])  # shifted by a pixel
    merged = merge_detections([first, second], min_votes=2)
    assert len(merged) == 1
    np.testing.assert_allclose(merged.scores, [0.8])  # (0.9 + 0.7) / 2 copies
    expected = (first.dense()[0] + second.dense()[0]) / 2  # mean probability of the two masks
    np.testing.assert_allclose(merged.dense()[0], expected)


def test_instance_seen_in_one_of_four_copies_is_dropped() -> None:
    shape = (50, 50)
    common = disc(shape, (15, 15), 7)
    rare = disc(shape, (35, 35), 6)
    copies = [Detections.from_dense(common[None], [0.9]) for _ in range(3)]
    copies.append(Detections.from_dense(np.stack([common, rare]), [0.9, 0.95]))
    merged = merge_detections(copies, min_votes=2)
    assert len(merged) == 1 and np.array_equal(merged.dense()[0] > 0.5, common > 0)
    assert len(merge_detections(copies, min_votes=1)) == 2
    np.testing.assert_allclose(merge_detections(copies, min_votes=1).scores, [0.9, 0.95 / 4])


def test_distinct_instances_of_one_copy_never_merge() -> None:
    shape = (30, 30)
    both = np.stack([disc(shape, (15, 10), 6), disc(shape, (15, 19), 6)])  # overlapping neighbours
    merged = merge_detections([Detections.from_dense(both, [0.9, 0.8])], min_votes=1)
    assert len(merged) == 2


@pytest.mark.parametrize("k", range(8))
def test_detections_d4_inverse_matches_the_dense_inverse(k: int) -> None:
    rng = np.random.default_rng(k)
    dense = np.zeros((3, 13, 17), dtype=np.float32)
    dense[0, 2:5, 3:9] = rng.random((3, 6)) + 0.1
    dense[1, :, 15:] = 0.7  # touches three image edges
    dense[2, 7:9, 0] = 0.9
    predicted = Detections.from_dense(np.stack([d4_forward(d, k) for d in dense]), [0.9, 0.8, 0.7])
    back = predicted.d4_inverse(k)
    assert back.shape == (13, 17)
    np.testing.assert_array_equal(back.dense(), dense)


def test_drop_duplicates_keeps_the_best_of_other_groups_only() -> None:
    shape = (30, 30)
    a, b = disc(shape, (15, 15), 6), disc(shape, (15, 16), 6)
    detections = Detections.from_dense(np.stack([a, b, b]), [0.6, 0.9, 0.5])
    kept = drop_duplicates(detections, np.array([0, 1, 1]))
    np.testing.assert_allclose(kept.scores, [0.9, 0.5])  # a duplicates b of tile 1; same-tile b stays


# --------------------------------------------------------------------------------------------------
# tiles


def components_detector(tiles: list[torch.Tensor]) -> list[Detections]:
    """A perfect detector: every connected bright region of a tile is one instance, score 0.9."""
    out = []
    for tile in tiles:
        labels, n = ndi.label(tile[0].numpy() > 0.5)
        masks = np.stack([labels == k for k in range(1, n + 1)]) if n else np.zeros((0, *labels.shape))
        out.append(Detections.from_dense(masks, [0.9] * n))
    return out


def test_tile_cores_partition_the_axis() -> None:
    assert tile_cores([0, 32, 64, 96], 64, 160) == [(0, 48), (48, 80), (80, 112), (112, 160)]
    assert tile_cores([0], 64, 50) == [(0, 50)]


def test_tiled_prediction_keeps_a_nucleus_on_a_tile_border_as_one_instance() -> None:
    shape = (100, 160)  # tiles of 64 at x = 0, 32, 64, 96 and y = 0, 36
    truth = disc_labels(shape, [((30, 64), 7), ((50, 48), 6), ((80, 130), 9), ((64, 20), 5)])
    image = torch.from_numpy((truth > 0).astype(np.float32))[None]
    detections = predict_tiled_instances(components_detector, image, tile=64, overlap=32, batch_size=3)
    labels, _ = detections_to_labels(detections, min_size=1)
    assert labels.max() == 4
    assert dsb_score(truth, labels) == 1.0


# --------------------------------------------------------------------------------------------------
# InstancePredictor on a fake Mask R-CNN


class ExactMaskRCNN(nn.Module):
    """torchvision's eval-mode output for the connected bright regions of each image: boxes through the
    extreme pixel centres and 28×28 masks made by RoI Align, as Mask R-CNN learns them."""

    def __init__(self) -> None:
        super().__init__()
        self.kit_cfg = {"in_channels": 1, "task": "instance", "channels": ("mask",)}
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            labels, _ = ndi.label(image[0].cpu().numpy() > 0.5)
            boxes, masks = instance_targets(labels, min_area=1)
            boxes_t = torch.from_numpy(boxes)
            rois = torch.cat([torch.arange(len(boxes)).float()[:, None], boxes_t], dim=1)
            small = roi_align(torch.from_numpy(masks)[:, None].float(), rois, (28, 28), 1.0)
            outputs.append({"boxes": boxes_t, "scores": torch.full((len(boxes),), 0.9), "masks": small})
        return outputs


def test_paste_masks_inverts_the_roi_align_targets() -> None:
    truth = disc_labels((64, 64), [((20, 20), 9), ((45, 40), 3), ((10, 55), 2)])
    (out,) = ExactMaskRCNN()([torch.from_numpy(truth > 0).float()[None]])
    pasted = paste_masks(out["boxes"], out["masks"], out["scores"], truth.shape).dense() > 0.5
    as_sets = {tuple(np.flatnonzero(mask)) for mask in pasted}
    assert as_sets == {tuple(np.flatnonzero(truth == k)) for k in (1, 2, 3)}


@pytest.mark.parametrize("tta", ["none", "d4"])
def test_instance_predictor_merges_tta_copies_into_one_instance_each(tta: str) -> None:
    truth = disc_labels((90, 120), [((20, 30), 8), ((60, 64), 10), ((45, 100), 6), ((80, 10), 4)])
    image = ((truth > 0) * 255).astype(np.uint8)[..., None]
    predictor = InstancePredictor([ExactMaskRCNN()], tta=tta, tile=64, overlap=32, device="cpu")
    detections = predictor.predict_detections(image)
    assert len(detections) == 4  # 8 copies of each nucleus (D4) merged into one
    np.testing.assert_allclose(detections.scores, 0.9, rtol=1e-6)
    labels, _ = detections_to_labels(detections, min_size=1)
    assert dsb_score(truth, labels) == 1.0
