"""`kit tune` measured: the machinery's overhead per trial, several workers on one study, and a search
against the hand-made recipe.

    python benchmarks/bench_tune.py overhead [--experiment unet_lite0] [--data data/mnfinder] [--epochs 3]
    python benchmarks/bench_tune.py workers [--workers 2] [--trials 6] [--postgres | --storage URL]
    python benchmarks/bench_tune.py compare [--experiment unet_lite0] [--data data/mnfinder] [--minutes 16]
                                            [--trial-minutes 4] [--synthetic] [--set K=V]

`overhead`: in one process and one temporary project, the same config (the experiment with its own values,
`--epochs` epochs, one fold, no MLflow Model) trained and scored the plain way (`train_experiment` then
`predict_experiment(oof=True)`) and as the single trial of a study whose space holds exactly those values
(`tune_experiment`), alternately `--repeats` times after an untimed round. Printed: the best wall time of each, the trial's
overhead against plain train + OOF predict (the machinery: study, trial run, pruning reports, storage;
goal ≤ 5 %) and against a plain `kit train` alone (the objective's OOF prediction included), and the
whole `kit tune` call's (which adds the study's creation and plots).

`workers`: N `kit tune` processes started together on one study of the tiny U-Net (synthetic data, a
temporary project; SQLite by default, `--postgres` starts a throwaway PostgreSQL server as the tests do,
`--storage` uses yours). Printed: trials by state, duplicates (a trial number with two MLflow runs, or two
trials with the same values), lost runs (an Optuna trial without its MLflow run or the reverse, a run left
RUNNING) and the wall time.

`compare`: on one fold of `--data`, the hand-made recipe trained for `--trial-minutes` (as `kit demo`
trains each fold: epochs unbounded, early stopping off, validation every 20 epochs) and scored out of fold,
then a study of `--minutes` total with trials of the same budget (`experiments/spaces/<experiment>.yaml`).
Defaults: the U-Net's share of `kit demo --minutes 45` (about 16 minutes, 4 per fold). Printed: the
recipe's OOF mAP after tuned post-processing beside the best trial's, and the winner's values.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_FOLD = ["training.epochs=100000", "training.early_stopping_patience=null", "training.val_every=20"]


def _project(folder: Path, data: str | None) -> str:
    """A project folder with experiments/ and data (the given dataset linked, else a tiny synthetic one)
    as the working directory; the data root to use."""
    given = Path(data).resolve() if data is not None else None  # relative to where the benchmark started
    shutil.copytree(REPO / "experiments", folder / "experiments")
    os.chdir(folder)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if given is not None:
        if not (given / "manifest.csv").is_file():
            raise SystemExit(f"{given}: not a kit dataset (run `kit data import mnfinder` first)")
        return str(given)
    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic

    samples = generate_synthetic(n=12, seed=0, size=(96, 96))
    write_dataset(
        samples,
        folder / "data" / "synthetic",
        name="synthetic",
        kind="synthetic",
        source="bench",
        k_folds=2,
        progress=False,
    )
    return str(folder / "data" / "synthetic")


def _fixed_space(cfg, keys: list[str], path: Path) -> Path:
    """A space file holding exactly the config's own value of each key (one choice each)."""
    import yaml

    values = {}
    for key in keys:
        node = cfg.to_dict()
        for part in key.split("."):
            node = node[part]
        values[key] = {"choice": [node]}
    path.write_text(yaml.safe_dump({"params": values, "pruner": "none"}))
    return path


