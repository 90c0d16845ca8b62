"""`kit data ...`: import data sets into the DSB layout, synthesise one, assign folds, look at images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import DATA_DIR, DataOption, console, print_frame, resolve_dataset_dir
from kit.tracking.schema import DATASETS_EXPERIMENT

app = typer.Typer(
    help="Import, synthesise and inspect data sets (DSB layout + manifest.csv).", no_args_is_help=True
)
import_app = typer.Typer(
    help="Import a data set into data/<name>/ (DSB layout, manifest, folds).", no_args_is_help=True
)
app.add_typer(import_app, name="import")


OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder. Default: data/<name>/.")]
FoldsOption = Annotated[
    int, typer.Option("--k", help="Number of cross-validation folds over the train split.", min=2)
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for style clustering and fold assignment.")]


def _finish_import(outcome) -> None:
    """Print what an import wrote, and its remarks (one line each)."""
    _print_summary(outcome.root, outcome.manifest)
    for remark in outcome.remarks:
        console.print(f"[yellow]note:[/] {remark}", highlight=False, soft_wrap=True)
    console.print(
        f"[green]wrote[/] {outcome.root} in {outcome.seconds:.1f} s "
        f"(MLflow run {outcome.run_id[:8]} in '{DATASETS_EXPERIMENT}')"
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
    from kit.stages.data import import_dsb2018
    from kit.submission import read_submission_labels

    reader = read_submission_labels if labels_csv is not None else None
    outcome = import_dsb2018(
        path,
        out or DATA_DIR / name,
        labels_csv=labels_csv,
        labels_csv_reader=reader,
        resolve_overlaps=resolve_overlaps,
        k_folds=k,
        seed=seed,
    )
    _finish_import(outcome)


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
    from kit.stages.data import import_mnfinder

    _finish_import(import_mnfinder(out or DATA_DIR / "mnfinder", cache_dir=cache_dir, k_folds=k, seed=seed))


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
    from kit.stages.data import synthesize

    _finish_import(synthesize(out or DATA_DIR / name, n, seed, size=size, k_folds=k))


@app.command("autolabel")
def autolabel_command(
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="The model that labels: an experiment (its newest ensemble or train run), a run id, a model "
            "URI or folder; `classical` also works untrained.",
        ),
    ],
    data: DataOption = None,
    input_dir: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="A folder of unlabelled images instead of a dataset (all go to the train split).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    splits: Annotated[
        str, typer.Option(help="Splits of --data to label, comma-separated; the others keep their truth.")
    ] = "train",
    channel: Annotated[
        int | None,
        typer.Option(
            "--channel", help="The one channel the model sees (e.g. a nuclear stain), 0-based.", min=0
        ),
    ] = None,
    image_channels: Annotated[
        str | None,
        typer.Option(
            "--image-channels",
            help="Channels the written images keep, comma-separated (default: all), e.g. the other channels.",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", help="Leave out images whose label confidence is under this.", min=0),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Dataset name (folder under data/). Default: <dataset>-auto.")
    ] = None,
    out: OutOption = None,
    k: FoldsOption = 4,
    seed: SeedOption = 0,
) -> None:
    """Write a dataset whose labels a model made (seed 004): for training only, never scoring truth."""
    from kit.errors import ConfigError
    from kit.stages.data import autolabel_dataset

    root = None if input_dir is not None else resolve_dataset_dir(data)
    try:
        kept = [int(c) for c in image_channels.split(",")] if image_channels else None
    except ValueError:
        raise ConfigError(f"--image-channels {image_channels!r}: give channel numbers, e.g. 1,2") from None
    default_name = f"{(root or input_dir).name}-auto"
    outcome = autolabel_dataset(
        source,
        out or DATA_DIR / (name or default_name),
        data_root=root,
        input_dir=input_dir,
        splits=[s.strip() for s in splits.split(",") if s.strip()],
        label_channel=channel,
        image_channels=kept,
        min_score=min_score,
        k_folds=k,
        seed=seed,
        command=f"data autolabel --from {source}",
    )
    _print_summary(outcome.root, outcome.manifest)
    records = outcome.records
    agreement = (
        f"; agreement with the drawn labels {outcome.agreement:.3f} mAP over "
        f"{int(records['agreement'].notna().sum())} images"
        if records["agreement"].notna().any()
        else ""
    )
    console.print(
        f"[green]wrote[/] {outcome.root}: {int(records['kept'].sum())} image(s) labelled by {source}, "
        f"{int((~records['kept']).sum())} left out{agreement} "
        f"(MLflow run {outcome.run_id[:8]} in '{DATASETS_EXPERIMENT}')",
        highlight=False,
    )


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
    from kit.data.folds import assign_styles_and_folds, fold_count, fold_remark
    from kit.data.manifest import write_manifest
    from kit.fileio import read_image

    root = resolve_dataset_dir(data)
    dataset = NucleiDataset(root)
    manifest = assign_styles_and_folds(
        dataset.manifest, lambda i: read_image(dataset.image_path(i)), k=k, n_clusters=clusters, seed=seed
    )
    write_manifest(manifest, root / "manifest.csv")
    _print_summary(root, manifest)
    n_train = int((manifest["split"] == "train").sum())
    remark = fold_remark(n_train, k, fold_count(manifest)) if n_train else None
    if remark:
        console.print(f"[yellow]note:[/] {remark}", highlight=False, soft_wrap=True)
    console.print(f"[green]updated[/] {root / 'manifest.csv'} ({fold_count(manifest)} folds)")


@app.command("styles")
def styles_command(
    data: DataOption = None,
    per_style: Annotated[int, typer.Option("--per-style", help="Images shown per style cluster.", min=1)] = 6,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write. Default: outputs/styles/<name>.png.")
    ] = None,
) -> None:
    """Show the style clusters: a PNG mosaic of a few images per cluster and cluster sizes per split."""
    from kit.stages.data import styles_report

    root = resolve_dataset_dir(data)
    report = styles_report(root, out, per_style)
    table = report.table
    print_frame(
        table, title=f"{root.name}: style clusters × split (images, % of split)", float_format="{:.1f}"
    )
    rare = table.loc[table["rare_in_train"], "style"].tolist()
    if rare:
        console.print(
            f"styles rare in training: {', '.join(map(str, rare))} (see `kit style fit` and classical style augmentation)"
        )
    console.print(
        f"[green]wrote[/] {report.mosaic} and {report.csv.name} "
        f"(MLflow run {report.run_id[:8]} in '{DATASETS_EXPERIMENT}')"
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
