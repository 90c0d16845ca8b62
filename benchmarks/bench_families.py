"""Seconds per image of the seeds' families against the U-Net, measured in one process on one CPU.

Run: python benchmarks/bench_families.py [--size 1024] [--threads N] [--repeats R] [--patches P]

Every model predicts the same synthetic fluorescence image of `--size`² (hundreds of nuclei) through
`kit.Segmenter` (normalisation, tiling as its experiment YAML says, no TTA, the watershed), as
`kit predict` does; the table gives seconds per image and the ratio to the U-Net (`unet_lite0`, random
weights: speed does not depend on them). Models: `classical` (default state), `pixel_forest` (fitted here
on two synthetic images with its YAML's settings), `deepcell` (the fully-convolutional network, random
weights) and its network alone.

DeepCell's patch form (seed 000 measured it ~1000× slower than a U-Net): classifying every pixel from its
own 31×31 patch. Two estimates: the original strided patch network (valid convolutions, two 2×2 stride-2
poolings, a dense layer) costs, per patch, the multiply-accumulates counted from its layer shapes, which
turn into seconds at the rate the dilated network runs; and the dilated network itself run on
`--patches` random 31×31 patches (its centre output is the pixel's class), extrapolated to H·W patches.
"""

from __future__ import annotations

import argparse
import os

from timing import best_time


def synthetic_image(size: int, seed: int = 0):
    """(uint16 image, labels) of one synthetic fluorescence field of size²."""
    from kit.data.synthetic import generate_synthetic

    sample = generate_synthetic(1, seed, size=(size, size), styles=("fluorescence",), test_fraction=0.0)[0]
    return sample.image, sample.labels


def segmenter(name: str, overrides: list[str], fit_on=None):
    """`kit.Segmenter` of experiment `name` (random weights, or fitted on `fit_on` for a fitted family)."""
    from kit.config import load_experiment
    from kit.data.normalize import normalize_image
    from kit.inference.segmenter import Segmenter
    from kit.models import build_model

    cfg = load_experiment(name, overrides)
    model = build_model(cfg)
    if fit_on is not None:
        images = [(normalize_image(image, cfg.data.channels), labels) for image, labels in fit_on]
        model.fit(images, evaluate=lambda m: {}, seed=0)
    return Segmenter([model.eval()], cfg, device="cpu")


def patch_form_seconds(net, size: int, n_patches: int, repeats: int) -> float:
    """Seconds to classify every pixel of a size² image from its own 31×31 patch, extrapolated from
    `n_patches` random patches run through `net` (one batch)."""
    import torch

    patches = torch.rand(n_patches, 1, 31, 31)
    with torch.no_grad():
        seconds, _ = best_time(lambda: net(patches)[:, :, 15, 15], repeats)
    return seconds / n_patches * size * size


def macs_per_pixel(widths: list[int], dense: int, n_classes: int = 3) -> tuple[float, float]:
    """(dilated fully-convolutional form, strided patch form) multiply-accumulates per output pixel.

    Dilated: every layer runs at every pixel. Patch form: the 31×31 patch shrinks through the convolutions
    (valid) and two 2×2 stride-2 poolings, and each pixel pays for its whole patch."""
    from kit.models.deepcell import LAYERS

    convs = [(k, w) for (kind, k, _), w in zip([x for x in LAYERS if x[0] == "conv"], widths, strict=True)]
    dilated, channels = 0.0, 1
    for k, w in convs:
        dilated += k * k * channels * w
        channels = w
    dilated += channels * dense + dense * n_classes
    patch, side, channels, conv = 0.0, 31, 1, iter(widths)
    for kind, k, _ in LAYERS:
        if kind == "pool":
            side //= 2
            continue
        w = next(conv)
        side = side - k + 1
        patch += side * side * k * k * channels * w
        channels = w
    patch += side * side * channels * dense + dense * n_classes  # the dense layer over what is left
    return dilated, patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (mnfinder: 512–1024)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--patches", type=int, default=4096, help="patches timed for DeepCell's patch form")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    image, _ = synthetic_image(args.size)
    fit_on = [synthetic_image(256, seed) for seed in (1, 2)]
    models = {
        "unet_lite0": segmenter("unet_lite0", ["model.pretrained=false"]),
        "classical": segmenter("classical", []),
        "pixel_forest": segmenter("pixel_forest", [], fit_on=fit_on),
        "deepcell": segmenter("deepcell", []),
    }
    rows = []
    for name, model in models.items():
        seconds, labels = best_time(lambda model=model: model.predict(image), args.repeats)
        rows.append((name, seconds, int(labels.max())))
    deepcell_net = models["deepcell"].models[0]
    with torch.no_grad():
        x = torch.rand(1, 1, args.size, args.size)
        net_seconds, _ = best_time(lambda: deepcell_net(x), args.repeats)
    rows.append(("deepcell network only", net_seconds, -1))
    params = models["deepcell"].config.model.params
    dilated, patch = macs_per_pixel(list(params["widths"]), int(params["dense"]))
    rows.append(("deepcell patch form, strided net (MACs)", net_seconds * patch / dilated, -1))
    measured = patch_form_seconds(deepcell_net, args.size, args.patches, 1)
    rows.append(("deepcell patch form, this net per patch", measured, -1))
    reference = rows[0][1]
    print(f"{args.size}² image, {args.threads} torch threads, best of {args.repeats}")
    print(f"{'model':38s} {'s/image':>9s} {'× U-Net':>9s} {'instances':>10s}")
    for name, seconds, n in rows:
        print(f"{name:38s} {seconds:9.3f} {seconds / reference:9.1f} {n if n >= 0 else '':>10}")
    print(
        f"DeepCell multiply-accumulates per pixel: dilated form {dilated / 1e3:.0f}k, strided patch network "
        f"{patch / 1e3:.0f}k per patch ({patch / dilated:.1f}×); the patch-form rows are the dilated network's "
        "measured seconds × that ratio, and the same dilated network run on every pixel's own 31×31 patch "
        f"(measured on {args.patches} patches, extrapolated to {args.size}² patches)"
    )


if __name__ == "__main__":
    main()
