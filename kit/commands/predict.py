"""`kit predict`, `kit evaluate`, `kit submit`: trained fold models → instances → scores → submission CSV."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kit.commands._common import (
    DataOption,
    OverridesOption,
    choices,
    console,
    frame_table,
    print_frame,
    print_summary,
)
from kit.commands.train import ExpOption
from kit.config import PREDICT_KINDS, SUBMIT_KINDS, TTA_MODES

if TYPE_CHECKING:
    import pandas as pd

Kind = choices("Kind", PREDICT_KINDS)
SubmitKind = choices("SubmitKind", SUBMIT_KINDS)
Tta = choices("Tta", TTA_MODES)
OptionalExp = Annotated[
    str | None,
    typer.Option("--exp", "-e", help="Experiment name (in ./experiments/) or path to a YAML file."),
]


def predict_command(
    exp: OptionalExp = None,
    split: Annotated[
        str | None,
        typer.Option(help="Dataset split to predict with all fold models averaged (default: test)."),
    ] = None,
    oof: Annotated[
        bool,
        typer.Option(
            "--oof", help="Out of fold: each train image by the fold model that did not train on it."
        ),
    ] = False,
    input_dir: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="What to predict: a folder (DSB layout <id>/images/<id>.png, or png/tif/jpg files and "
            "*.zarr folders), or one image file or OME-Zarr/Zarr folder. Images larger than --block are "
            "predicted block by block into OME-Zarr.",
        ),
    ] = None,
    tta: Annotated[
        Tta | None, typer.Option(help="Test-time augmentation (default: inference.tta of the config).")
    ] = None,
    train_run: Annotated[
        str | None, typer.Option("--train-run", help="Train run id (default: the newest finished one).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="torch device, e.g. cpu or cuda:1 (default: cuda when present).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Predict with this model instead of an experiment's: models:/NAME/VERSION, runs:/ID/model, "
            "a run id, a checkpoint or model folder. With --input DIR, or --data ROOT [--split S].",
        ),
    ] = None,
    data: DataOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="Run images and blocks on a local Dask cluster of this many processes."
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Run on a running dask.distributed cluster, e.g. tcp://host:8786 (dask scheduler / dask worker, "
            "SLURM, Kubernetes); workers need kit and the input and output paths.",
        ),
    ] = None,
    block: Annotated[
        int | None,
        typer.Option(
            "--block", min=64, help="Block side in pixels for large images (default: inference.block, 2048)."
        ),
    ] = None,
    halo: Annotated[
        int | None,
        typer.Option(
            "--halo",
            min=0,
            help="Pixels each block sees around its core; must exceed the largest nucleus "
            "(default: inference.halo, else inference.overlap).",
        ),
    ] = None,
    overrides: OverridesOption = None,
) -> None:
    """Predict probability maps and instance label images with an experiment's fold models, or with any
    model (--model); one MLflow predict run."""
    from kit.errors import ConfigError
    from kit.stages.predict import ScaleOptions

    scale = ScaleOptions(workers=workers, scheduler=scheduler, block=block, halo=halo)
    if model is not None:
        _predict_with_model(model, input_dir, data, split, tta, device, scale)
        return
    if exp is None:
        raise ConfigError("give --exp EXPERIMENT (its newest train run) or --model MODEL")
    from kit.config import load_experiment
    from kit.stages.predict import predict_experiment

    cfg = load_experiment(exp, overrides or [])
    outcome = predict_experiment(
        cfg,
        split=split,
        oof=oof,
        input_dir=input_dir,
        train_run_id=train_run,
        tta=tta.value if tta else None,
        device=device,
        command=f"predict --exp {exp}",
        scale=scale,
    )
    index = outcome.index
    folds = sorted({f for group in index["folds"] for f in group.split(";")}, key=int)
    if oof:
        how = "each by the fold model that did not train on it"
    else:
        how = f"fold model {folds[0]}" if len(folds) == 1 else f"fold models {','.join(folds)} averaged"
    console.print(
        f"[bold]{cfg.name}[/] {outcome.kind}: {len(index)} image(s), {int(index['n_instances'].sum())} instances, "
        f"{index['seconds'].mean():.2f} s/image, {how} (train run {outcome.train_run_id[:8]}); "
        f"MLflow predict run {outcome.run_id[:8]}"
    )
    _print_blockwise(index)


def _predict_with_model(
    model: str, input_dir: Path | None, data: Path | None, split: str | None, tta, device: str | None, scale
) -> None:
    from kit.stages.predict import predict_with_model

    outcome = predict_with_model(
        model,
        input_dir=input_dir,
        data_root=data,
        split=split or "test",
        tta=tta.value if tta else None,
        device=device,
        command=f"predict --model {model}",
        scale=scale,
    )
    index = outcome.index
    console.print(
        f"[bold]{model}[/] {outcome.kind}: {len(index)} image(s), {int(index['n_instances'].sum())} instances, "
        f"{index['seconds'].mean():.2f} s/image; MLflow predict run {outcome.run_id[:8]} in '{outcome.experiment}'"
    )
    _print_blockwise(index)


def _print_blockwise(index) -> None:
    """Say which images were predicted block by block, and where their OME-Zarr results are."""
    from kit.inference.artifacts import LARGE_SUFFIX

    large = index[index["labels"].str.endswith(LARGE_SUFFIX)]
    if len(large):
        console.print(
            f"{len(large)} large image(s) predicted block by block into OME-Zarr in the run's artifacts "
            f"({', '.join(large['labels'][:3])}{', ...' if len(large) > 3 else ''})"
        )


def evaluate_command(
    exp: ExpOption,
    kind: Annotated[
        Kind, typer.Option(help="Which predictions to score: the newest predict run of this kind.")
    ] = Kind.oof,
    compare: Annotated[
        str | None,
        typer.Option(help="Other experiments to compare, comma-separated: one AP-vs-IoU curve each."),
    ] = None,
    predict_run: Annotated[
        str | None, typer.Option("--predict-run", help="Predict run id (default: the newest of --kind).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Report folder. Default: outputs/evaluate/<exp>-<kind>/."),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by", help="Break the score down by a manifest column, e.g. style (the style cluster)."
        ),
    ] = None,
    overrides: OverridesOption = None,
) -> None:
    """Score a predict run against the truth: DSB mAP, error taxonomy, plots, worst-image overlays (an MLflow run)."""
    from kit.config import load_experiment
    from kit.stages.evaluate import evaluate_experiment

    cfg = load_experiment(exp, overrides or [])
    others = [load_experiment(name.strip()) for name in (compare or "").split(",") if name.strip()]
    outcome = evaluate_experiment(
        cfg,
        kind=kind.value,
        predict_run_id=predict_run,
        compare=others,
        out=out,
        progress=True,
        by=by,
        command=f"evaluate --exp {exp}",
    )
    print_summary(
        outcome.evaluation.summary,
        title=f"{cfg.name} {kind.value} (predict run {outcome.predict_run_id[:8]})",
    )
    if outcome.comparison is not None:
        print_comparison(outcome.comparison, f"comparison ({kind.value}); missed/extra @0.7")
    if outcome.breakdown is not None:
        print_frame(
            outcome.breakdown,
            title=f"by {by} ({kind.value}; train_images 0 = never trained on)",
            float_format="{:.3f}",
        )
    console.print(
        f"report: {outcome.out_dir}/ ({len(outcome.files)} files); MLflow evaluate run {outcome.run_id[:8]}"
    )


def compare_view(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison's headline columns for an 80-column terminal; compare.csv holds them all (merges,
    splits, missed by size, ...)."""
    import numpy as np
    import pandas as pd

    view = pd.DataFrame({"experiment": table["experiment"]})
    view["mAP [95% CI]"] = [
        f"{m:.3f} [{lo:.2f}–{hi:.2f}]" if np.isfinite(lo) else f"{m:.3f}"
        for m, lo, hi in zip(table["map"], table["map_ci_low"], table["map_ci_high"], strict=True)
    ]
    view["Δ"] = [f"{d:+.3f}" if np.isfinite(d) else "" for d in table["map_diff"]]
    view["F1"] = table["f1_avg"].map("{:.3f}".format)
    view["missed"] = table["missed_rate_0.7"].map("{:.0%}".format)
    view["extra"] = table["extra_0.7"].astype(int).astype(str)
    view["s/img"] = table["s_per_image"].map("{:.2f}".format)
    return view


