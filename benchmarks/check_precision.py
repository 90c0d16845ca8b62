"""The same model predicted in float32 and in a lower precision: probability and score differences.

Run: python benchmarks/check_precision.py MODEL --data data/mnfinder [--split test] [--precision bf16]
                                          [--tta none] [--threads 2]

MODEL is anything `kit.load_segmenter` takes for a U-Net or Mask R-CNN (an experiment with a finished
train run, a run id, a model URI, a checkpoint file or folder), with its tuned post-processing. Each
image of the split is predicted by the same fold models twice, with `inference.precision` fp32 and
`--precision` (channels-last both times); everything else (tiling, TTA, post-processing) is the model's
own. Printed per image: the largest absolute difference between the probability maps, the DSB score of
each against the truth, and how well the two label images match each other (DSB score of one against
the other); then the split's mAP at each precision and its change (goal |Δ| ≤ 0.005).
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="anything kit.load_segmenter takes (not an ensemble)")
    parser.add_argument("--data", required=True, help="a kit dataset folder with truth for --split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "auto"))
    parser.add_argument("--tta", default=None, help="TTA mode (default: the model's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    import torch

    from kit.data.dataset import NucleiDataset
    from kit.hub import load_segmenter
    from kit.inference.segmenter import Segmenter
    from kit.metrics import dsb_score

    torch.set_num_threads(args.threads)
    loaded = load_segmenter(args.model, tta=args.tta, device="cpu")
    if not isinstance(loaded, Segmenter):
        raise SystemExit(f"{args.model} is an ensemble; give one of its base models (a train run)")

    def at(precision: str) -> Segmenter:
        inference = loaded.config.inference.model_copy(update={"precision": precision, "channels_last": True})
        config = loaded.config.model_copy(update={"inference": inference})
        return Segmenter(loaded.models, config, tta=loaded.tta, device="cpu", thresholds=loaded.thresholds)

    reference, lower = at("fp32"), at(args.precision)
    dataset = NucleiDataset(args.data)
    ids = [i for i in dataset.ids(args.split) if dataset.load(i).labels is not None]
    if not ids:
        raise SystemExit(f"{args.data}: split '{args.split}' has no images with truth")
    print(
        f"{args.model}: {len(loaded.models)} model(s), TTA {loaded.tta}, fp32 against "
        f"{args.precision} (runs {lower.compute.precision}); {len(ids)} {args.split} images\n"
    )
    print(f"{'image':<28} {'max |Δp|':>9} {'DSB fp32':>9} {'DSB ' + args.precision:>9} {'agree':>6}")
    rows = []
    for image_id in ids:
        sample = dataset.load(image_id)
        a = reference.predict(sample.image, details=True)
        b = lower.predict(sample.image, details=True)
        row = (
            float(np.abs(a.probs - b.probs).max()) if a.probs.size else 0.0,
            dsb_score(sample.labels, a.labels),
            dsb_score(sample.labels, b.labels),
            dsb_score(a.labels, b.labels),
        )
        rows.append(row)
        print(f"{image_id[:28]:<28} {row[0]:>9.4f} {row[1]:>9.4f} {row[2]:>9.4f} {row[3]:>6.3f}")
    diff, fp32_map, lower_map, agree = np.array(rows).T
    print(
        f"\nmax |Δ probability| {diff.max():.4f}   mAP fp32 {fp32_map.mean():.4f}   "
        f"{args.precision} {lower_map.mean():.4f}   Δ {lower_map.mean() - fp32_map.mean():+.4f} "
        f"(goal |Δ| ≤ 0.005)   label agreement (mean DSB) {agree.mean():.3f}"
    )


if __name__ == "__main__":
    main()
