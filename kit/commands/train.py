"""`kit train`: K-fold training of one experiment, tracked as an MLflow parent run with a child per fold."""

from __future__ import annotations

from typing import Annotated

import typer

from kit.commands._common import OverridesOption, console
from kit.errors import ConfigError

ExpOption = Annotated[
    str, typer.Option("--exp", "-e", help="Experiment name (in ./experiments/) or path to a YAML file.")
]


def parse_folds(text: str | None) -> list[int] | str | None:
    """`0,1,2` → [0, 1, 2]; `all` → "all"; None → None (the config's folds)."""
    if text is None or text == "all":
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--folds must be a comma-separated list of fold numbers or 'all', got '{text}'"
        ) from None


def train_command(
    exp: ExpOption,
    folds: Annotated[
        str | None,
        typer.Option(help="Folds to train: '0,1,2,3' or 'all'. Default: training.folds of the config."),
    ] = None,
    overrides: OverridesOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the newest unfinished training run of this experiment.")
    ] = False,
    dump_config: Annotated[
        bool, typer.Option("--dump-config", help="Print the resolved config as YAML and exit.")
    ] = False,
) -> None:
    """Train an experiment's model on its folds (U-Net family or Mask R-CNN), validating DSB mAP every epoch."""
    from kit.config import load_experiment

    cfg = load_experiment(exp, overrides or [])
    if dump_config:
        typer.echo(cfg.to_yaml())
        return
    from kit.stages.train import train_experiment

    outcome = train_experiment(cfg, folds=parse_folds(folds), resume=resume, command=f"train --exp {exp}")
    if not outcome.parent_run_id:
        return  # a non-zero rank under torchrun
    for fold in outcome.folds:
        console.print(
            f"fold {fold.fold}: best val mAP {fold.best_val_map:.4f} at epoch {fold.best_epoch + 1} (run {fold.run_id[:8]})"
        )
    maps = outcome.val_maps
    if maps:
        import numpy as np

        console.print(
            f"[bold]{cfg.name}[/]: val mAP {np.mean(maps):.4f} ± {np.std(maps):.4f} over {len(maps)} fold(s); "
            f"MLflow run {outcome.parent_run_id[:8]} in experiment '{outcome.experiment}'"
        )
