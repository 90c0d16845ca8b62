"""kit's trainer against a bare PyTorch loop: the same model, data, loss and optimiser, in one process.

Run: python benchmarks/bench_trainer.py [--steps 40] [--experiment unet_lite0] [--threads 2]

Data: a synthetic dataset (written to a temp folder) of the experiment's crop size and channels, through
the experiment's own augmentation and targets (`kit.training.data.fold_data`, fold 0). The bare loop is a
DataLoader over the same training set with the loss and AdamW, nothing else; kit's `Trainer.fit` runs
one epoch of the same number of steps with everything it does on a CPU (LR schedule, gradient clipping,
time budget checks, progress bar, a last.pt checkpoint at the end; no validation images). Both start from
the same weights. Printed: images per second and the trainer's overhead (goal ≤ 10 %).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--experiment", default="unet_lite0")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    repo = Path(__file__).resolve().parents[1]

    import torch
    from torch.utils.data import DataLoader

    from kit.config import load_experiment
    from kit.data.dataset import NucleiDataset
    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic
    from kit.training.data import fold_data
    from kit.training.distributed import DistContext
    from kit.training.optim import build_optimizer
    from kit.training.tasks import build_loss
    from kit.training.trainer import Trainer, build_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        samples = generate_synthetic(16, 0, size=(384, 384), styles=("fluorescence",), test_fraction=0.0)
        write_dataset(samples, root, name="bench", kind="synthetic", source="bench", k_folds=4, progress=False)
        cfg = load_experiment(
            repo / "experiments" / f"{args.experiment}.yaml",
            [
                f"data.root={root}",
                "model.pretrained=false",
                "training.epochs=1",
                f"data.samples_per_epoch={args.steps * 8}",
                "training.batch_size=8",
                "training.warmup_epochs=0",
            ],
        )
        data = fold_data(cfg, NucleiDataset(root), 0)
        torch.manual_seed(0)
        initial = build_model(cfg).state_dict()

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

        def kit_trainer() -> float:
            model = build_model(cfg)
            model.load_state_dict(initial)
            with tempfile.TemporaryDirectory() as work:
                trainer = Trainer(
                    cfg, model, data.train_set, None, [], work_dir=Path(work), device=torch.device("cpu"),
                    dist=DistContext(), progress=True,
                )
                started = time.perf_counter()
                trainer.fit()
                return time.perf_counter() - started

        bare()  # warm-up: allocator, oneDNN kernels
        times = {"bare loop": [], "kit Trainer": []}
        for _ in range(2):  # interleaved, best of two each
            times["bare loop"].append(bare())
            times["kit Trainer"].append(kit_trainer())
    images = args.steps * 8
    best = {k: min(v) for k, v in times.items()}
    print(f"{args.experiment}: {args.steps} steps × 8 crops of {cfg.data.crop_size}², CPU, {args.threads} threads, best of 2\n")
    for name, seconds in best.items():
        print(f"{name:<12} {seconds:7.2f} s   {images / seconds:6.1f} images/s")
    print(f"\ntrainer overhead: {best['kit Trainer'] / best['bare loop'] - 1:+.1%}   goal ≤ +10 %")


if __name__ == "__main__":
    main()
