"""`kit predict` end to end against the network alone, per stage, and at each precision, in one process.

Run: python benchmarks/bench_predict.py [--n 12] [--size 512] [--experiment unet_lite0] [--threads 2]

A throw-away project (temp folder) gets `--n` synthetic grey 16-bit images of `--size`² (a plain input
folder, like a user's), one fold model of `--experiment` with random weights saved as a kit checkpoint,
and then:
- stages, each timed alone on the same images: read (decode the file), normalise (`normalize_image`),
  network (`Predictor.predict_probs`: tiling + the forward pass, no TTA), post-process (the watershed),
  write (the probability map and label image files, as the predict run writes them);
- end to end: `kit predict --model <checkpoint> --input <folder>` as a library call
  (`predict_with_model`) on the n images and on one of them: the difference over n − 1 is the cost per
  image of the whole command (every stage, artifacts written and logged), and what one image leaves is
  the fixed cost of a run (loading the model, the MLflow run).
Printed as seconds per image and as ratios to the network's own time (goal: end to end ≤ 1.5×). The
stages run with the experiment's inference settings (`inference.precision` auto, channels-last).

Then, end to end per image at each precision (`SETTINGS`: fp32 NCHW as kit predicted before
`inference.precision`, and auto) without TTA and with D4 TTA (8 copies): the same weights saved in one
checkpoint per setting. Goals on 2 idle cores for a 512² image: auto ≤ 0.06 s without TTA, ≤ 0.3 s with D4.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import best_time

SETTINGS = {
    "fp32 NCHW": ("inference.precision=fp32", "inference.channels_last=false"),
    "auto": ("inference.precision=auto", "inference.channels_last=true"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--experiment", default="unet_lite0")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    repo = Path(__file__).resolve().parents[1]

    import torch

    from kit.config import load_experiment
    from kit.data.normalize import normalize_image
    from kit.data.synthetic import generate_synthetic
    from kit.fileio import read_image, write_png
    from kit.inference.artifacts import write_labels, write_probs
    from kit.inference.segmenter import Segmenter
    from kit.models import build_model
    from kit.models.checkpoint import save_checkpoint
    from kit.stages.predict import predict_with_model

    torch.set_num_threads(args.threads)
    cfg = load_experiment(repo / "experiments" / f"{args.experiment}.yaml", ["model.pretrained=false"])
    settings = {
        name: load_experiment(
            repo / "experiments" / f"{args.experiment}.yaml", ["model.pretrained=false", *overrides]
        )
        for name, overrides in SETTINGS.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)
        folder = root / "input"
        samples = generate_synthetic(
            args.n, 0, size=(args.size, args.size), styles=("fluorescence",), test_fraction=0
        )
        for k, sample in enumerate(samples):
            image = sample.image if sample.image.ndim == 2 else sample.image[..., 0]
            grey = image.astype(np.uint16) * 200  # 16-bit, like mnfinder's raw files
            write_png(folder / f"img{k:03d}.png", grey)
        files = sorted(folder.glob("*.png"))
        network = build_model(cfg).eval()
        checkpoint = save_checkpoint(root / "best.pt", network, cfg.to_dict())
        checkpoints = {
            name: save_checkpoint(root / f"{name.replace(' ', '_')}.pt", network, c.to_dict())
            for name, c in settings.items()
        }
        model = Segmenter.from_checkpoints(checkpoint, device="cpu")

        images = [read_image(f) for f in files]
        normalised = [normalize_image(im, model.in_channels) for im in images]
        probs = [model.core.predictor.predict_probs(x) for x in normalised]
        from kit.inference.postprocess import instances_from_probs

        channels = model.core.predictor.channels
        labels = [instances_from_probs(p, channels, **model.thresholds.model_dump()) for p in probs]

        def per_image(fn) -> float:
            return best_time(fn, 2)[0] / args.n

        stages = {
            "read": per_image(lambda: [read_image(f) for f in files]),
            "normalise": per_image(lambda: [normalize_image(im, model.in_channels) for im in images]),
            "network": per_image(lambda: [model.core.predictor.predict_probs(x) for x in normalised]),
            "post-process": per_image(
                lambda: [instances_from_probs(p, channels, **model.thresholds.model_dump()) for p in probs]
            ),
            "write": per_image(
                lambda: [
                    (write_probs(root / "w", f"i{k}", p, channels), write_labels(root / "w", f"i{k}", lab))
                    for k, (p, lab) in enumerate(zip(probs, labels, strict=True))
                ]
            ),
        }
        from kit import tracking

        tracking.configure().MlflowClient().search_experiments()  # the project's store exists already
        one = root / "one"
        one.mkdir()
        (one / files[0].name).write_bytes(files[0].read_bytes())

        def predict(folder: Path, source: Path = checkpoint, tta: str = "none") -> float:
            started = time.perf_counter()
            predict_with_model(str(source), input_dir=folder, tta=tta, progress=False, command="bench")
            return time.perf_counter() - started

        def per_image_and_fixed(source: Path = checkpoint, tta: str = "none") -> tuple[float, float]:
            """(seconds per image, fixed seconds per run) of `kit predict --model source`."""
            single, whole = predict(one, source, tta), predict(folder, source, tta)
            per_image = (whole - single) / (args.n - 1)  # the run's fixed cost taken out
            return per_image, single - per_image

        predict(one)  # warm-up: imports, first run in the experiment
        end_to_end, fixed = per_image_and_fixed()
        by_setting = {
            (name, tta): per_image_and_fixed(source, tta)[0]
            for tta in ("none", "d4")
            for name, source in checkpoints.items()
        }
        resolved = model.compute.precision

    net = stages["network"]
    print(
        f"{args.experiment}, {args.n} images of {args.size}², CPU, {args.threads} torch threads, "
        f"torch {torch.__version__}; seconds per image\n"
    )
    print(f"{'stage':<22} {'s/image':>8} {'× network':>10}")
    for name, seconds in stages.items():
        print(f"{name:<22} {seconds:>8.4f} {seconds / net:>10.2f}")
    print(f"{'sum of stages':<22} {sum(stages.values()):>8.4f} {sum(stages.values()) / net:>10.2f}")
    print(f"{'end to end (predict)':<22} {end_to_end:>8.4f} {end_to_end / net:>10.2f}   goal ≤ 1.5×")
    print(f"\nplus {fixed:.2f} s once per predict run (model loading, the MLflow run and its artifacts)")
    print(f"\nend to end, seconds per {args.size}² image (auto runs {resolved} here)\n")
    print(f"{'setting':<12} {'no TTA':>8} {'× fp32':>7} {'D4 TTA':>8} {'× fp32':>7}")
    for name in SETTINGS:
        plain, d4 = by_setting[(name, "none")], by_setting[(name, "d4")]
        base_plain, base_d4 = by_setting[("fp32 NCHW", "none")], by_setting[("fp32 NCHW", "d4")]
        print(f"{name:<12} {plain:>8.4f} {base_plain / plain:>7.2f} {d4:>8.4f} {base_d4 / d4:>7.2f}")
    print("goals for auto (2 idle cores, 512²): ≤ 0.06 s without TTA, ≤ 0.3 s with D4 TTA")


if __name__ == "__main__":
    main()
