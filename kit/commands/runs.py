"""`kit runs` (a leaderboard from MLflow) and `kit ui` (the MLflow UI on this project's store)."""

from __future__ import annotations

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
    """Start the MLflow UI on this project's tracking store and print its URL; Ctrl-C (or SIGTERM) stops
    it and every process it started."""
    from kit import tracking
    from kit.tracking.server import mlflow_command, serve

    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        console.print(f"the store is a tracking server: open [bold]{uri}[/] in a browser")
        return
    tracking.configure()
    url = f"http://127.0.0.1:{port}"
    console.print(f"MLflow UI for {uri} at [bold]{url}[/] (Ctrl-C stops it)")
    code = serve(mlflow_command("ui", uri, "127.0.0.1", port))
    if code:
        raise typer.Exit(code)