def overhead(args: argparse.Namespace) -> None:
    from kit.config import load_experiment
    from kit.stages.predict import predict_experiment
    from kit.stages.train import train_experiment
    from kit.workflows.tune import tune_experiment

    with tempfile.TemporaryDirectory(prefix="kit-bench-tune-") as tmp:
        root = _project(Path(tmp), args.data)
        sets = [
            f"data.root={root}",
            f"training.epochs={args.epochs}",
            "training.early_stopping_patience=null",
            "tracking.log_model=false",
            *args.set,
        ]
        if args.data is None:
            sets.append("model.pretrained=false")
        cfg = load_experiment(args.experiment, sets)
        space = _fixed_space(cfg, ["training.lr", "training.batch_size"], Path(tmp) / "space.yaml")
        folds = cfg.training.folds[:1]
        plain_train, plain_total, trial, call = [], [], [], []
        for repeat in range(args.repeats + 1):  # round 0 is a warm-up: a new store, first imports
            plain_cfg = load_experiment(args.experiment, [*sets, f"tracking.experiment=plain-{repeat}"])
            started = time.perf_counter()
            train = train_experiment(plain_cfg, folds=folds, progress=False)
            trained = time.perf_counter()
            predict_experiment(plain_cfg, oof=True, train_run_id=train.parent_run_id, progress=False)
            plain_train.append(trained - started)
            plain_total.append(time.perf_counter() - started)
            started = time.perf_counter()
            tune_experiment(
                exp=args.experiment,
                space=space,
                overrides=sets,
                study=f"bench-{repeat}",
                n_trials=1,
                progress=False,
            )
            call.append(time.perf_counter() - started)
            import optuna

            study = optuna.load_study(
                study_name=f"bench-{repeat}", storage=f"sqlite:///{tmp}/mlruns/optuna.db"
            )
            trial.append(study.trials[0].duration.total_seconds())
        plain_train, plain_total, trial, call = plain_train[1:], plain_total[1:], trial[1:], call[1:]
        best = {
            name: min(v)
            for name, v in (
                ("train", plain_train),
                ("train+oof", plain_total),
                ("trial", trial),
                ("tune call", call),
            )
        }
        print(f"{args.experiment}, {args.epochs} epochs, fold {folds[0]}, best of {args.repeats}:")
        for name, seconds in best.items():
            print(f"  {name:>10}: {seconds:7.2f} s")
        print(
            f"  trial vs plain train + OOF predict: {best['trial'] / best['train+oof'] - 1:+.1%} (goal ≤ 5 %)"
        )
        print(f"  trial vs plain kit train alone:     {best['trial'] / best['train'] - 1:+.1%}")
        print(f"  whole kit tune call (1 trial):      {best['tune call'] / best['train+oof'] - 1:+.1%}")


def workers(args: argparse.Namespace) -> None:
    import contextlib

    import optuna

    from kit.search.storage import open_storage, redacted
    from kit.search.study import RUN_ATTR

    with contextlib.ExitStack() as stack:
        storage = args.storage
        if args.postgres:
            sys.path.insert(0, str(REPO / "tests"))  # the tests' throwaway PostgreSQL server
            from helpers import postgres_bin, postgres_server

            if postgres_bin() is None:
                raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
            storage = stack.enter_context(postgres_server(postgres_bin()))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="kit-bench-workers-"))
        _project(Path(tmp), None)
        (Path(tmp) / "space.yaml").write_text(
            "params:\n  training.lr: {float: [1.0e-3, 3.0e-2], log: true}\n"
            "  training.schedule: {choice: [cosine, constant]}\npruner: none\n"
        )
        command = [
            sys.executable,
            "-m",
            "kit",
            "tune",
            "--exp",
            "unet_tiny",
            "--space",
            "space.yaml",
            "--study",
            "bench",
            "--trials",
            str(args.trials),
        ]
        for item in ("training.epochs=2", "training.max_steps_per_epoch=2", "data.crop_size=64"):
            command += ["--set", item]
        if storage:
            command += ["--storage", storage]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        procs = [
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(args.workers)
        ]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - started
        if any(codes):
            raise SystemExit(f"a worker failed: {[p.stderr.read()[-2000:] for p in procs]}")
        from kit import tracking

        study = optuna.load_study(
            study_name="bench", storage=open_storage(storage or f"sqlite:///{tmp}/mlruns/optuna.db")
        )
        trials = study.get_trials()
        runs = tracking.find_runs("bench", status=None)
        trial_runs = [r for r in runs if r.data.tags.get("kit.role") == "trial"]
        numbers = [r.data.tags["kit.trial"] for r in trial_runs]
        values = [tuple(sorted(t.params.items())) for t in trials]
        linked = {t.user_attrs.get(RUN_ATTR) for t in trials}
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        label = "PostgreSQL" if args.postgres else redacted(storage) if storage else "SQLite"
        pids = sorted({r.data.tags.get("kit.pid") for r in trial_runs})
        per_worker = [sum(r.data.tags.get("kit.pid") == pid for r in trial_runs) for pid in pids]
        print(f"{args.workers} workers, --trials {args.trials}, {label}: {seconds:.0f} s")
        print(f"  trials: {states}; trial runs per worker: {per_worker}")
        print(
            f"  duplicates: {len(numbers) - len(set(numbers))} trial numbers run twice, "
            f"{len(values) - len(set(values))} repeated value sets"
        )
        lost = len(linked ^ {r.info.run_id for r in trial_runs})
        running = sum(r.info.status == "RUNNING" for r in runs)
        print(f"  lost runs: {lost} unlinked trial runs, {running} left RUNNING")


