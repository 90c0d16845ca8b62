"""Scale: stitching exactness, peak memory against image size, block-wise speed, many images on Dask.

Run from a project folder (the model is anything `kit.load_segmenter` takes: an experiment name of this
project's MLflow store such as the demo's `unet_lite0`, a run id, a model folder, checkpoints):

    python benchmarks/bench_scale.py exact  --model unet_lite0 [--size 2048] [--block 512]
    python benchmarks/bench_scale.py memory --model unet_lite0 [--sizes 2048,4096,8192,16384,32768]
    python benchmarks/bench_scale.py speed  --model unet_lite0 [--size 4096]
    python benchmarks/bench_scale.py folder --model unet_lite0 [--images 500] [--workers 1,2]

Images are mosaics of real nuclei: 512² crops of the images of `--data` (default data/mnfinder, split
`--split` test), each stretched onto 16 bits by its own 1–99.8 percentiles and tiled row by row; without
that dataset, synthetic fluorescence images (`kit.data.synthetic`).

- exact: block-wise (blocks of `--block`, so a 2048² image has 16) against whole-image prediction of one
  mosaic: instances matched one-to-one at IoU > 0.5, their mean IoU, the DSB mAP of one scored against
  the other, nuclei cut apart, glued, lost or extra (everywhere, and among nuclei crossing a seam), seam
  duplicates resolved, nuclei too large for the halo. Beside it a control: whole-image prediction of the
  same image shifted by 16 px, whose disagreement with the unshifted one is the model's tiling noise.
- memory: one child process per size predicts a mosaic stored as a chunked Zarr block-wise (default block,
  in-process) and reports its peak RSS (ru_maxrss); up to `--whole-max` pixels also whole-image
  prediction of the same mosaic in another child, for comparison. Memory is not disturbed by a busy CPU.
- speed: seconds per megapixel of block-wise (default settings) against whole-image prediction of the same
  in-memory mosaic, in one process (ratio; the goal is ≤ 1.2×). Time needs a quiet machine.
- folder: `--images` mosaic crops of 512² as PNG files, predicted by `kit predict --model M --input DIR`
  (`kit.stages.predict.predict_with_model`, one MLflow run each) in this process (today's path, torch on
  all cores) and on a local Dask cluster of each `--workers` count (cores / N threads each; cluster start
  and model loading included): images per second and the ratio to in-process. Peak RSS
  of in-process runs on `--images` / 5 and `--images` images, in child processes, shows whether memory
  grows with the number of images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 512


def tiles(data: str, split: str, count: int) -> list[np.ndarray]:
    """`count` 512² uint16 crops of the dataset's images (cycled), or of synthetic images without it."""
    from kit.data.normalize import model_values

    crops = []
    if Path(data, "manifest.csv").is_file():
        from kit.data.dataset import open_dataset

        dataset = open_dataset(data)
        for image_id in dataset.ids(split):
            image = model_values(dataset.load(image_id).image, 1)[:, :, 0]
            for y in range(0, image.shape[0] - TILE + 1, TILE):
                for x in range(0, image.shape[1] - TILE + 1, TILE):
                    crops.append(_stretch(image[y : y + TILE, x : x + TILE]))
    else:
        from kit.data.synthetic import generate_synthetic

        for sample in generate_synthetic(8, seed=0, size=(TILE, TILE), styles=["fluorescence"]):
            crops.append(_stretch(model_values(sample.image, 1)[:, :, 0]))
    return [crops[k % len(crops)] for k in range(count)]


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [1.0, 99.8])
    return (np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1) * 60000 + 1000).astype(np.uint16)


def mosaic(data: str, split: str, size: int) -> np.ndarray:
    """A size × size mosaic of 512² crops (size a multiple of 512)."""
    n = size // TILE
    parts = tiles(data, split, n * n)
    return np.block([[parts[r * n + c] for c in range(n)] for r in range(n)])


def mosaic_zarr(data: str, split: str, size: int, path: Path) -> Path:
    """The mosaic of `mosaic` written chunk by chunk (1024²) to a Zarr array, never held whole."""
    import zarr

    parts = tiles(data, split, 64)
    array = zarr.create_array(str(path), shape=(size, size), chunks=(1024, 1024), dtype=np.uint16)
    k = 0
    for y in range(0, size, 1024):
        for x in range(0, size, 1024):
            h, w = min(1024, size - y), min(1024, size - x)
            chunk = np.block([[parts[(k + i) % 64], parts[(k + i + 1) % 64]] for i in (0, 2)])
            array[y : y + h, x : x + w] = chunk[:h, :w]
            k += 4
    return path


