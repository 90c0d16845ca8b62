"""`kit demo`: import → train U-Net and Mask R-CNN → predict → ensemble → submit → score."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import console, print_frame

RESULTS_FILE = Path("outputs/demo/test_scores.csv")


def demo_command(
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Use a generated data set instead of mnfinder (no download).")
    ] = False,
    minutes: Annotated[
        float,
        typer.Option(
            help="Wall-clock budget, import to scored submission (the training time follows it).", min=1.0
        ),
    ] = 45.0,
    seed: Annotated[int, typer.Option(help="Seed of training and ensemble.")] = 0,
) -> None:
    """Run the whole journey on real data (mnfinder) within a time budget and print test mAP per model."""
    from kit import tracking
    from kit.fileio import atomic_write_text
    from kit.workflows.demo import run_demo

    result = run_demo(
        synthetic=synthetic,
        minutes=minutes,
        seed=seed,
        announce=_announce,
        started=process_start(),
    )
    print_frame(result.table, title="test split: DSB mAP@[.5:.95] per model", float_format="{:.4f}")
    table = atomic_write_text(RESULTS_FILE, result.table.to_csv(index=False))
    console.print(f"submission: {result.submission}   table: {table}")
    console.print(
        f"wall time {result.seconds / 60:.2f} min since the command started (budget {minutes:.1f} min)"
    )
    console.print(
        f"compare every run: [bold]kit ui[/]  (or: mlflow ui --backend-store-uri {tracking.tracking_uri()})"
    )


def _announce(text: str) -> None:
    """Stage headers ("2/6 train …") as rules; notes (the budget, estimated against taken time) in full."""
    if re.match(r"\d+/\d+ ", text):
        console.rule(f"[bold]{text}")
    else:
        console.print(text)


def process_start() -> float:
    """When this process started, as a `time.perf_counter()` value: the demo's clock includes Python's
    start-up and imports."""
    import time

    import psutil

    return time.perf_counter() - (time.time() - psutil.Process().create_time())
