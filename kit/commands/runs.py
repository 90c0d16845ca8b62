"""`kit runs` (a leaderboard from MLflow) and `kit ui` (the MLflow UI on this project's store)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.measure import Measurement

from kit.commands._common import console, frame_table

if TYPE_CHECKING:
    import pandas as pd

TITLE = "training runs (newest first)"
STUDIES_TITLE = "search studies (newest first; `kit runs --exp STUDY` lists a study's trials)"
# Experiment and run name a run (trial and run, a trial): they are shown whole, never wrapped or cut. In a
# narrow terminal the optional columns that do not fit are left out, least useful first; when even the
# other columns do not fit, each run is printed as a block of lines instead of a table row.
WHOLE_COLUMNS = ("experiment", "run")
TRIAL_WHOLE_COLUMNS = ("trial", "run")
OPTIONAL_COLUMNS = ("duration", "epochs", "folds", "started", "searches", "best trial")


def runs_command(
    experiment: Annotated[
        str | None, typer.Option("--exp", "-e", help="Only this experiment; a study's: its trials.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many runs.")] = 20,
) -> None:
    """Leaderboard of training runs: folds, val mAP mean ± sd, epochs, duration, status, start time
    (a narrow terminal shows fewer columns); then each search study as one line (`kit tune`)."""
    from kit.stages.runs import is_study, leaderboard, studies, study_trials

    if experiment is not None and is_study(experiment):
        trials = study_trials(experiment)
        if trials.empty:
            console.print(f"study '{experiment}' has no trials yet")
        else:
            title = f"trials of study {experiment} (OOF mAP after tuned post-processing)"
            print_leaderboard(trials, console.width, title, TRIAL_WHOLE_COLUMNS)
        return
    table = leaderboard(experiment, limit=limit)
    found = studies(experiment, limit=limit)
    if table.empty and found.empty:
        console.print("no training runs yet; start one with `kit train --exp unet_tiny`")
        return
    if not table.empty:
        print_leaderboard(table, console.width)
    if not found.empty:
        print_leaderboard(found, console.width, STUDIES_TITLE)


def print_leaderboard(
    table: pd.DataFrame, width: int, title: str = TITLE, whole: tuple[str, ...] = WHOLE_COLUMNS
) -> None:
    """Print a listing of `kit.stages.runs` in `width` terminal columns (`whole`: see WHOLE_COLUMNS)."""
    shown = fitting_columns(table, width, whole)
    if shown is None:
        console.print(f"[bold]{escape(title)}[/]")
        pad = max(len(c) for c in table.columns)
        for row in table.to_dict("records"):
            console.print(" ".join(f"[bold]{escape(str(row[c]))}[/]" for c in whole), soft_wrap=True)
            for column, value in row.items():
                if column not in whole:
                    shown = escape(str(value)).replace("\n", "\n" + " " * (pad + 4))  # a cell of lines
                    console.print(f"  {column:<{pad}}  {shown}")
        return
    rich_table = frame_table(table[shown], title, whole=whole)
    hidden = [c for c in table.columns if c not in shown]
    if hidden:
        rich_table.caption = f"not shown at this width: {', '.join(hidden)}"
    console.print(rich_table)


def fitting_columns(
    table: pd.DataFrame, width: int, whole: tuple[str, ...] = WHOLE_COLUMNS
) -> list[str] | None:
    """The columns of `table` whose table is at most `width` wide at its natural size: all of them, or
    all but the optional ones that do not fit (left out least useful first); None when the columns
    that are not optional are too wide on their own."""

    unbounded = console.options.update_width(1 << 16)  # a measurement never exceeds the width it is given

    def fits(columns: list[str]) -> bool:
        rendered = frame_table(table[columns], whole=whole)
        return Measurement.get(console, unbounded, rendered).maximum <= width

    def in_order(columns: set[str]) -> list[str]:
        return [c for c in table.columns if c in columns]

    shown = set(table.columns)
    for column in OPTIONAL_COLUMNS:
        if fits(in_order(shown)):
            break
        shown.discard(column)
    if not fits(in_order(shown)):
        return None
    for column in reversed(OPTIONAL_COLUMNS):  # give back, most useful first, those that fit after all
        if column in table.columns and column not in shown and fits(in_order(shown | {column})):
            shown.add(column)
    return in_order(shown)


def ui_command(
    port: Annotated[int, typer.Option(help="Port to serve on (127.0.0.1).")] = 5000,
) -> None:
    """Start the MLflow UI on this project's tracking store and print its URL; Ctrl-C (or SIGTERM) stops
    it and every process it started."""
    from kit import tracking
    from kit.tracking.server import mlflow_command, serve, ui_url

    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        console.print(f"the store is a tracking server: open [bold]{ui_url(uri)}[/] in a browser")
        return
    tracking.configure()
    url = ui_url(f"http://127.0.0.1:{port}")
    console.print(f"MLflow UI for {uri} at [bold]{url}[/] (Ctrl-C stops it)")
    code = serve(mlflow_command("ui", uri, "127.0.0.1", port))
    if code:
        raise typer.Exit(code)