def load_model(source: str, threads: int):
    import torch

    from kit.hub import load_segmenter

    torch.set_num_threads(threads)
    return load_segmenter(source, device="cpu")


def exact(args: argparse.Namespace) -> None:
    from kit.metrics import label_agreement

    model = load_model(args.model, args.threads)
    image = mosaic(args.data, args.split, args.size)
    started = time.perf_counter()
    whole = model.predict(image)
    whole_s = time.perf_counter() - started
    result = model.predict_blocks(image, block=args.block, halo=args.halo, progress=False)
    blocks = np.asarray(result.labels[:])
    # The control: whole-image prediction of the same image shifted by 16 px (normalised with the
    # unshifted image's levels), another tiling that is just as valid. Its disagreement with `whole` is
    # the tiling noise floor of this model.
    from kit.scale import intensity_ranges, open_image

    shift = 16
    levels = intensity_ranges(open_image(image), [(0, image.shape[0], 0, image.shape[1])])
    padded = np.pad(image, ((shift, 0), (shift, 0)), mode="reflect")
    shifted = model.predict(padded, intensity_ranges=levels)[shift:, shift:]
    print(f"{args.size}² mosaic, model {args.model}, blocks of {args.block} px ({result.blocks} blocks)")
    print(f"whole image {whole_s:.1f} s, block-wise {result.seconds:.1f} s")
    print(f"{'':<22}{'block-wise':>12}{'control':>12}   (control: whole image shifted by {shift} px)")
    agreements = [label_agreement(whole, blocks), label_agreement(whole, shifted)]
    seams = [seam_disagreements(whole, other, args.block) for other in (blocks, shifted)]
    for key in agreements[0]:
        a, b = agreements[0][key], agreements[1][key]
        print(f"  {key:<20}{a:>12.4f}{b:>12.4f}" if isinstance(a, float) else f"  {key:<20}{a:>12}{b:>12}")
    for key in seams[0]:
        print(f"  {key:<20}{seams[0][key]:>12}{seams[1][key]:>12}")
    print(f"  {'seam duplicates':<20}{result.duplicates:>12}   (second views of a nucleus, dropped)")
    print(f"  {'too large for halo':<20}{result.too_large:>12}")


