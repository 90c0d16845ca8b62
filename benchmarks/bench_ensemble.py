"""Time the ensemble per image on a 1024² mnfinder-like image: candidates, features, IoU model, selection.

Run: python benchmarks/bench_ensemble.py [--repeats R] [--nuclei N]

The image: a synthetic fluorescence image of 1024×1024 with about `--nuclei` nuclei (mnfinder's test
images hold 20-100). Two U-Net-like sources: probability maps made from its targets (blurred, with
noise, a different seed each), turned into instances by the default watershed, then re-split at seed
thresholds 0.6 / 0.7 / 0.8 (`image_candidates`). Two rows:
- "pipeline": those real sources (re-splits keep only new parts, so far fewer than 4 × the instances);
- "worst case": 8 full layers (2 sources × 4 levels, every instance of every layer a candidate), the
  size the ensemble brief budgets for.
Features = `candidate_features`; model = 30 boosters of 200 rounds (the default 10 bags × 3 folds);
selection = `select_instances`. Best of `--repeats` after a warm-up.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from timing import best_time

SHAPE = (1024, 1024)
SOURCES = ("unet_a", "unet_b")


def source_maps(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """body / border / mask maps like a trained model's: targets blurred, with noise."""
    from scipy import ndimage as ndi

    from kit.targets import make_targets

    targets = make_targets(labels, include_mask=True)
    rng = np.random.default_rng(seed)
    probs = np.stack([ndi.gaussian_filter(t, 1.5) for t in targets]) + rng.normal(0, 0.08, targets.shape)
    probs = np.clip(probs, 0.0, 1.0).astype(np.float32)
    return dict(zip(("body", "border", "background", "mask"), probs, strict=True))


class MemorySource:
    """A stand-in for `SourceRun` holding one image's labels and maps in memory."""

    def __init__(self, name: str, labels: np.ndarray, maps: dict[str, np.ndarray]) -> None:
        self.name, self.run_id, self._labels, self._maps = name, name, labels, maps
        self.postprocess = {"seed_threshold": 0.5, "mask_threshold": 0.5, "min_size": 10}
        self.scores = None

    def labels(self, image_id: str) -> np.ndarray:
        return self._labels

    def maps(self, image_id: str) -> dict[str, np.ndarray]:
        return self._maps


def worst_case(truth: np.ndarray, maps: dict[str, dict[str, np.ndarray]]):
    """8 full layers: each source's truth copy shifted by a few pixels at 4 levels."""
    from kit.ensemble import Candidates

    layers, tables = [], []
    for s, source in enumerate(SOURCES):
        for level, threshold in enumerate((0.0, 0.6, 0.7, 0.8)):
            layer = np.roll(truth, (s + level, level), axis=(0, 1))
            ids = np.unique(layer)[1:]
            tables.append(
                pd.DataFrame(
                    {
                        "layer": len(layers),
                        "label": ids,
                        "source": source,
                        "split_level": threshold,
                        "parent": ids,
                        "n_siblings": 1 if level == 0 else 2,
                        "n_parts": 2,
                        "score": np.nan,
                    }
                )
            )
            layers.append(layer)
    return Candidates("worst", np.stack(layers), pd.concat(tables, ignore_index=True), maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nuclei", type=int, default=100)
    args = parser.parse_args()

    from kit.data.synthetic import generate_synthetic
    from kit.ensemble import (
        best_truth_iou,
        candidate_features,
        feature_names,
        fit_bagged,
        image_candidates,
        select_instances,
    )
    from kit.inference.postprocess import instances_from_probs

    # Nucleus areas chosen so that ~args.nuclei of them fill a 1024² fluorescence image like mnfinder's.
    mean_area = 0.12 * SHAPE[0] * SHAPE[1] / args.nuclei
    truth = generate_synthetic(
        1,
        0,
        size=SHAPE,
        styles=("fluorescence",),
        test_fraction=0.0,
        nucleus_area=(0.5 * mean_area, 1.5 * mean_area),
    )[0].labels
    truth = np.asarray(truth, dtype=np.int32)
    maps = {name: source_maps(truth, seed) for seed, name in enumerate(SOURCES)}
    sources = []
    for name in SOURCES:
        m = maps[name]
        probs = np.stack([m["body"], m["border"], m["mask"]])
        labels = instances_from_probs(probs, ("body", "border", "mask"))
        sources.append(MemorySource(name, labels, {c: m[c] for c in ("body", "border", "mask")}))

    radii = [50, 100, 150, 200]
    features = feature_names(SOURCES, radii)
    pipeline = image_candidates("img", sources, [0.6, 0.7, 0.8])
    worst = worst_case(truth, {s.name: s.maps("img") for s in sources})

    # A model of the default size: 10 bags × 3 folds, 200 rounds, trained on the worst-case rows.
    frame = candidate_features(worst, SOURCES, radii)
    target = best_truth_iou(worst, truth)
    groups = np.arange(len(frame)) % 6
    model, _ = fit_bagged(
        frame, target, groups.astype(str), features, n_bags=10, n_folds=3, num_boost_round=200
    )

    print(f"1024×1024, {int(truth.max())} truth nuclei; ms per image, best of {args.repeats}\n")
    print(
        f"{'case':<11} {'candidates':>10} {'cands':>7} {'features':>9} {'target':>7} {'model':>7} {'select':>7}"
    )
    for name, cands in (("pipeline", pipeline), ("worst case", worst)):
        build = (
            best_time(lambda: image_candidates("img", sources, [0.6, 0.7, 0.8]), args.repeats)[0]
            if name == "pipeline"
            else float("nan")
        )
        feats = best_time(lambda c=cands: candidate_features(c, SOURCES, radii), args.repeats)[0]
        tgt = best_time(lambda c=cands: best_truth_iou(c, truth), args.repeats)[0]
        frame = candidate_features(cands, SOURCES, radii)
        pred = best_time(lambda f=frame: model.predict(f), args.repeats)[0]
        predicted = model.predict(frame)
        sel = best_time(
            lambda c=cands, p=predicted: select_instances(c.layers, c.table, p, threshold=0.3), args.repeats
        )[0]
        print(
            f"{name:<11} {len(cands):>10} {1000 * build:>7.0f} {1000 * feats:>9.0f} {1000 * tgt:>7.0f} "
            f"{1000 * pred:>7.0f} {1000 * sel:>7.0f}"
        )


if __name__ == "__main__":
    main()
