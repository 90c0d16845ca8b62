"""Exact tests of kit.metrics: overlap matrix, DSB score, taxonomy, dataset evaluation."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from kit.errors import DataError
from kit.metrics import (
    THRESHOLDS,
    bootstrap_ci,
    dsb_precisions,
    dsb_score,
    evaluate,
    hits_at,
    image_metrics,
    iou_matrix,
    label_overlap,
    precision_at,
)
from kit.metrics.evaluation import PER_IMAGE_COLUMNS
from kit.metrics.overlap import label_overlap_reference

# ---------------------------------------------------------------- slow, independent reference


def slow_iou_parts(truth: np.ndarray, pred: np.ndarray):
    """Object ids, intersections and unions by boolean masks, one pair at a time."""
    t_ids = [int(i) for i in np.unique(truth) if i != 0]
    p_ids = [int(i) for i in np.unique(pred) if i != 0]
    inter = np.zeros((len(t_ids), len(p_ids)), dtype=np.int64)
    union = np.ones_like(inter)
    for i, a in enumerate(t_ids):
        for j, b in enumerate(p_ids):
            g, q = truth == a, pred == b
            inter[i, j] = np.count_nonzero(g & q)
            union[i, j] = np.count_nonzero(g | q)
    return t_ids, p_ids, inter, union


def slow_counts(truth: np.ndarray, pred: np.ndarray, percent: int) -> tuple[int, int, int]:
    """(TP, FP, FN) at threshold percent/100 with an exact integer test 100·|g∩p| > percent·|g∪p|."""
    t_ids, p_ids, inter, union = slow_iou_parts(truth, pred)
    hit = 100 * inter > percent * union
    truth_hit, pred_hit = hit.any(axis=1), hit.any(axis=0)
    assert truth_hit.sum() == pred_hit.sum() == hit.sum()  # one-to-one above 0.5
    tp = int(truth_hit.sum())
    return tp, len(p_ids) - tp, len(t_ids) - tp


def slow_dsb(truth: np.ndarray, pred: np.ndarray) -> float:
    scores = []
    for percent in range(50, 100, 5):
        tp, fp, fn = slow_counts(truth, pred, percent)
        scores.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
    return sum(scores) / len(scores)


def random_pair(rng: np.random.Generator, shape=(32, 40)) -> tuple[np.ndarray, np.ndarray]:
    """Random rectangles with gapped ids; the prediction is a shifted, thinned, relabelled copy plus extras."""
    truth = np.zeros(shape, np.int32)
    for _ in range(rng.integers(0, 12)):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, 12, size=2)
        truth[y : y + h, x : x + w] = rng.integers(1, 500)
    shift = tuple(rng.integers(-1, 2, size=2)) if rng.random() < 0.5 else (0, 0)
    pred = np.roll(truth, shift, axis=(0, 1))
    if rng.random() < 0.5:
        pred = np.where(rng.random(shape) < 0.05, 0, pred)  # ragged edges
    ids = np.unique(pred[pred > 0])
    drop = ids[rng.random(ids.size) < 0.2]
    pred = np.where(np.isin(pred, drop), 0, pred)
    lut = rng.permutation(1000)
    lut[0] = 0
    pred = lut[pred]  # new, scrambled ids
    for _ in range(rng.integers(0, 3)):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        pred[y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = rng.integers(1000, 1100)
    return truth, pred.astype(rng.choice([np.uint16, np.int32, np.int64]))


def square(shape, *boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """Label image with objects given as (label, y0, y1, x0, x1)."""
    out = np.zeros(shape, np.int32)
    for label, y0, y1, x0, x1 in boxes:
        out[y0:y1, x0:x1] = label
    return out


# ---------------------------------------------------------------- overlap


ODD_CASES = {
    "gapped ids": (square((20, 20), (1, 0, 5, 0, 5), (17, 8, 20, 8, 20)), square((20, 20), (3, 2, 9, 2, 9))),
    "both empty": (np.zeros((6, 7), int), np.zeros((6, 7), int)),
    "no background": (np.ones((5, 5), int), np.full((5, 5), 4)),
    "touching borders": (square((8, 8), (1, 0, 8, 0, 4), (2, 0, 8, 4, 8)), square((8, 8), (5, 0, 4, 0, 8))),
}


@pytest.mark.parametrize("case", ODD_CASES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, ">u2", np.int32, np.uint32, np.int64, np.uint64])
def test_label_overlap_matches_reference(case: str, dtype) -> None:
    truth, pred = (a.astype(dtype) for a in ODD_CASES[case])
    fast, slow = label_overlap(truth, pred), label_overlap_reference(truth, pred)
    for got, want in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(got, want)
    assert fast[0].sum() == truth.size


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_label_overlap_huge_ids(dtype) -> None:
    """Ids far beyond the pixel count (hashes) are compacted by sorting instead of a lookup table."""
    truth = np.array([[0, 2**40], [2**40, 7]], dtype)
    pred = np.array([[2**62, 0], [1, 1]], dtype)
    counts, truth_ids, pred_ids = label_overlap(truth, pred)
    np.testing.assert_array_equal(truth_ids, [0, 7, 2**40])
    np.testing.assert_array_equal(pred_ids, [0, 1, 2**62])
    np.testing.assert_array_equal(counts, [[0, 0, 1], [0, 1, 0], [1, 1, 0]])


def test_label_overlap_random_against_reference() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        truth, pred = random_pair(rng)
        for got, want in zip(label_overlap(truth, pred), label_overlap_reference(truth, pred), strict=True):
            np.testing.assert_array_equal(got, want)


def test_reference_overlap_is_not_exported() -> None:
    import kit.metrics

    assert "label_overlap_reference" not in kit.metrics.__all__
    assert not hasattr(kit.metrics, "label_overlap_reference")


@pytest.mark.parametrize(
    ("truth", "pred", "message"),
    [
        (np.zeros((4, 5), int), np.zeros((5, 4), int), r"\(4, 5\) and \(5, 4\)"),
        (np.zeros((4, 5), float), np.zeros((4, 5), int), "truth must have an integer dtype"),
        (np.zeros((4, 5), int), np.zeros((4, 5), bool), "skimage.measure.label"),
        (np.zeros((2, 4, 5), int), np.zeros((4, 5), int), "truth must be a 2-D label image"),
        (np.zeros((4, 5), int), -np.ones((4, 5), int), "pred has negative labels"),
    ],
)
def test_label_overlap_rejects_bad_input(truth, pred, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        label_overlap(truth, pred)


def test_iou_matrix_hand_case() -> None:
    truth = square((12, 12), (4, 0, 4, 0, 4), (9, 6, 12, 6, 12))  # areas 16 and 36
    pred = square((12, 12), (2, 0, 4, 0, 2), (5, 6, 12, 9, 12))  # areas 8 and 18
    m = iou_matrix(truth, pred)
    np.testing.assert_array_equal(m.truth_ids, [4, 9])
    np.testing.assert_array_equal(m.pred_ids, [2, 5])
    np.testing.assert_array_equal(m.truth_areas, [16, 36])
    np.testing.assert_array_equal(m.pred_areas, [8, 18])
    np.testing.assert_array_equal(m.intersection, [[8, 0], [0, 18]])
    np.testing.assert_allclose(m.iou, [[0.5, 0.0], [0.0, 0.5]])
    assert m.iou.dtype == np.float64


# ---------------------------------------------------------------- DSB score


def test_thresholds_are_exact() -> None:
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_iou_of_exactly_0_9_is_a_miss_at_0_9() -> None:
    truth = square((16, 16), (1, 2, 12, 2, 12))  # 10×10
    pred = square((16, 16), (1, 2, 11, 2, 12))  # 9×10 inside: IoU = 90 / 100
    assert iou_matrix(truth, pred).iou[0, 0] == 0.9
    iou = iou_matrix(truth, pred).iou
    assert precision_at(iou, 0.85) == 1.0
    assert precision_at(iou, 0.90) == 0.0
    assert precision_at(iou, 0.95) == 0.0
    np.testing.assert_array_equal(dsb_precisions(truth, pred), [1] * 8 + [0, 0])
    assert dsb_score(truth, pred) == pytest.approx(0.8)


def test_non_sequential_ids_perfect_prediction() -> None:
    truth = square((32, 32), (1, 2, 10, 2, 10), (2, 12, 20, 2, 10), (17, 2, 10, 12, 30))
    assert dsb_score(truth, truth) == 1.0
    scrambled = np.select([truth == 1, truth == 2, truth == 17], [40, 3, 9], 0)
    assert dsb_score(truth, scrambled) == 1.0


def test_empty_policy() -> None:
    empty = np.zeros((8, 8), np.int32)
    one = square((8, 8), (3, 1, 4, 1, 4))
    assert dsb_score(empty, empty) == 1.0
    assert dsb_score(empty, one) == 0.0
    assert dsb_score(one, empty) == 0.0
    assert precision_at(np.zeros((0, 0)), 0.5) == 1.0


def test_merge() -> None:
    truth = square((12, 24), (1, 0, 10, 0, 10), (2, 0, 10, 10, 20))  # two touching squares
    pred = square((12, 24), (7, 0, 10, 0, 20))  # one prediction over both: IoU 0.5 each
    row = image_metrics(truth, pred)
    assert (row["merges"], row["splits"]) == (1, 0)
    assert row["score"] == 0.0  # 0.5 is not > 0.5
    assert (row["tp_0.5"], row["fp_0.5"], row["fn_0.5"]) == (0, 1, 2)


def test_split() -> None:
    truth = square((12, 24), (5, 0, 10, 0, 20))
    pred = square((12, 24), (1, 0, 10, 0, 10), (2, 0, 10, 10, 20))
    row = image_metrics(truth, pred)
    assert (row["merges"], row["splits"]) == (0, 1)
    assert (row["tp_0.5"], row["fp_0.5"], row["fn_0.5"]) == (0, 2, 1)


def test_small_overlaps_are_neither_merge_nor_split() -> None:
    truth = square((12, 24), (1, 0, 10, 0, 10), (2, 0, 10, 10, 20))
    pred = square((12, 24), (3, 0, 10, 0, 11))  # IoU with truth 2 is 10/200 = 0.05
    row = image_metrics(truth, pred)
    assert (row["merges"], row["splits"]) == (0, 0)
    assert row["tp_0.7"] == 1


def test_extra_object() -> None:
    truth = square((20, 20), (1, 0, 5, 0, 5), (2, 10, 15, 10, 15))
    pred = square((20, 20), (1, 0, 5, 0, 5), (2, 10, 15, 10, 15), (3, 16, 20, 0, 4))
    row = image_metrics(truth, pred)
    assert row["score"] == pytest.approx(2 / 3)
    assert (row["extra_0.7"], row["fp_0.7"], row["fn_0.7"]) == (1, 1, 0)
    assert row["f1_0.50"] == pytest.approx(4 / 5)


def test_missed_by_size_bins() -> None:
    areas = [250, 251, 625, 626, 900, 901]  # bin edges are inclusive on the right
    truth = np.zeros((30, 40 * len(areas)), np.int32)
    for k, area in enumerate(areas):
        block = np.zeros(30 * 40, np.int32)
        block[:area] = k + 1
        truth[:, 40 * k : 40 * (k + 1)] = block.reshape(30, 40)
    row = image_metrics(truth, np.zeros_like(truth))
    assert [row[f"missed_0.7_{b}"] for b in ("tiny", "small", "normal", "large")] == [1, 2, 2, 1]
    assert [row[f"n_true_{b}"] for b in ("tiny", "small", "normal", "large")] == [1, 2, 2, 1]
    found = np.where(np.isin(truth, [2, 6]), truth, 0)  # small 251 and large 901 predicted exactly
    row = image_metrics(truth, found)
    assert [row[f"missed_0.7_{b}"] for b in ("tiny", "small", "normal", "large")] == [1, 1, 2, 0]


def test_dice() -> None:
    truth = square((16, 16), (1, 2, 12, 2, 12))
    pred = square((16, 16), (4, 2, 11, 2, 12))
    assert image_metrics(truth, pred)["dice"] == pytest.approx(2 * 90 / 190)
    empty = np.zeros((4, 4), int)
    row = image_metrics(empty, empty)
    assert (row["dice"], row["score"], row["f1_0.50"]) == (1.0, 1.0, 1.0)
    assert image_metrics(empty, np.ones((4, 4), int))["dice"] == 0.0


def test_dsb_score_matches_slow_implementation_on_random_pairs() -> None:
    rng = np.random.default_rng(2018)
    scores = []
    for _ in range(250):
        truth, pred = random_pair(rng)
        want = slow_dsb(truth, pred)
        assert dsb_score(truth, pred) == pytest.approx(want, abs=1e-12)
        scores.append(want)
    assert len(set(np.round(scores, 6))) > 20  # the generator covers a range of scores


def test_image_metrics_match_slow_loops_on_random_pairs() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        truth, pred = random_pair(rng)
        row = image_metrics(truth, pred)
        for t, percent in ((0.5, 50), (0.7, 70)):
            assert (row[f"tp_{t}"], row[f"fp_{t}"], row[f"fn_{t}"]) == slow_counts(truth, pred, percent)
        _, _, inter, union = slow_iou_parts(truth, pred)
        overlapping = 10 * inter > union
        assert row["merges"] == int((overlapping.sum(axis=0) > 1).sum())
        assert row["splits"] == int((overlapping.sum(axis=1) > 1).sum())
        fg_t, fg_p = truth > 0, pred > 0
        total = fg_t.sum() + fg_p.sum()
        assert row["dice"] == pytest.approx(1.0 if total == 0 else 2 * (fg_t & fg_p).sum() / total)


def test_hits_at_rejects_thresholds_below_one_to_one_matching() -> None:
    with pytest.raises(ValueError, match=r"\[0.5, 1\)"):
        hits_at(np.zeros((1, 1)), 0.3)


def test_docstrings_state_strict_threshold() -> None:
    for fn in (dsb_score, precision_at, hits_at):
        doc = inspect.getdoc(fn) or ""
        assert "IoU > t" in doc or "IoU > threshold" in doc, fn.__name__
        assert "strict" in doc, fn.__name__


# ---------------------------------------------------------------- dataset evaluation


def dataset(n: int = 12, seed: int = 3) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"img{i:02d}", *random_pair(rng)) for i in range(n)]


def test_f1_curve_extends_the_f1_columns_to_every_dsb_threshold() -> None:
    """F1 per threshold from the AP columns (2·AP / (1 + AP)) equals the F1 counted from TP/FP/FN, at
    0.50–0.90 where per-image F1 columns exist, and goes on to 0.95 (and paired CIs bracket the mean
    difference)."""
    from kit.metrics import f1_curve, paired_bootstrap_ci

    pairs = dataset()
    ev = evaluate(pairs, n_bootstrap=0)
    curve = f1_curve(ev.per_image)
    assert list(curve) == [f"{t:.2f}" for t in THRESHOLDS]
    assert curve["0.50"] > 0 and curve["0.95"] <= curve["0.50"]
    for t in THRESHOLDS[:9]:
        assert curve[f"{t:.2f}"] == pytest.approx(ev.summary["f1_per_threshold"][f"{t:.2f}"])
    counted = []
    for _, t, p in pairs:
        m = iou_matrix(t, p)
        counted.append(1.0 if m.n_true + m.n_pred == 0 else 2 * hits_at(m.iou, 0.95) / (m.n_true + m.n_pred))
    assert curve["0.95"] == pytest.approx(np.mean(counted))
    a, b = ev.per_image["score"].to_numpy(), ev.per_image["ap_0.75"].to_numpy()
    lo, hi = paired_bootstrap_ci(a, b, 500)
    assert lo < np.mean(a - b) < hi


def test_evaluate_per_image_and_summary() -> None:
    pairs = dataset()
    ev = evaluate(pairs, n_bootstrap=200, seed=0)
    assert list(ev.per_image.columns) == list(PER_IMAGE_COLUMNS)
    assert list(ev.per_image["image_id"]) == [p[0] for p in pairs]
    s = ev.summary
    scores = [dsb_score(t, p) for _, t, p in pairs]
    assert s["map"] == pytest.approx(np.mean(scores))
    assert s["n_images"] == len(pairs)
    assert list(s["ap_per_threshold"]) == [f"{t:.2f}" for t in THRESHOLDS]
    assert np.mean(list(s["ap_per_threshold"].values())) == pytest.approx(s["map"])
    assert len(s["f1_per_threshold"]) == 9
    f1 = [[image_metrics(t, p)[f"f1_{th:.2f}"] for _, t, p in pairs] for th in THRESHOLDS[:9]]
    assert s["f1_avg"] == pytest.approx(np.mean(np.mean(f1, axis=1)))
    tp, fp, fn = (int(ev.per_image[f"{k}_0.7"].sum()) for k in ("tp", "fp", "fn"))
    assert s["precision_0.7"] == pytest.approx(tp / (tp + fp))
    assert s["recall_0.7"] == pytest.approx(tp / (tp + fn))
    assert s["f1_0.7"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert sum(s["missed_0.7"].values()) == fn
    assert s["missed_rate_0.7"] == pytest.approx(fn / s["n_true"])
    assert s["extra_0.7"] == fp
    assert s["n_true"] == int(ev.per_image["n_true"].sum())
    required = {"map", "map_ci95", "ap_per_threshold", "f1_avg", "precision_0.5", "recall_0.5", "f1_0.5"}
    required |= {"missed_0.7", "missed_rate_0.7", "extra_0.7", "merges", "splits", "dice", "n_pred"}
    assert required <= set(s)
    assert set(s["missed_0.7"]) == {"tiny", "small", "normal", "large"}


def test_summary_is_json_serialisable() -> None:
    ev = evaluate(dataset(5), n_bootstrap=50)
    assert json.loads(json.dumps(ev.summary)) == ev.summary
    doc = json.loads(ev.to_json())
    assert doc["summary"] == ev.summary
    assert [r["image_id"] for r in doc["per_image"]] == list(ev.per_image["image_id"])


def test_bootstrap_ci_contains_mean_and_is_seeded() -> None:
    ev = evaluate(dataset(20), n_bootstrap=500, seed=5)
    lo, hi = ev.summary["map_ci95"]
    assert lo <= ev.summary["map"] <= hi
    assert lo < hi
    again = evaluate(dataset(20), n_bootstrap=500, seed=5)
    assert again.summary["map_ci95"] == [lo, hi]
    assert bootstrap_ci(ev.per_image["score"], 500, seed=6) != [lo, hi]
    assert bootstrap_ci([0.3, 0.7], 0) is None
    assert bootstrap_ci([0.4], 100) == [0.4, 0.4]


def test_pooled_ratios_follow_empty_policy() -> None:
    empty = np.zeros((6, 6), np.int32)
    s = evaluate([("a", empty, empty)], n_bootstrap=10).summary
    assert (s["map"], s["precision_0.5"], s["recall_0.5"], s["f1_0.5"], s["dice"]) == (
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert s["missed_rate_0.7"] == 0.0
    one = square((6, 6), (1, 1, 4, 1, 4))
    s = evaluate([("a", one, empty)], n_bootstrap=10).summary
    assert (s["map"], s["precision_0.5"], s["recall_0.5"], s["f1_0.5"]) == (0.0, 0.0, 0.0, 0.0)
    assert s["missed_0.7"]["tiny"] == 1


def test_evaluate_errors_name_the_image() -> None:
    good = np.zeros((4, 4), np.int32)
    with pytest.raises(DataError, match=r"'b'.*\(4, 4\) and \(4, 5\)"):
        evaluate([("a", good, good), ("b", good, np.zeros((4, 5), np.int32))])
    with pytest.raises(DataError, match="'a' appears twice"):
        evaluate([("a", good, good), ("a", good, good)])
    with pytest.raises(DataError, match="nothing to evaluate"):
        evaluate([])


def test_evaluate_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate(iter(dataset(3)), n_bootstrap=10, progress=True)
    assert "evaluate" in capsys.readouterr().err
