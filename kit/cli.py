"""The `kit` command line: thin Typer commands over the library.

Each stage's commands live in `kit/commands/<stage>.py`; this module joins them, handles the global
options and turns a `KitError` into one red line and exit code 1. Heavy libraries (torch, mlflow) are
imported inside command bodies so that `kit --help` stays instant.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kit import __version__
from kit.errors import KitError

err_console = Console(stderr=True)


class _KitGroup(typer.core.TyperGroup):
    """Root command group: a `KitError` from any command becomes one red line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KitError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None


app = typer.Typer(
    cls=_KitGroup,
    name="kit",
    help="Nuclei instance segmentation: raw microscopy images → trained models → scored submission, "
    "every step tracked in MLflow.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"kit {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _register_commands() -> None:
    from kit.commands import data, demo, ensemble, model, predict, runs, score, style, train, tune, weights

    app.command("train")(train.train_command)
    app.command("predict")(predict.predict_command)
    app.command("evaluate")(predict.evaluate_command)
    app.command("compare")(predict.compare_command)
    app.command("submit")(predict.submit_command)
    app.command("ensemble")(ensemble.ensemble_command)
    app.command("tune")(tune.tune_command)
    app.command("score")(score.score_command)
    app.command("register")(model.register_command)
    app.command("export")(model.export_command)
    app.command("runs")(runs.runs_command)
    app.command("ui")(runs.ui_command)
    app.command("demo")(demo.demo_command)
    app.add_typer(data.app, name="data")
    app.add_typer(style.app, name="style")
    app.add_typer(weights.app, name="weights")


_register_commands()


def main() -> None:
    """Console entry point."""
    app()
