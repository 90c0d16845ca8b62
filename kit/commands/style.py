"""`kit style ...`: learned style transfer (nucleAIzer): pix2pix per style cluster, synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import DATA_DIR, DataOption, console, resolve_dataset_dir
from kit.errors import ConfigError

app = typer.Typer(
    help="Learned style transfer: fit a pix2pix generator per style cluster, synthesise training data.",
    no_args_is_help=True,
)

ClustersOption = Annotated[
    str | None,
    typer.Option("--clusters", help="Style clusters, comma-separated (see `kit data styles`). Default: all."),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed.")]


def parse_ids(text: str | None, option: str = "--clusters") -> list[int] | None:
    """'3,5' → [3, 5]; None stays None; `ConfigError` naming the option for anything else."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"{option} '{text}': expected comma-separated style cluster ids such as 3,5"
        ) from None


@app.command("fit")
def fit_command(
    data: DataOption = None,
    clusters: ClustersOption = None,
    splits: Annotated[
        str, typer.Option("--splits", help="Splits whose annotated images train the generators.")
    ] = "train",
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps per cluster.", min=1)] = 1000,
    crop: Annotated[
        int, typer.Option("--crop", help="Training crop size (multiple of 2**depth).", min=16)
    ] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 4,
    base_channels: Annotated[
        int, typer.Option("--base-channels", help="Width of the first layer.", min=1)
    ] = 32,
    depth: Annotated[
        int, typer.Option("--depth", help="Down-sampling steps of the U-Net generator.", min=1)
    ] = 5,
    pseudo_labels: Annotated[
        str | None,
        typer.Option(
            "--pseudo-labels",
            metavar="EXP",
            help="Learn from the labels of experiment EXP's newest `kit predict` run instead of the truth "
            "(for styles without annotations, e.g. --splits test).",
        ),
    ] = None,
    seed: SeedOption = 0,
) -> None:
    """Train a pix2pix generator (mask image → image) per style cluster; each fit is an MLflow run."""
    from kit.data.dataset import NucleiDataset
    from kit.stages.style import STYLE_EXPERIMENT, fit_styles, pseudo_labels_of

    dataset = NucleiDataset(resolve_dataset_dir(data))
    labels, source = None, "truth"
    if pseudo_labels is not None:
        labels, source = pseudo_labels_of(pseudo_labels)
    config = {
        "steps": steps,
        "crop": crop,
        "batch_size": batch_size,
        "base_channels": base_channels,
        "depth": depth,
    }
    outcomes = fit_styles(
        dataset,
        styles=parse_ids(clusters),
        splits=[s.strip() for s in splits.split(",")],
        config=config,
        seed=seed,
        labels=labels,
        labels_source=source,
    )
    for o in outcomes:
        losses = ", ".join(f"{k} {v:.3f}" for k, v in o.final_losses.items())
        console.print(
            f"style {o.style}: {o.n_images} image(s), {losses} (MLflow run {o.run_id[:8]} in '{STYLE_EXPERIMENT}')"
        )


@app.command("synth")
def synth_command(
    data: DataOption = None,
    n: Annotated[int, typer.Option("--n", help="Images per style cluster.", min=1)] = 64,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output dataset. Default: data/<name>-style-synth/.")
    ] = None,
    clusters: ClustersOption = None,
    size: Annotated[int, typer.Option("--size", help="Side of the square images, px.", min=16)] = 256,
    seed: SeedOption = 0,
) -> None:
    """Render new images with exact masks from rearranged nucleus layouts, with each cluster's generator."""
    from kit.data.dataset import NucleiDataset
    from kit.stages.style import synthesize_dataset

    dataset = NucleiDataset(resolve_dataset_dir(data))
    out = out or DATA_DIR / f"{dataset.name}-style-synth"
    outcome = synthesize_dataset(dataset, out, n=n, styles=parse_ids(clusters), size=size, seed=seed)
    console.print(
        f"[green]wrote[/] {outcome.out}: {outcome.n_images} images from style(s) "
        f"{', '.join(map(str, outcome.generator_runs))} (MLflow run {outcome.run_id[:8]}); "
        f"mix it into training with data.extra: [{{root: {outcome.out}, weight: 0.5}}]"
    )