def seam_disagreements(reference: np.ndarray, other: np.ndarray, block: int) -> dict[str, int]:
    """Disagreements whose nucleus crosses a block seam (a multiple of `block` inside its box): reference
    nuclei cut apart or lost, `other` nuclei gluing two or extra."""
    from scipy import ndimage as ndi

    from kit.metrics import iou_matrix

    m = iou_matrix(reference, other)
    touches, hits = m.iou > 0.1, m.iou > 0.5

    def crossing(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
        boxes = ndi.find_objects(labels)
        # a box [start, stop) crosses a seam when the next multiple of `block` after start is before stop
        return np.array(
            [any((s.start // block + 1) * block < s.stop for s in boxes[i - 1]) for i in ids], bool
        )

    ref_at, other_at = crossing(reference, m.truth_ids), crossing(other, m.pred_ids)
    return {
        "seam nuclei": int(ref_at.sum()),
        "seam: cut": int((ref_at & (touches.sum(axis=1) > 1)).sum()),
        "seam: lost": int((ref_at & ~hits.any(axis=1)).sum()),
        "seam: glued": int((other_at & (touches.sum(axis=0) > 1)).sum()),
        "seam: extra": int((other_at & ~hits.any(axis=0)).sum()),
    }


def memory(args: argparse.Namespace) -> None:
    print(f"model {args.model}, {args.threads} thread(s); peak RSS of one child process per run")
    print(f"{'size':>7} {'MP':>7} {'way':>10} {'peak RSS':>9} {'seconds':>8} {'nuclei':>8}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for size in map(int, args.sizes.split(",")):
            path = mosaic_zarr(args.data, args.split, size, Path(tmp) / f"mosaic{size}.zarr")
            ways = ["block-wise"] + (["whole"] if size * size <= args.whole_max else [])
            for way in ways:
                out = _child(["_memory", args.model, str(path), way, str(args.threads), tmp])
                print(
                    f"{size:>7} {size * size / 1e6:>7.0f} {way:>10} {out['rss_gb']:>7.2f} GB "
                    f"{out['seconds']:>8.1f} {out['nuclei']:>8}",
                    flush=True,
                )


def _memory_child(model: str, path: str, way: str, threads: str, tmp: str) -> dict:
    from kit.scale import read_whole

    segmenter = load_model(model, int(threads))
    started = time.perf_counter()
    if way == "whole":
        nuclei = int(segmenter.predict(read_whole(path)).max())
    else:
        result = segmenter.predict_blocks(path, Path(tmp) / "out.ome.zarr", progress=False)
        nuclei = result.n_instances
    return {"seconds": time.perf_counter() - started, "nuclei": nuclei}


def speed(args: argparse.Namespace) -> None:
    model = load_model(args.model, args.threads)
    image = mosaic(args.data, args.split, args.size)
    mp = image.size / 1e6
    model.predict(image[:TILE, :TILE])  # warm-up: first calls, and the imports of zarr, ome-zarr, dask
    model.predict_blocks(image[:TILE, :TILE], progress=False)
    started = time.perf_counter()
    model.predict(image)
    whole = (time.perf_counter() - started) / mp
    result = model.predict_blocks(image, progress=False)
    blocks = result.seconds / mp
    print(f"{args.size}² mosaic ({mp:.0f} MP), model {args.model}, {args.threads} thread(s)")
    print(
        f"whole image {whole:.3f} s/MP; block-wise {blocks:.3f} s/MP ({result.blocks} blocks); ratio {blocks / whole:.2f}"
    )


def folder(args: argparse.Namespace) -> None:
    from kit.fileio import write_png

    with tempfile.TemporaryDirectory(prefix="bench-scale-folder-") as tmp:
        model = str(load_model(args.model, args.threads).save(Path(tmp) / "model"))  # one load per run
        images = Path(tmp) / "images"
        images.mkdir()
        for k, crop in enumerate(tiles(args.data, args.split, args.images)):
            write_png(images / f"img{k:05d}.png", crop)
        runs = [("in-process", None)] + [(f"{n} worker(s)", n) for n in map(int, args.workers.split(","))]
        print(f"{args.images} images of {TILE}², model {args.model}; `kit predict --model M --input DIR`")
        base = None
        for name, workers in runs:
            out = _child(["_folder", model, str(images), str(workers or 0)])
            rate = args.images / out["seconds"]
            base = base or rate
            print(
                f"  {name:<14} {rate:7.2f} images/s  ({rate / base:.2f}× in-process), peak RSS {out['rss_gb']:.2f} GB",
                flush=True,
            )
        few = Path(tmp) / "few"
        few.mkdir()
        for path in sorted(images.iterdir())[: max(1, args.images // 5)]:
            os.link(path, few / path.name)
        for folder_, n in ((few, args.images // 5), (images, args.images)):
            out = _child(["_folder", model, str(folder_), "0"])
            print(f"  in-process, {n:>5} images: peak RSS {out['rss_gb']:.2f} GB")


def _folder_child(model: str, images: str, workers: str) -> dict:
    from kit.stages.predict import ScaleOptions, predict_with_model

    # torch keeps its default threads (all cores) in this process, as each local worker gets cores / N
    scale = ScaleOptions(workers=int(workers) or None)
    with tempfile.TemporaryDirectory(prefix="bench-scale-run-") as project:
        os.chdir(project)  # the predict run goes to a throwaway store (./mlruns)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        started = time.perf_counter()
        predict_with_model(model, input_dir=images, progress=False, scale=scale)
        return {"seconds": time.perf_counter() - started}


def _child(argv: list[str]) -> dict:
    """Run this script's hidden command `argv` in a fresh process; its JSON result plus peak RSS."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {argv[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_child(argv: list[str]) -> None:
    fn = {"_memory": _memory_child, "_folder": _folder_child}[argv[0]]
    out = fn(*argv[1:])
    out["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    print(json.dumps(out))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        _run_child(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["exact", "memory", "speed", "folder"])
    parser.add_argument("--model", required=True, help="anything kit.load_segmenter takes")
    parser.add_argument("--data", default="data/mnfinder", help="dataset whose images make the mosaics")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--size", type=int, default=2048, help="mosaic side (exact, speed)")
    parser.add_argument("--block", type=int, default=512, help="block side (exact)")
    parser.add_argument("--halo", type=int, default=None, help="halo (exact; default: the model's)")
    parser.add_argument("--sizes", default="2048,4096,8192,16384,32768", help="mosaic sides (memory)")
    parser.add_argument(
        "--whole-max", type=float, default=70e6, help="pixels up to which whole-image runs too"
    )
    parser.add_argument("--images", type=int, default=500, help="images in the folder (folder)")
    parser.add_argument("--workers", default="1,2", help="local cluster sizes (folder)")
    args = parser.parse_args()
    {"exact": exact, "memory": memory, "speed": speed, "folder": folder}[args.what](args)


if __name__ == "__main__":
    main()
