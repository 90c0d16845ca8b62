"""Ensemble: target, selection (never overlapping, keeps the better candidate), threshold scores, the
score estimate, the whole model on synthetic out-of-fold data from a good and a deliberately noisy
source, and `kit ensemble` → `kit evaluate` / `kit submit` through MLflow on two tiny U-Nets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import copy_project, inside_project, one_torch_thread
from scipy import ndimage as ndi
from skimage import draw
from skimage.segmentation import find_boundaries
from typer.testing import CliRunner

from kit.ensemble import (
    Candidates,
    IoUModel,
    ScoreEstimator,
    best_threshold,
    best_truth_iou,
    candidate_features,
    feature_names,
    fit_bagged,
    iou_target,
    restrict,
    select_instances,
    threshold_scores,
)
from kit.metrics import dsb_score, iou_matrix


def _disc(shape, centre, radius, label=1, out=None) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int32) if out is None else out
    rr, cc = draw.disk(centre, radius, shape=shape)
    out[rr, cc] = label
    return out


def _candidates(image_id: str, named_layers: list[tuple[str, np.ndarray]]) -> Candidates:
    """Candidates straight from label images: every instance of each layer, split level 0."""
    tables = []
    for layer, (source, labels) in enumerate(named_layers):
        ids = np.unique(labels)
        ids = ids[ids > 0]
        tables.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "label": ids,
                    "source": source,
                    "split_level": 0.0,
                    "parent": ids,
                    "n_siblings": 1,
                    "n_parts": 1,
                    "score": np.nan,
                }
            )
        )
    layers = np.stack([labels.astype(np.int32) for _, labels in named_layers])
    return Candidates(image_id, layers, pd.concat(tables, ignore_index=True))


# --- target -------------------------------------------------------------------------------------------


def test_target_is_the_best_truth_iou_above_the_minimum() -> None:
    shape = (60, 100)
    truth = _disc(shape, (30, 30), 12, label=3)
    exact = _disc(shape, (30, 30), 12, label=1)
    _disc(shape, (30, 80), 6, label=2, out=exact)  # touches no truth
    shifted = _disc(shape, (30, 34), 12, label=5)
    half = np.where(truth & (np.arange(100)[None, :] <= 30), 7, 0).astype(np.int32)
    cands = _candidates("x", [("a", exact), ("b", shifted), ("c", half)])
    best = best_truth_iou(cands, truth)
    assert best[0] == 1.0 and best[1] == 0.0
    assert best[2] == pytest.approx(iou_matrix(truth, shifted).iou.max())
    assert 0.45 < best[3] < 0.6
    np.testing.assert_array_equal(iou_target([0.5, 0.51, 0.3, 1.0], 0.5), [0.0, 0.51, 0.0, 1.0])
    np.testing.assert_array_equal(iou_target([0.5, 0.7], 0.6), [0.0, 0.7])


# --- selection ----------------------------------------------------------------------------------------


def test_selection_keeps_the_better_of_two_overlapping_candidates() -> None:
    shape = (60, 60)
    a = _disc(shape, (30, 28), 12, label=1)
    b = _disc(shape, (30, 32), 12, label=4)
    cands = _candidates("x", [("a", a), ("b", b)])
    for predicted, winner in (([0.6, 0.8], b), ([0.8, 0.6], a)):
        labels, kept = select_instances(cands.layers, cands.table, np.array(predicted), threshold=0.3)
        assert len(kept) == 1 and kept["predicted_iou"].iloc[0] == 0.8
        np.testing.assert_array_equal(labels > 0, winner > 0)
    labels, kept = select_instances(cands.layers, cands.table, np.array([0.2, 0.25]), threshold=0.3)
    assert kept.empty and labels.max() == 0, "everything under the threshold is dropped"


def test_selection_suppresses_a_merge_whose_halves_were_kept() -> None:
    shape = (40, 80)
    halves = _disc(shape, (20, 25), 10, label=1)
    _disc(shape, (20, 45), 10, label=2, out=halves)
    merged = (halves > 0).astype(np.int32)
    cands = _candidates("x", [("split", halves), ("merged", merged)])
    labels, kept = select_instances(cands.layers, cands.table, np.array([0.7, 0.7, 0.6]), threshold=0.3)
    assert kept["candidate"].tolist() == [0, 1]
    np.testing.assert_array_equal(labels, halves)


def test_selection_never_outputs_overlapping_instances() -> None:
    rng = np.random.default_rng(0)
    shape = (96, 96)
    layers = []
    for k in range(4):
        labels = np.zeros(shape, dtype=np.int32)
        for i in range(1, 15):
            _disc(shape, rng.integers(0, 96, 2), rng.integers(3, 12), label=i, out=labels)
        layers.append((f"s{k % 2}", labels))
    cands = _candidates("x", layers)
    predicted = rng.uniform(0, 1, len(cands.table))
    for overlap in (0.0, 0.3, 0.9):
        labels, kept = select_instances(
            cands.layers, cands.table, predicted, threshold=0.1, nms_overlap=overlap
        )
        assert kept["label"].tolist() == list(range(1, len(kept) + 1))
        assert kept["predicted_iou"].is_monotonic_decreasing and (kept["predicted_iou"] >= 0.1).all()
        # Each output instance lies inside its candidate and holds the area reported; together they
        # cover exactly the foreground, so no pixel belongs to two of them.
        counts = np.bincount(labels.ravel(), minlength=len(kept) + 1)
        np.testing.assert_array_equal(counts[1:], kept["area"])
        for row in kept.itertuples():
            cand = cands.table.iloc[row.candidate]
            assert (cands.layers[cand.layer][labels == row.label] == cand.label).all()
            assert row.area >= (1 - overlap) * (cands.layers[cand.layer] == cand.label).sum()


def test_threshold_scores_equal_the_score_of_each_restricted_selection() -> None:
    rng = np.random.default_rng(1)
    shape = (80, 80)
    truth = np.zeros(shape, dtype=np.int32)
    for i in range(1, 10):
        _disc(shape, rng.integers(5, 75, 2), rng.integers(4, 9), label=i, out=truth)
    noisy = np.roll(truth, 2, axis=1)
    cands = _candidates("x", [("a", truth), ("b", noisy)])
    predicted = rng.uniform(0, 1, len(cands.table))
    grid = [0.1, 0.3, 0.5, 0.7]
    labels, kept = select_instances(cands.layers, cands.table, predicted, threshold=0.1)
    scores = threshold_scores(truth, labels, kept, grid)
    for t, score in zip(grid, scores, strict=True):
        direct, _ = select_instances(cands.layers, cands.table, predicted, threshold=t)
        restricted, _ = restrict(labels, kept, t)
        np.testing.assert_array_equal(restricted, direct)
        assert score == pytest.approx(dsb_score(truth, direct))
    assert best_threshold(grid, scores) == grid[int(np.argmax(scores))]
    assert best_threshold([0.1, 0.2, 0.4, 0.5], [0.5, 0.5, 0.5, 0.2]) == 0.2, "ties: nearest 0.3"


# --- estimate -----------------------------------------------------------------------------------------


def test_estimate_with_an_exact_calibration() -> None:
    # Calibration where a prediction p means exactly IoU p: P(IoU > t | p) = [p > t].
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1, 4000)
    estimator = ScoreEstimator.fit([p], [p], [4000])
    assert estimator.miss_rate == 0
    # Two instances predicted 0.9 (as good as hits up to t = 0.85) and nothing missed: 8 of 10 thresholds.
    assert estimator.image_score(np.array([0.91, 0.91])) == pytest.approx(0.8, abs=0.02)
    assert estimator.image_score(np.array([])) == 0.0
    # With half the nuclei never found, the expected truth count doubles.
    missing = ScoreEstimator.fit([p], [p], [8000])
    assert missing.miss_rate == pytest.approx(0.5)
    assert missing.image_score(np.array([0.99, 0.99])) == pytest.approx(0.5, abs=0.02)


# --- the whole ensemble on synthetic out-of-fold data -------------------------------------------------


def _good_source(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The truth with 15 % of nuclei missed, the rest eroded, kept or dilated by a pixel."""
    action = rng.choice(3, size=int(truth.max()) + 1, p=[0.3, 0.4, 0.3])
    action[0] = 1
    out = truth.copy()
    drop = rng.random(action.size) < 0.15
    drop[0] = False
    out[drop[out]] = 0
    out[find_boundaries(out, mode="inner") & (action[out] == 0)] = 0
    grown = ndi.grey_dilation(out, size=3)
    fill = (out == 0) & (truth == 0) & (action[grown] == 2)
    out[fill] = grown[fill]
    return out


