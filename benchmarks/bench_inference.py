"""Time the stages of `kit predict` per image on the CPU: network, TTA ×8 (D4), post-processing.

Run: python benchmarks/bench_inference.py [--threads N] [--repeats R]

Models: the U-Net on EfficientNet-B0 of `experiments/unet_effb0.yaml` (grey input, body/border/
background + mask) and the tiny U-Net of `unet_tiny.yaml`, both with random weights (speed does not
depend on them). Network = `Predictor.predict_probs` without TTA (tiling 512 px with 64 px overlap and
Gaussian blending included), TTA ×8 = the same with `tta="d4"`, post-processing = `instances_from_probs`
with the default settings. Random weights give flat maps that post-process in no time, so the
post-processing is timed on realistic maps instead: the targets of a synthetic image of the same size
(hundreds of nuclei, touching ones included), blurred and with noise. Best of `--repeats` after a warm-up.
The check: post-processing below a third of the network time without TTA.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from timing import best_time

SIZES = ((512, 512), (1040, 1388))


def realistic_probs(shape: tuple[int, int], channels: tuple[str, ...], seed: int = 0) -> np.ndarray:
    """Probability maps like a trained model's: targets of a synthetic image, blurred, with noise."""
    from scipy import ndimage as ndi

    from kit.data.synthetic import generate_synthetic
    from kit.targets import make_targets

    labels = generate_synthetic(1, seed, size=shape, styles=("fluorescence",), test_fraction=0.0)[0].labels
    targets = make_targets(labels, include_mask="mask" in channels)
    rng = np.random.default_rng(seed)
    probs = np.stack([ndi.gaussian_filter(t, 1.5) for t in targets]) + rng.normal(0, 0.05, targets.shape)
    return np.clip(probs, 0.0, 1.0).astype(np.float32)


def build(name: str):
    """(model, experiment config) of an experiment YAML, random weights."""
    from kit.config import load_experiment
    from kit.models import build_model

    cfg = load_experiment(name, ["model.pretrained=false"])
    return build_model(cfg).eval(), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="unet_effb0,unet_tiny", help="experiments whose model to time")
    args = parser.parse_args()

    import torch

    from kit.inference.postprocess import instances_from_probs
    from kit.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    print(
        f"CPU, {args.threads} torch thread(s), torch {torch.__version__}; seconds per image, best of {args.repeats}\n"
    )
    header = f"{'model':<11} {'size':>10} {'nuclei':>6} {'network':>8} {'TTA x8':>8} {'post':>7} {'post/net':>8}  < 1/3"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        model, cfg = build(name)
        channels = tuple(model.kit_cfg["channels"])
        inf = cfg.inference
        kwargs = {"tile": inf.tile, "overlap": inf.overlap, "batch_size": inf.batch_size, "device": "cpu"}
        plain = Predictor([model], **kwargs)
        d4 = Predictor([model], tta="d4", **kwargs)
        for shape in SIZES:
            rng = np.random.default_rng(0)
            image = rng.integers(0, 255, (*shape, plain.in_channels), dtype=np.uint8)
            network = best_time(lambda p=plain, x=image: p.predict_probs(x), args.repeats)[0]
            tta = best_time(lambda p=d4, x=image: p.predict_probs(x), max(1, args.repeats - 1))[0]
            probs = realistic_probs(shape, channels)
            labels = instances_from_probs(probs, channels)
            post = best_time(lambda p=probs, c=channels: instances_from_probs(p, c), args.repeats)[0]
            ratio = post / network
            print(
                f"{name:<11} {shape[0]:>4}x{shape[1]:<5} {int(labels.max()):>6} {network:>8.3f} {tta:>8.2f} "
                f"{post:>7.3f} {ratio:>8.3f}  {'yes' if ratio < 1 / 3 else 'NO'}"
            )


if __name__ == "__main__":
    main()