def print_comparison(table: pd.DataFrame, title: str) -> None:
    """A comparison's headline columns (`compare_view`) as a compact table, names never wrapped."""
    console.print(frame_table(compare_view(table), title, whole=("experiment", "mAP [95% CI]"), compact=True))


def compare_command(
    experiments: Annotated[
        list[str], typer.Argument(help="Experiments to compare; the first is the reference (its truth).")
    ],
    kind: Annotated[
        Kind, typer.Option(help="Which predictions: each experiment's newest predict run of this kind.")
    ] = Kind.test,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Report folder. Default: outputs/compare/<first>-<kind>/."),
    ] = None,
    gallery: Annotated[
        int, typer.Option("--gallery", help="Images in the overlay gallery (those the models disagree on).")
    ] = 4,
    overrides: OverridesOption = None,
) -> None:
    """Seed 003's comparison of several experiments on the same images: F1 and AP vs IoU, mAP with CI and
    paired difference, missed (by size) / extra / merges / splits, s/image, an overlay gallery (one MLflow
    evaluate run with its files)."""
    from kit.config import load_experiment
    from kit.errors import ConfigError
    from kit.stages.evaluate import evaluate_experiment

    if len(experiments) < 2:
        raise ConfigError(f"kit compare needs two experiments or more, got {len(experiments)}")
    cfg = load_experiment(experiments[0], overrides or [])
    others = [load_experiment(name) for name in experiments[1:]]
    outcome = evaluate_experiment(
        cfg,
        kind=kind.value,
        compare=others,
        out=out or Path("outputs") / "compare" / f"{cfg.name}-{kind.value}",
        n_gallery=gallery,
        progress=True,
        command=f"compare {' '.join(experiments)} --kind {kind.value}",
    )
    table = outcome.comparison
    assert table is not None
    images = int(table["images"].iloc[0])
    print_comparison(table, f"{kind.value}: {images} images; Δ against {cfg.name}; missed/extra @0.7")
    console.print(
        f"report: {outcome.out_dir}/ (compare.csv, compare_curves.csv, F1/AP curves, errors, gallery); "
        f"MLflow evaluate run {outcome.run_id[:8] if outcome.run_id else ''} in '{cfg.mlflow_experiment}'"
    )


def submit_command(
    exp: ExpOption,
    name: Annotated[
        str, typer.Option("--name", "-n", help="Submission name: writes submissions/<name>.csv.")
    ],
    kind: Annotated[
        SubmitKind | None, typer.Option(help="Predict run kind (default: the newest test or input run).")
    ] = None,
    predict_run: Annotated[
        str | None, typer.Option("--predict-run", help="Predict run id (default: the newest test/input run).")
    ] = None,
    overrides: OverridesOption = None,
) -> None:
    """Write and validate a submission CSV (RLE) from the newest test predictions (an MLflow run)."""
    from kit.config import load_experiment
    from kit.stages.submit import submit_experiment

    cfg = load_experiment(exp, overrides or [])
    outcome = submit_experiment(
        cfg,
        name,
        kind=kind.value if kind else None,
        predict_run_id=predict_run,
        command=f"submit --exp {exp}",
    )
    console.print(
        f"{outcome.path}: {outcome.n_rows} rows for {outcome.n_images} images, valid; "
        f"from predict run {outcome.predict_run_id[:8]}, MLflow submit run {(outcome.run_id or '')[:8]}"
    )