def _noisy_source(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The truth with touching nuclei merged, others cut in half or shifted by 2-4 px, and extra blobs."""
    out = truth.copy()
    grown = ndi.grey_dilation(truth, size=3)
    touching = (truth > 0) & (grown > 0) & (grown != truth)
    merged: set[int] = set()
    for a, b in np.unique(np.stack([truth[touching], grown[touching]]), axis=1).T:
        if a not in merged and b not in merged and rng.random() < 0.6:
            out[out == b] = a
            merged |= {int(a), int(b)}
    next_id = int(truth.max()) + 1
    rows = np.arange(out.shape[0])[:, None]
    for i in range(1, int(truth.max()) + 1):
        mask = out == i
        if i in merged or not mask.any():
            continue
        r = rng.random()
        if r < 0.25:
            out[mask & (rows > np.nonzero(mask)[0].mean())] = next_id
            next_id += 1
        elif r < 0.5:
            out[mask] = 0
            shifted = np.roll(mask, tuple(rng.integers(2, 5, 2)), axis=(0, 1))
            out[shifted & (out == 0)] = i
    for _ in range(int(rng.integers(2, 6))):
        blob = _disc(out.shape, rng.integers(0, out.shape[0], 2), int(rng.integers(3, 7))) > 0
        out[blob & (out == 0)] = next_id
        next_id += 1
    return out


def test_ensemble_beats_the_noisy_source_out_of_fold() -> None:
    from kit.data.synthetic import generate_synthetic

    rng = np.random.default_rng(0)
    truths = [np.asarray(s.labels) for s in generate_synthetic(12, seed=1, size=(128, 128))]
    sources = ["good", "noisy"]
    cands = [
        _candidates(str(i), [("good", _good_source(t, rng)), ("noisy", _noisy_source(t, rng))])
        for i, t in enumerate(truths)
    ]
    radii = [25, 50]
    frames = [candidate_features(c, sources, radii) for c in cands]
    target = np.concatenate([iou_target(best_truth_iou(c, t)) for c, t in zip(cands, truths, strict=True)])
    groups = np.concatenate([[c.image_id] * len(c) for c in cands])
    model, oof = fit_bagged(
        pd.concat(frames, ignore_index=True),
        target,
        groups,
        feature_names(sources, radii),
        n_bags=2,
        n_folds=3,
        num_boost_round=60,
        min_data_in_leaf=5,
    )
    assert len(model.boosters) == 6 and np.corrcoef(oof, target)[0, 1] > 0.7

    grid = [0.1, 0.2, 0.3, 0.4, 0.5]
    curve, start = np.zeros(len(grid)), 0
    for c, truth in zip(cands, truths, strict=True):
        labels, kept = select_instances(c.layers, c.table, oof[start : start + len(c)], threshold=min(grid))
        start += len(c)
        curve += threshold_scores(truth, labels, kept, grid) / len(cands)
    noisy = np.mean([dsb_score(t, c.layers[1]) for c, t in zip(cands, truths, strict=True)])
    good = np.mean([dsb_score(t, c.layers[0]) for c, t in zip(cands, truths, strict=True)])
    assert curve.max() > noisy + 0.3
    assert curve.max() > good, "picking the noisy source's correct nuclei that the good one missed"


def test_model_save_and_load_give_the_same_predictions(tmp_path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["f0", "f1", "f2"])
    target = (frame["f0"] > 0).to_numpy(dtype=float)
    groups = np.repeat(np.arange(10).astype(str), 20)
    model, _ = fit_bagged(frame, target, groups, ["f0", "f1", "f2"], n_bags=1, n_folds=2, num_boost_round=10)
    model.metadata = {"threshold": 0.3}
    model.save(tmp_path / "model")
    back = IoUModel.load(tmp_path / "model")
    np.testing.assert_allclose(back.predict(frame), model.predict(frame))
    assert back.metadata == {"threshold": 0.3} and back.features == ["f0", "f1", "f2"]


# --- through MLflow: two tiny U-Nets → kit ensemble → kit evaluate / kit submit -----------------------

TRAIN_OVERRIDES = ["training.epochs=1", "training.max_steps_per_epoch=2"]
PREDICT_OVERRIDES = ["postprocess.seed_threshold=0.2", "postprocess.min_size=4"]
ENSEMBLE_OVERRIDES = [
    "ensemble.bases=[unet_tiny,tiny_b]",
    "ensemble.split_thresholds=[0.3,0.4]",
    "ensemble.n_bags=2",
    "ensemble.lightgbm.num_boost_round=20",
    "ensemble.lightgbm.min_data_in_leaf=3",
    "data.root=data/synthetic",
]


@pytest.fixture(scope="module")
def ensembled(trained_project, tmp_path_factory):
    """Two tiny U-Nets, the session's unet_tiny (seed 0) and tiny_b (seed 1, trained here), predicted out
    of fold and on the test split, then `kit ensemble`, in a copy of the session's project:
    (project folder, CLI output)."""
    from kit.cli import app
    from kit.config import load_experiment
    from kit.stages.predict import predict_experiment
    from kit.stages.train import train_experiment

    root = copy_project(trained_project.root, tmp_path_factory.mktemp("ensemble") / "project")
    with inside_project(root), one_torch_thread():
        train_experiment(
            load_experiment("unet_tiny", [*TRAIN_OVERRIDES, "name=tiny_b", "training.seed=1"]), progress=False
        )
        for name in ("unet_tiny", "tiny_b"):
            cfg = load_experiment("unet_tiny", [*PREDICT_OVERRIDES, f"name={name}"])
            predict_experiment(cfg, oof=True, progress=False)
            predict_experiment(cfg, split="test", progress=False)
        args = ["ensemble", "--exp", "ensemble", *(x for o in ENSEMBLE_OVERRIDES for x in ("--set", o))]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root, result.output


@pytest.mark.slow
def test_kit_ensemble_runs_evaluate_and_submit(ensembled, monkeypatch) -> None:
    from helpers import predicted_labels

    from kit import tracking
    from kit.cli import app
    from kit.config import load_experiment
    from kit.inference.artifacts import read_index
    from kit.stages.evaluate import evaluate_experiment
    from kit.tracking.schema import find_predict_run, run_folder

    root, output = ensembled
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    assert "unet_tiny" in output and "tiny_b" in output and "threshold" in output

    # The ensemble run: linked to both bases' OOF and test predict runs, with model, plots and metrics.
    (run,) = tracking.find_runs("ensemble", tags={"kit.role": "ensemble"})
    tags = run.data.tags
    oof_a, oof_b = (find_predict_run(b, "oof") for b in ("unet_tiny", "tiny_b"))
    assert tags["kit.base_oof_runs"] == f"unet_tiny:{oof_a.info.run_id},tiny_b:{oof_b.info.run_id}"
    assert find_predict_run("tiny_b", "test").info.run_id in tags["kit.base_apply_runs"]
    metrics = run.data.metrics
    assert {"oof_map", "oof_estimated_map", "oof_map_unet_tiny", "oof_map_tiny_b", "threshold"} <= set(
        metrics
    )
    files = {p.relative_to(root).name for p in (run_folder(run)).rglob("*") if p.is_file()}
    assert {
        "model.json",
        "booster_0.txt",
        "feature_importance.png",
        "oof_scatter.png",
        "oof_candidates.csv.gz",
    } <= files

    # Its predict runs, in the predict-run layout, consumed by evaluate and submit unchanged.
    test_run = find_predict_run("ensemble", "test")
    assert test_run.data.tags["kit.ensemble_run_id"] == run.info.run_id
    index = read_index(run_folder(test_run))
    assert "estimated_score" in index.columns and index["estimated_score"].between(0, 1).all()
    cfg = load_experiment("ensemble", ENSEMBLE_OVERRIDES)
    oof_eval = evaluate_experiment(cfg, kind="oof", n_bootstrap=0, track=False)
    assert oof_eval.evaluation.summary["map"] == pytest.approx(metrics["oof_map"])
    set_args = [x for o in ENSEMBLE_OVERRIDES for x in ("--set", o)]
    result = CliRunner().invoke(app, ["evaluate", "--exp", "ensemble", "--kind", "test", *set_args])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["submit", "--exp", "ensemble", "--name", "ens", *set_args])
    assert result.exit_code == 0, result.output
    _, labels = predicted_labels(test_run)
    assert (root / "submissions" / "ens.csv").is_file() and len(labels) == 4


@pytest.mark.slow
def test_kit_ensemble_without_bases_or_oof_runs_is_one_line_error(ensembled, monkeypatch) -> None:
    from kit.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(ensembled[0])
    result = CliRunner().invoke(app, ["ensemble", "--exp", "unet_tiny"])
    assert result.exit_code == 1 and "ensemble.bases" in result.output
    result = CliRunner().invoke(
        app,
        [
            "ensemble",
            "--exp",
            "ensemble",
            "--set",
            "ensemble.bases=[unet_tiny,nope]",
            "--set",
            "data.root=data/synthetic",
        ],
    )
    assert result.exit_code == 1 and "'nope' has no finished predict run of kind oof" in result.output
