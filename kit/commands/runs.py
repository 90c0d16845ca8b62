"""`kit runs` (a leaderboard from MLflow) and `kit ui` (the MLflow UI on this project's store)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from kit.commands._common import console, print_frame


def runs_command(
    experiment: Annotated[str | None, typer.Option("--exp", "-e", help="Only this experiment.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many runs.")] = 20,
) -> None:
    """Leaderboard of training runs: folds, val mAP mean ± sd, epochs, duration, status."""
    from kit.stages.runs import leaderboard

    table = leaderboard(experiment, limit=limit)
    if table.empty:
        console.print("no training runs yet; start one with `kit train --exp unet_tiny`")
        return
    print_frame(table, title="training runs (newest first)")


def ui_command(
    port: Annotated[int, typer.Option(help="Port to serve on (127.0.0.1).")] = 5000,
) -> None:
    """Start the MLflow UI on this project's tracking store and print its URL."""
    import subprocess
    import sys

    from kit import tracking

    uri = tracking.tracking_uri()
    tracking.configure()
    url = f"http://127.0.0.1:{port}"
    console.print(f"MLflow UI for {uri} at [bold]{url}[/] (Ctrl-C stops it)")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(cmd, check=False)
