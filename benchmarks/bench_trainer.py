"""kit's trainer at each precision, against a bare PyTorch loop: the same model, data, loss and optimiser,
in one process; or (`--profile`) where one epoch of the trainer spends its time.

Run: python benchmarks/bench_trainer.py [--steps 40] [--experiment unet_lite0] [--threads 2]
     python benchmarks/bench_trainer.py --profile [--setting auto] [--steps 40]

Data: a synthetic dataset (written to a temp folder) of 384² fluorescence images, cropped at the
experiment's crop size (unet_lite0: mnfinder's recipe, 192², one channel) through the experiment's own
augmentation and targets (`kit.training.data.fold_data`, fold 0).

Timing (the default): the bare loop is a DataLoader over the same training set with the loss and AdamW
in float32 NCHW, nothing else; kit's `Trainer.fit` runs one epoch of the same number of steps with
everything it does on a CPU (LR schedule, gradient clipping, time budget checks, progress bar, a last.pt
checkpoint at the end; no validation images), once per setting: fp32 NCHW (what kit did before
`training.precision`), fp32 channels-last, and `auto` (bf16 + channels-last where the CPU has native
bf16). All start from the same weights, interleaved, best of `--repeats`. Printed: images per second, the
ratio to kit's fp32 NCHW (goal for auto ≥ 1.8×) and the trainer's overhead over the bare loop at the same
settings (goal ≤ 10 %).

Profile (`--profile`): one epoch of `Trainer.fit` at `--setting` (one of `SETTINGS`) under cProfile; printed: the shares of
the training steps' time taken by the data pipeline (crop, augmentation, targets, tensors, collate),
the forward pass with the loss, the backward pass, the optimiser (clipping, step, schedule) and the rest
(progress bar, time checks).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "fp32 NCHW": ("training.precision=fp32", "training.channels_last=false"),
    "fp32 channels-last": ("training.precision=fp32", "training.channels_last=true"),
    "auto": ("training.precision=auto", "training.channels_last=true"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--experiment", default="unet_lite0")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="profile one epoch instead of timing")
    parser.add_argument("--setting", default="auto", choices=list(SETTINGS), help="with --profile")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    repo = Path(__file__).resolve().parents[1]

    import torch

    from kit.config import load_experiment
    from kit.data.dataset import NucleiDataset
    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic
    from kit.models import build_model
    from kit.models.precision import resolve_precision
    from kit.training.data import fold_data

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        samples = generate_synthetic(16, 0, size=(384, 384), styles=("fluorescence",), test_fraction=0.0)
        write_dataset(
            samples, root, name="bench", kind="synthetic", source="bench", k_folds=4, progress=False
        )

        def config(*overrides: str):
            return load_experiment(
                repo / "experiments" / f"{args.experiment}.yaml",
                [
                    f"data.root={root}",
                    "model.pretrained=false",
                    "training.epochs=1",
                    f"data.samples_per_epoch={args.steps * 8}",
                    "training.batch_size=8",
                    "training.warmup_epochs=0",
                    *overrides,
                ],
            )

        cfg = config()
        data = fold_data(cfg, NucleiDataset(root), 0)
        torch.manual_seed(0)
        initial = build_model(cfg).state_dict()
        head = (
            f"{args.experiment}: {args.steps} steps × 8 crops of {cfg.data.crop_size}², CPU "
            f"({torch.backends.cpu.get_cpu_capability()}, auto → {resolve_precision('auto', torch.device('cpu'))}), "
            f"{args.threads} threads, torch {torch.__version__}"
        )
        if args.profile:
            cfg = config(*SETTINGS[args.setting])
            print(f"{head}; profile of one epoch at {args.setting}\n")
            profile_epoch(cfg, data, initial)
            return
        times = time_settings(config, data, initial, args.repeats)
    images = args.steps * 8
    best = {k: min(v) for k, v in times.items()}
    print(f"{head}; best of {args.repeats}\n")
    print(f"{'':<26} {'s':>7} {'images/s':>9} {'× kit fp32 NCHW':>16}")
    for name, seconds in best.items():
        ratio = best["kit fp32 NCHW"] / seconds
        print(f"{name:<26} {seconds:7.2f} {images / seconds:9.1f} {ratio:16.2f}")
    print(f"\nauto against fp32 NCHW: {best['kit fp32 NCHW'] / best['kit auto']:.2f}×   goal ≥ 1.8×")
    overhead = best["kit fp32 NCHW"] / best["bare loop fp32 NCHW"] - 1
    print(f"trainer overhead (fp32 NCHW, same work as the bare loop): {overhead:+.1%}   goal ≤ +10 %")


def _trainer(cfg, data, initial, work: Path):
    import torch

    from kit.models import build_model
    from kit.training.distributed import DistContext
    from kit.training.trainer import Trainer

    model = build_model(cfg)
    model.load_state_dict(initial)
    return Trainer(
        cfg, model, data.train_set, None, [], work_dir=work, device=torch.device("cpu"), dist=DistContext()
    )


def time_settings(config, data, initial, repeats: int) -> dict[str, list[float]]:
    """Seconds of one epoch per setting: the bare loop and kit's trainer at each of `SETTINGS`."""
    from torch.utils.data import DataLoader

    from kit.models import build_model
    from kit.training.optim import build_optimizer
    from kit.training.tasks import build_loss

    cfg = config()

    def bare() -> float:
        model = build_model(cfg)
        model.load_state_dict(initial)
        model.train()
        loss_fn = build_loss(cfg)
        optimizer = build_optimizer(model, cfg.training.optimizer, cfg.training.lr, cfg.training.weight_decay)
        data.train_set.set_epoch(0)
        loader = DataLoader(data.train_set, batch_size=8, shuffle=True, drop_last=True)
        started = time.perf_counter()
        for batch in loader:
            loss = loss_fn(model(batch["image"]).float(), batch["targets"], None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    def kit_trainer(setting: tuple[str, ...]) -> float:
        with tempfile.TemporaryDirectory() as work:
            trainer = _trainer(config(*setting), data, initial, Path(work))
            started = time.perf_counter()
            trainer.fit()
            return time.perf_counter() - started

    bare()  # warm-up: allocator, oneDNN kernels
    for setting in SETTINGS.values():
        kit_trainer(setting)
    times: dict[str, list[float]] = {"bare loop fp32 NCHW": [], **{f"kit {k}": [] for k in SETTINGS}}
    for _ in range(max(1, repeats)):  # interleaved
        times["bare loop fp32 NCHW"].append(bare())
        for name, setting in SETTINGS.items():
            times[f"kit {name}"].append(kit_trainer(setting))
    return times


# Functions whose cumulative time makes up each part of a training step (cProfile names).
PARTS = {
    "data: crop": [("data.py", "augmented")],  # less the augmentation inside it
    "data: augmentation": [("pipeline.py", "__call__")],
    "data: targets": [("targets.py", "make_targets"), ("targets.py", "border_weight_map")],
    "data: to tensors": [("normalize.py", "image_to_tensor")],
    "data: collate": [("collate.py", "default_collate")],
    "forward + loss": [("tasks.py", "loss")],
    "backward": [("_tensor.py", "backward")],
    "optimiser (clip, step, schedule)": [
        ("clip_grad.py", "clip_grad_norm_"),
        ("optimizer.py", "wrapper"),
        ("lr_scheduler.py", "step"),
    ],
}


def profile_epoch(cfg, data, initial) -> None:
    """Print the shares of one epoch's training steps (see the module docstring)."""
    with tempfile.TemporaryDirectory() as work:
        trainer = _trainer(cfg, data, initial, Path(work))
        print(f"runs {trainer.compute}; DataLoader workers: {cfg.data.num_workers}")
        trainer.progress = False
        data.train_set.set_epoch(1)
        trainer._train_epoch(0)  # warm-up: oneDNN kernels, cached normalised images
        profiler = cProfile.Profile()
        profiler.enable()
        trainer._train_epoch(1)
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) → (calls, ncalls, tottime, cumtime, callers)
    cumulative: dict[tuple[str, str], float] = {}
    for (file, _, name), (_, _, _, cum, _) in stats.items():
        key = (Path(file).name, name)
        cumulative[key] = max(cumulative.get(key, 0.0), cum)
    total = cumulative[("trainer.py", "_train_epoch")]
    steps = trainer.steps_per_epoch
    print(f"\n{'part of a step':<34} {'ms/step':>8} {'share':>6}")
    shown = 0.0
    for part, functions in PARTS.items():
        seconds = sum(cumulative.get(f, 0.0) for f in functions)
        if part == "data: crop":
            seconds -= cumulative.get(("pipeline.py", "__call__"), 0.0)
        shown += seconds
        print(f"{part:<34} {seconds / steps * 1e3:8.1f} {seconds / total:6.1%}")
    rest = total - shown
    print(f"{'rest (progress bar, time checks)':<34} {rest / steps * 1e3:8.1f} {rest / total:6.1%}")
    print(f"{'step':<34} {total / steps * 1e3:8.1f} {1:6.0%}")


if __name__ == "__main__":
    main()
