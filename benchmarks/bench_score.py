"""Time `kit.metrics.dsb_score` against the widely copied Kaggle reference kernel (np.histogram2d).

Run: python benchmarks/bench_score.py

Synthetic pairs: truth = non-overlapping random ellipses; prediction = truth with every object shifted
and grown or shrunk, some dropped, some merged with a neighbour, some extra objects, and random
non-sequential ids. The reference needs ids 0..n, so it gets `relabel_sequential` copies (relabelling is
not timed); kit gets the raw ids. Both are timed in this process, best of several repeats, after warm-up.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from skimage.draw import ellipse
from skimage.segmentation import relabel_sequential
from timing import best_time

from kit.metrics import dsb_score

CASES = (((256, 320), 60, 20), ((520, 696), 250, 10), ((1040, 1388), 600, 5))  # (shape, nuclei, repeats)


# --- The Kaggle reference kernel (DSB2018 "Example Metric Implementation"), kept as published. ---
def kaggle_iou(labels: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    true_objects = len(np.unique(labels))
    pred_objects = len(np.unique(y_pred))
    intersection = np.histogram2d(labels.flatten(), y_pred.flatten(), bins=(true_objects, pred_objects))[0]
    area_true = np.histogram(labels, bins=true_objects)[0]
    area_pred = np.histogram(y_pred, bins=pred_objects)[0]
    area_true = np.expand_dims(area_true, -1)
    area_pred = np.expand_dims(area_pred, 0)
    union = area_true + area_pred - intersection
    intersection = intersection[1:, 1:]
    union = union[1:, 1:]
    union[union == 0] = 1e-9
    return intersection / union


def kaggle_precision_at(threshold: float, iou: np.ndarray) -> tuple[int, int, int]:
    matches = iou > threshold
    true_positives = np.sum(matches, axis=1) == 1
    false_positives = np.sum(matches, axis=0) == 0
    false_negatives = np.sum(matches, axis=1) == 0
    return np.sum(true_positives), np.sum(false_positives), np.sum(false_negatives)


def kaggle_score(labels: np.ndarray, y_pred: np.ndarray) -> float:
    iou = kaggle_iou(labels, y_pred)
    prec = []
    for t in np.arange(0.5, 1.0, 0.05):
        tp, fp, fn = kaggle_precision_at(t, iou)
        prec.append(tp / (tp + fp + fn))
    return float(np.mean(prec))


# --- Synthetic data ---
def _paint(canvas: np.ndarray, center, radii, rotation: float, label: int) -> None:
    rr, cc = ellipse(center[0], center[1], radii[0], radii[1], shape=canvas.shape, rotation=rotation)
    free = canvas[rr, cc] == 0
    canvas[rr[free], cc[free]] = label


def synthetic_pair(shape: tuple[int, int], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(truth, pred) int32 label images with about `n` nuclei covering about 30 % of the image."""
    radius = np.sqrt(0.3 * shape[0] * shape[1] / n / np.pi)
    centers = rng.uniform((0, 0), shape, size=(n, 2))
    radii = radius * rng.uniform(0.6, 1.4, size=(n, 2))
    rotations = rng.uniform(-np.pi, np.pi, size=n)
    truth = np.zeros(shape, np.int32)
    for i in range(n):
        _paint(truth, centers[i], radii[i], rotations[i], i + 1)

    ids = rng.choice(10 * n + 1000, size=2 * n, replace=False) + 1  # non-sequential prediction ids
    pred = np.zeros(shape, np.int32)
    _, neighbour = cKDTree(centers).query(centers, k=2)
    action = rng.choice(["keep", "drop", "merge"], size=n, p=[0.85, 0.07, 0.08])
    for i in range(n):
        if action[i] == "drop":
            continue
        label = ids[neighbour[i, 1]] if action[i] == "merge" else ids[i]
        shift = rng.normal(0.0, 0.05 * radius, size=2)
        scale = rng.uniform(0.9, 1.1, size=2)
        _paint(pred, centers[i] + shift, radii[i] * scale, rotations[i], label)
    for j in range(n // 10):  # extra objects
        center = rng.uniform((0, 0), shape)
        _paint(pred, center, radius * rng.uniform(0.4, 1.0, size=2), 0.0, ids[n + j])
    return truth, pred


def main() -> None:
    rng = np.random.default_rng(0)
    perfect = np.zeros((32, 32), np.int32)
    perfect[2:10, 2:10], perfect[12:20, 2:10], perfect[2:10, 12:30] = 1, 2, 17
    print(
        "perfect prediction with ids {1, 2, 17}: "
        f"reference {kaggle_score(perfect, perfect):.2f}, kit {dsb_score(perfect, perfect):.2f}\n"
    )

    dsb_score(*synthetic_pair((64, 64), 10, rng))  # JIT warm-up (compiled kernels are cached on disk)
    header = f"{'size':>10} {'n_true':>6} {'n_pred':>6} {'ref ms':>8} {'kit ms':>7} {'ratio':>6} {'score':>7}  same"
    print(header)
    print("-" * len(header))
    for shape, n, repeats in CASES:
        truth, pred = synthetic_pair(shape, n, rng)
        truth_seq, pred_seq = relabel_sequential(truth)[0], relabel_sequential(pred)[0]
        ref_s, ref = best_time(lambda t=truth_seq, p=pred_seq: kaggle_score(t, p), repeats)
        kit_s, kit = best_time(lambda t=truth, p=pred: dsb_score(t, p), repeats)
        ref_ms, kit_ms = 1e3 * ref_s, 1e3 * kit_s
        n_true, n_pred = len(np.unique(truth)) - 1, len(np.unique(pred)) - 1
        print(
            f"{shape[0]:>4}x{shape[1]:<5} {n_true:>6} {n_pred:>6} {ref_ms:>8.2f} {kit_ms:>7.2f} "
            f"{ref_ms / kit_ms:>5.1f}x {kit:>7.4f}  {'yes' if ref == kit else f'no (ref {ref:.4f})'}"
        )


if __name__ == "__main__":
    main()
