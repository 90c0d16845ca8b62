"""How honest the ensemble's estimate without truth is on images unlike those it was calibrated on.

Run in a project where `kit demo` (or `kit ensemble` on base experiments with oof and test predict runs)
ran:  python benchmarks/check_estimate.py [--ensemble ensemble] [--shift-images 8] [--out DIR]

Held-out cases, each judged by its images' real DSB scores, which the estimate never sees:

1. *leave one style out*: the ensemble is fitted again, with the run's settings and the current code,
   on the out-of-fold images of all styles but one, and estimates the held-out style's images from their
   out-of-fold predictions; each style in turn;
2. *test, style seen / unseen in training*: the ensemble fitted on every out-of-fold image (as `kit
   ensemble` fits it) on the test predictions; styles with no training image (style 3 of mnfinder) are
   out of calibration by construction;
3. *shifted copies* of the first `--shift-images` test images: rescaled (×0.5, ×2), blurred, noisy,
   gamma-shifted and inverted, predicted by the run's base models and chosen among by that ensemble.

Printed per case: images, real mean DSB score, mean estimate, |estimate − real| of the means, images
flagged, whether the case meets the goal (within 0.10, or flagged on at least half its images), and per
image how many are off by more than 0.10 and how many of those the flag caught. Per image (with the
signals behind the flag): `estimate_check.csv` in `--out`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

GOAL = 0.10


def _shifts() -> dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """Name → (image, truth) → shifted (image, truth); intensities keep the image's dtype and range."""
    import cv2
    from scipy import ndimage as ndi

    def rescale(factor: float) -> Callable:
        def shift(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            h, w = truth.shape
            size = (round(w * factor), round(h * factor))
            area = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
            return cv2.resize(image, size, interpolation=area), cv2.resize(
                truth.astype(np.float32), size, interpolation=cv2.INTER_NEAREST
            ).astype(np.int32)

        return shift

    def intensity(fn: Callable[[np.ndarray, float], np.ndarray]) -> Callable:
        def shift(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = image.astype(np.float64)
            top = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else float(x.max() or 1.0)
            out = np.clip(fn(x, top), 0, top)
            return out.astype(image.dtype), truth

        return shift

    rng = np.random.default_rng(0)
    return {
        "scaled x0.5": rescale(0.5),
        "scaled x2": rescale(2.0),
        "blurred (sigma 3)": intensity(lambda x, top: ndi.gaussian_filter(x, 3)),
        "noisy (sd 5% of range)": intensity(
            lambda x, top: x + rng.normal(0, 0.05 * (np.percentile(x, 99.8) - x.min()), x.shape)
        ),
        "gamma 3": intensity(lambda x, top: (x / x.max()) ** 3 * x.max()),
        "inverted": intensity(lambda x, top: x.max() - x),
    }


def _signals(
    source_labels: Sequence[np.ndarray],
    source_maps: Iterable[dict[str, np.ndarray]],
    image: np.ndarray,
    labels: np.ndarray,
) -> dict[str, float]:
    """The signals behind the flag, read without truth (`kit.ensemble.domain`): base-model agreement,
    edge sharpness of the kept instances; and one candidate left out, the share of uncertain pixels
    (0.25–0.75) in a U-Net body map relative to its foreground (fold-averaged test maps run higher than
    the single-fold out-of-fold maps the calibration sees, so it would flag sound test images)."""
    from kit.ensemble.domain import edge_sharpness, source_agreement

    uncertain = np.nan
    for maps in source_maps:
        if "body" in maps:
            p = maps["body"]
            uncertain = float(((p > 0.25) & (p < 0.75)).sum() / max((p > 0.5).sum(), 1))
    return {
        "agreement": source_agreement(source_labels),
        "sharpness": edge_sharpness(image, labels),
        "uncertain": uncertain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensemble", default="ensemble", help="the ensemble experiment (default: ensemble)")
    parser.add_argument("--shift-images", type=int, default=8, help="test images to shift (0: none)")
    parser.add_argument("--out", default="outputs/estimate_check")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    import pandas as pd
    import torch

    from kit import tracking
    from kit.config import config_from_dict
    from kit.data.dataset import open_dataset
    from kit.ensemble.candidates import SourceRun, image_candidates
    from kit.ensemble.domain import IN_CALIBRATION
    from kit.ensemble.fit import FittedEnsemble, fit_ensemble
    from kit.fileio import atomic_path
    from kit.hub import load_segmenter
    from kit.metrics import dsb_score
    from kit.tracking.schema import (
        Role,
        find_predict_run,
        find_role_runs,
        run_config,
        run_folder,
    )

    torch.set_num_threads(args.threads)
    tracking.configure()
    runs = find_role_runs(args.ensemble, Role.ENSEMBLE)
    if not runs:
        raise SystemExit(
            f"experiment '{args.ensemble}' has no ensemble run; run kit demo or kit ensemble first"
        )
    run = runs[0]
    cfg = config_from_dict(run_config(run), f"config of ensemble run {run.info.run_id}")
    dataset = open_dataset(cfg.data.root)
    bases = list(cfg.ensemble.bases)

    def sources(kind: str) -> list[SourceRun]:
        return [
            SourceRun.from_folder(b, r.info.run_id, run_folder(r))
            for b in bases
            for r in [find_predict_run(b, kind)]
        ]

    def truth_of(image_id: str) -> np.ndarray:
        return np.asarray(dataset.load(image_id).labels)

    def image_of(image_id: str) -> np.ndarray:
        return dataset.load(image_id).image

    rows: list[dict] = []

    def measure(case: str, image_id: str, fitted: FittedEnsemble, cands, image, truth) -> None:
        chosen = fitted.select(cands, image)
        rows.append(
            {
                "case": case,
                "image_id": image_id,
                "style": int(dataset.row(image_id)["style"]),
                "real": dsb_score(truth, chosen.labels),
                "estimated": chosen.estimated,
                "flag": chosen.flag,
                "mean_predicted_iou": float(chosen.kept["predicted_iou"].mean()) if len(chosen.kept) else 0.0,
                "n_kept": len(chosen.kept),
                **_signals(
                    [cands.source_labels(s) for s in fitted.sources],
                    cands.maps.values(),
                    image,
                    chosen.labels,
                ),
            }
        )
        r = rows[-1]
        print(
            f"  {case:<28} {image_id[:30]:<30} real {r['real']:.3f} est {r['estimated']:.3f} flag {r['flag'][:40]}"
        )

    oof = sources("oof")
    ids = sorted(set.intersection(*(set(s.image_ids) for s in oof)))
    style = {i: int(dataset.row(i)["style"]) for i in ids}
    with tempfile.TemporaryDirectory(prefix="kit-estimate-check-") as tmp:

        def fit_on(calibration: list[str], name: str) -> FittedEnsemble:
            fit = fit_ensemble(
                calibration,
                oof,
                cfg.ensemble,
                truth_of=truth_of,
                image_of=image_of,
                cache=Path(tmp) / name,
                progress=False,
            )
            real = fit.per_image.set_index("image_id")["score"]
            for i in calibration:
                rows.append(
                    {
                        "case": f"calibration {name}",
                        "image_id": i,
                        "style": style[i],
                        "real": real[i],
                        "estimated": fit.selections[i].estimated,
                        "flag": IN_CALIBRATION,
                        **_signals(
                            [s.labels(i) for s in oof],
                            [s.maps(i) for s in oof],
                            image_of(i),
                            fit.selections[i].labels,
                        ),
                    }
                )
            return fit.fitted

        for held in sorted(set(style.values())):
            print(f"style {held} held out: calibrating on the out-of-fold images of the other styles")
            fitted = fit_on([i for i in ids if style[i] != held], f"without style {held}")
            for i in ids:
                if style[i] == held:
                    cands = image_candidates(i, oof, fitted.split_thresholds)
                    measure(f"style {held} held out", i, fitted, cands, image_of(i), truth_of(i))
        # As `kit ensemble` with the current code fits it: on every out-of-fold image.
        fitted = fit_on(ids, "on every out-of-fold image")

    test = sources("test")
    test_ids = sorted(set.intersection(*(set(s.image_ids) for s in test)))
    for i in test_ids:
        seen = "seen" if int(dataset.row(i)["style"]) in set(style.values()) else "unseen"
        cands = image_candidates(i, test, fitted.split_thresholds)
        measure(f"test, style {seen} in training", i, fitted, cands, image_of(i), truth_of(i))

    if args.shift_images:
        model = load_segmenter(args.ensemble, device="cpu")  # its base models; the selection is `fitted`
        for name, shift in _shifts().items():
            for i in test_ids[: args.shift_images]:
                image, truth = shift(image_of(i), truth_of(i))
                measure(name, i, fitted, model.candidates(image), image, truth)

    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "estimate_check.csv") as tmp_csv:
        table.to_csv(tmp_csv, index=False)
    print_summary(table)
    print(f"\nper image: {out / 'estimate_check.csv'}")


def print_summary(table) -> None:
    """One line per held-out case (calibration rows left out). A case meets the goal when the mean
    estimate is within 0.10 of the mean real score, or the flag fired on at least half its images."""
    from kit.ensemble.domain import IN_CALIBRATION

    held = table[~table["case"].str.startswith("calibration")].copy()
    held["error"] = (held["estimated"] - held["real"]).abs()
    held["flagged"] = held["flag"] != IN_CALIBRATION
    print(
        f"\n{'case':<30} {'n':>3} {'real':>6} {'est':>6} {'|Δ|':>6} {'flagged':>7}  goal"
        f"   images: {'>0.10':>5} {'caught':>6}"
    )
    for case, g in held.groupby("case", sort=False):
        error = abs(g["estimated"].mean() - g["real"].mean())
        flagged = int(g["flagged"].sum())
        goal = "met" if error <= GOAL or 2 * flagged >= len(g) else "MISSED"
        bad = g["error"] > GOAL
        print(
            f"{case:<30} {len(g):>3} {g['real'].mean():>6.3f} {g['estimated'].mean():>6.3f} {error:>6.3f} "
            f"{flagged:>7}  {goal:<6}         {int(bad.sum()):>5} {int((bad & g['flagged']).sum()):>6}"
        )


if __name__ == "__main__":
    from kit.errors import KitError

    try:
        main()
    except KitError as exc:  # no ensemble / predict run, missing data: one line, not a traceback
        raise SystemExit(f"check_estimate: {exc}") from None
