"""`kit tune`: search an experiment's `--set` keys with Optuna (any number of workers on one study), or
write a study's winner as an experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import OverridesOption, console
from kit.commands.train import parse_folds
from kit.errors import ConfigError


def tune_command(
    exp: Annotated[
        str | None,
        typer.Option("--exp", "-e", help="Experiment to search (name in ./experiments/ or a YAML path)."),
    ] = None,
    space: Annotated[
        Path | None,
        typer.Option(help="Search space YAML: `--set` keys and their ranges (see experiments/spaces/)."),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            help="Study name (default: <experiment>-tune), also its MLflow experiment. A study that exists "
            "is joined (resumed, or shared with workers elsewhere)."
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(min=1, help="Stop when the study holds this many finished trials (all workers)."),
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(min=0.0, help="Start no trial that would end after this many minutes.")
    ] = None,
    trial_minutes: Annotated[
        float | None,
        typer.Option(
            "--trial-minutes",
            min=0.0,
            help="Training budget of one trial, shared by its folds (max_minutes).",
        ),
    ] = None,
    folds: Annotated[
        str | None,
        typer.Option(help="Folds each trial trains: '0,1' or 'all'. Default: the experiment's first fold."),
    ] = None,
    overrides: OverridesOption = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Study storage: a database URL (sqlite:///…, postgresql://…) or a journal file. "
            "Default: beside the MLflow store (mlruns/optuna.db)."
        ),
    ] = None,
    best: Annotated[
        str | None,
        typer.Option("--best", help="Write the best trial of this study as an experiment (with --write)."),
    ] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="Experiment YAML to write the best trial to (with --best).")
    ] = None,
) -> None:
    """Search an experiment's settings: each trial trains (median pruning on val mAP) and predicts out of
    fold; its value is the OOF mAP after the tuned post-processing. Every trial is an MLflow child run of
    the study's run."""
    if best is not None or write is not None:
        _write_best(best, write, storage)
        return
    from kit.workflows.tune import tune_experiment

    name = study or exp
    outcome = tune_experiment(
        study=study,
        exp=exp,
        space=space,
        overrides=overrides or [],
        folds=parse_folds(folds),
        trial_minutes=trial_minutes,
        n_trials=trials,
        minutes=minutes,
        storage=storage,
        command=f"tune --study {name}" if study else f"tune --exp {exp}",
    )
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(outcome.counts.items())) or "no trials"
    console.print(
        f"study [bold]{outcome.study}[/] ({counts}) in {outcome.storage}; MLflow experiment "
        f"'{outcome.experiment}', parent run {outcome.parent_run_id[:8]}"
    )
    if outcome.stopped_by_failures:
        console.print("[bold red]stopped:[/] several trials in a row failed; see their FAILED runs")
    if outcome.best_number is not None:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in outcome.best_params.items()
        )
        console.print(
            f"best: trial {outcome.best_number}, OOF mAP (tuned post-processing) {outcome.best_value:.4f}: {shown}"
        )
        console.print(
            f"write it as an experiment: kit tune --best {outcome.study} --write experiments/<name>.yaml"
        )


def _write_best(study: str | None, path: Path | None, storage: str | None) -> None:
    if study is None or path is None:
        raise ConfigError("--best NAME and --write FILE.yaml go together")
    from kit.workflows.tune import write_best

    outcome = write_best(study, path, storage=storage)
    console.print(
        f"wrote {outcome.path}: trial {outcome.number} of study {outcome.study} (OOF mAP {outcome.value:.4f}); "
        f"train it with kit train --exp {outcome.path}"
    )
