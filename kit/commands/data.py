"""`kit data ...`: import data sets into the DSB layout, synthesise one, assign folds, look at images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import DATA_DIR, DataOption, console, print_frame, resolve_dataset_dir

app = typer.Typer(
    help="Import, synthesise and inspect data sets (DSB layout + manifest.csv).", no_args_is_help=True
)
import_app = typer.Typer(
    help="Import a data set into data/<name>/ (DSB layout, manifest, folds).", no_args_is_help=True
)
app.add_typer(import_app, name="import")

DATA_EXPERIMENT = "datasets"

OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder. Default: data/<name>/.")]
FoldsOption = Annotated[
    int, typer.Option("--k", help="Number of cross-validation folds over the train split.", min=2)
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for style clustering and fold assignment.")]


def _finish_import(out: Path, kind: str, started: float) -> None:
    """Log the import as an MLflow run (manifest as dataset input) and print the summary."""
    from kit import tracking
    from kit.data.manifest import read_manifest

    manifest = read_manifest(out / "manifest.csv")
    elapsed = time.perf_counter() - started
    with tracking.start_run(DATA_EXPERIMENT, f"data import {kind}", run_name=out.name) as run:
        import mlflow

        tracking.log_dataset(out / "manifest.csv", name=out.name, context="import")
        mlflow.log_params({"kind": kind, "path": str(out.resolve()), "n_images": len(manifest)})
        mlflow.log_metrics(
            {"import_seconds": elapsed, "n_nuclei": float(manifest["n_nuclei"].fillna(0).sum())}
        )
        mlflow.log_artifact(str(out / "manifest.csv"))
        if (out / "dataset.json").is_file():
            mlflow.log_artifact(str(out / "dataset.json"))
    _print_summary(out, manifest)
    console.print(
        f"[green]wrote[/] {out} in {elapsed:.1f} s (MLflow run {run.info.run_id[:8]} in '{DATA_EXPERIMENT}')"
    )


def _print_summary(root: Path, manifest) -> None:
    from kit.data.folds import style_summary
    from kit.data.report import split_summary

    print_frame(split_summary(manifest), title=f"{root.name}: images and nuclei per split")
    if (manifest["style"] >= 0).any():
        print_frame(style_summary(manifest).reset_index(), title="style clusters × split (images)")


@import_app.command("dsb2018")
def import_dsb2018_command(
    path: Annotated[
        Path,
        typer.Argument(help="DSB2018 folder (stage1_train/, or its parent) or a .zip of it.", exists=True),
    ],
    name: Annotated[str, typer.Option(help="Dataset name (folder under data/).")] = "dsb2018",
    out: OutOption = None,
    labels_csv: Annotated[
        Path | None,
        typer.Option(
            "--labels-csv",
            help="Read the truth from stage1_train_labels.csv instead of masks/.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    resolve_overlaps: Annotated[
        bool,
        typer.Option(
            "--resolve-overlaps", help="Give contested mask pixels to the nearest nucleus centroid."
        ),
    ] = False,
    k: FoldsOption = 4,
    seed: SeedOption = 0,
) -> None:
    """Import the 2018 Data Science Bowl folder layout (<id>/images/<id>.png, <id>/masks/*.png)."""
    from kit.data.dsb2018 import import_dsb2018
    from kit.submission import read_submission_labels

    started = time.perf_counter()
    out = out or DATA_DIR / name
    reader = read_submission_labels if labels_csv is not None else None
    import_dsb2018(
        path,
        out,
        labels_csv=labels_csv,
        labels_csv_reader=reader,
        resolve_overlaps=resolve_overlaps,
        k_folds=k,
        seed=seed,
    )
    _finish_import(out, "dsb2018", started)


@import_app.command("mnfinder")
def import_mnfinder_command(
    out: OutOption = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Where the mnfinder wheel is cached. Default: ~/.cache/kit."),
    ] = None,
    k: FoldsOption = 4,
    seed: SeedOption = 0,
) -> None:
    """Import the real mnfinder 1.2.3 nucleus data (49 fluorescence images; train/validation/test kept)."""
    from kit.data.mnfinder import import_mnfinder

    started = time.perf_counter()
    out = out or DATA_DIR / "mnfinder"
    import_mnfinder(out, cache_dir=cache_dir, k_folds=k, seed=seed)
    _finish_import(out, "mnfinder", started)


@app.command("synth")
def synth_command(
    n: Annotated[int, typer.Option("--n", help="Number of images.", min=2)] = 40,
    seed: SeedOption = 0,
    name: Annotated[str, typer.Option(help="Dataset name (folder under data/).")] = "synthetic",
    out: OutOption = None,
    size: Annotated[
        int | None, typer.Option(help="Square image size; default varies per image (192–320 px).")
    ] = None,
    k: FoldsOption = 4,
) -> None:
    """Generate a synthetic data set with exact truth (fluorescence and brightfield styles, a test split)."""
    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic

    started = time.perf_counter()
    out = out or DATA_DIR / name
    samples = generate_synthetic(n, seed, size=(size, size) if size else None)
    write_dataset(
        samples,
        out,
        name=name,
        kind="synthetic",
        source=f"kit data synth --n {n} --seed {seed}",
        notes=[],
        k_folds=k,
        seed=seed,
    )
    _finish_import(out, "synthetic", started)


@app.command("folds")
def folds_command(
    data: DataOption = None,
    k: FoldsOption = 4,
    clusters: Annotated[
        int | None,
        typer.Option(
            "--clusters", help="Number of style clusters; default: chosen by silhouette score.", min=1
        ),
    ] = None,
    seed: SeedOption = 0,
) -> None:
    """Recompute style clusters (k-means on intensity histograms) and K folds stratified by cluster."""
    from kit.data.dataset import NucleiDataset
    from kit.data.folds import assign_styles_and_folds
    from kit.data.manifest import write_manifest
    from kit.fileio import read_image

    root = resolve_dataset_dir(data)
    dataset = NucleiDataset(root)
    manifest = assign_styles_and_folds(
        dataset.manifest, lambda i: read_image(dataset.image_path(i)), k=k, n_clusters=clusters, seed=seed
    )
    write_manifest(manifest, root / "manifest.csv")
    _print_summary(root, manifest)
    console.print(f"[green]updated[/] {root / 'manifest.csv'} ({k} folds)")


@app.command("styles")
def styles_command(
    data: DataOption = None,
    per_style: Annotated[int, typer.Option("--per-style", help="Images shown per style cluster.", min=1)] = 6,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write. Default: outputs/styles/<name>.png.")
    ] = None,
) -> None:
    """Show the style clusters: a PNG mosaic of a few images per cluster and cluster sizes per split."""
    from kit import tracking
    from kit.data.dataset import NucleiDataset
    from kit.style.report import style_mosaic, styles_table

    dataset = NucleiDataset(resolve_dataset_dir(data))
    table = styles_table(dataset.manifest)
    out = out or Path("outputs") / "styles" / f"{dataset.name}.png"
    mosaic = style_mosaic(dataset, out, per_style=per_style)
    csv = out.with_suffix(".csv")
    table.to_csv(csv, index=False)
    with tracking.start_run(DATA_EXPERIMENT, "data styles", run_name=f"{dataset.name}-styles") as run:
        import mlflow

        tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="styles")
        mlflow.log_artifact(str(mosaic))
        mlflow.log_artifact(str(csv))
    print_frame(
        table, title=f"{dataset.name}: style clusters × split (images, % of split)", float_format="{:.1f}"
    )
    rare = table.loc[table["rare_in_train"], "style"].tolist()
    if rare:
        console.print(
            f"styles rare in training: {', '.join(map(str, rare))} (see `kit style fit` and classical style augmentation)"
        )
    console.print(
        f"[green]wrote[/] {mosaic} and {csv.name} (MLflow run {run.info.run_id[:8]} in '{DATA_EXPERIMENT}')"
    )


@app.command("summary")
def summary_command(data: DataOption = None) -> None:
    """Print a data set's images and nuclei per split, and its style clusters."""
    from kit.data.manifest import read_manifest

    root = resolve_dataset_dir(data)
    _print_summary(root, read_manifest(root / "manifest.csv"))


@app.command("show")
def show_command(
    image_id: Annotated[str, typer.Argument(metavar="ID", help="Image id (see manifest.csv).")],
    data: DataOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write. Default: outputs/show/<id>.png.")
    ] = None,
) -> None:
    """Write a PNG of an image with the contours of its nuclei and print its path."""
    from kit.data.dataset import NucleiDataset
    from kit.visualize import contour_overlay, display_rgb, save_png

    root = resolve_dataset_dir(data)
    sample = NucleiDataset(root).load(image_id)
    picture = (
        display_rgb(sample.image) if sample.labels is None else contour_overlay(sample.image, sample.labels)
    )
    out = out or Path("outputs") / "show" / f"{image_id}.png"
    save_png(out, picture)
    typer.echo(str(out))
