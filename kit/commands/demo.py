"""`kit demo`: import → train U-Net and Mask R-CNN → predict → ensemble → submit → score."""

from __future__ import annotations

from typing import Annotated

import typer

from kit.commands._common import console, print_frame


def demo_command(
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Use a generated data set instead of mnfinder (no download).")
    ] = False,
    budget: Annotated[
        float,
        typer.Option(
            help="Scale epochs and samples per epoch (1 = ~30 min on 2 CPU cores; 8+ on a GPU).", min=0.05
        ),
    ] = 1.0,
) -> None:
    """Run the whole journey on real data (mnfinder) with CPU-sized budgets and print test mAP per model."""
    from kit import tracking
    from kit.stages.demo import run_demo

    result = run_demo(synthetic=synthetic, budget=budget, announce=lambda text: console.rule(f"[bold]{text}"))
    print_frame(result.table, title="test split: DSB mAP@[.5:.95] per model", float_format="{:.4f}")
    console.print(f"submission: {result.submission}   ({result.seconds / 60:.1f} min)")
    console.print(
        f"compare every run: [bold]kit ui[/]  (or: mlflow ui --backend-store-uri {tracking.tracking_uri()})"
    )