def compare(args: argparse.Namespace) -> None:
    from kit.config import load_experiment
    from kit.stages.predict import predict_experiment
    from kit.stages.train import train_experiment
    from kit.tracking.schema import get_run
    from kit.workflows.tune import tune_experiment

    space = REPO / "experiments" / "spaces" / f"{args.experiment}.yaml"
    with tempfile.TemporaryDirectory(prefix="kit-bench-compare-") as tmp:
        root = _project(Path(tmp), None if args.synthetic else args.data)
        sets = [f"data.root={root}", *DEMO_FOLD, *args.set]
        recipe = load_experiment(
            args.experiment,
            [
                *sets,
                f"training.max_minutes={args.trial_minutes}",
                "tracking.experiment=recipe",
                "tracking.log_model=false",
            ],
        )
        started = time.perf_counter()
        train = train_experiment(recipe, folds=recipe.training.folds[:1], progress=False)
        predicted = predict_experiment(recipe, oof=True, train_run_id=train.parent_run_id, progress=False)
        recipe_map = get_run(predicted.run_id).data.metrics["oof_map_tuned"]
        print(
            f"hand-made {args.experiment}: OOF mAP {recipe_map:.4f} ({time.perf_counter() - started:.0f} s)"
        )
        started = time.perf_counter()
        outcome = tune_experiment(
            exp=args.experiment,
            space=space,
            overrides=sets,
            minutes=args.minutes,
            trial_minutes=args.trial_minutes,
            progress=False,
        )
        print(f"study ({time.perf_counter() - started:.0f} s): {outcome.counts}")
        if outcome.best_value is not None:
            print(
                f"best trial {outcome.best_number}: OOF mAP {outcome.best_value:.4f} "
                f"({outcome.best_value - recipe_map:+.4f} against the recipe): {outcome.best_params}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("overhead")
    one.add_argument("--experiment", default="unet_tiny")
    one.add_argument("--data", help="dataset folder (default: a tiny synthetic one; model.pretrained off)")
    one.add_argument("--epochs", type=int, default=2)
    one.add_argument("--repeats", type=int, default=2)
    one.add_argument("--set", action="append", default=[], help="more --set overrides")
    many = sub.add_parser("workers")
    many.add_argument("--workers", type=int, default=2)
    many.add_argument("--trials", type=int, default=6)
    many.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL server")
    many.add_argument("--storage", help="a study storage URL of your own")
    versus = sub.add_parser("compare")
    versus.add_argument("--experiment", default="unet_lite0")
    versus.add_argument("--data", default="data/mnfinder")
    versus.add_argument("--minutes", type=float, default=16.0)
    versus.add_argument("--trial-minutes", type=float, default=4.0)
    versus.add_argument("--synthetic", action="store_true", help="a tiny synthetic set instead (a smoke run)")
    versus.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    {"overhead": overhead, "workers": workers, "compare": compare}[args.what](args)


if __name__ == "__main__":
    main()
