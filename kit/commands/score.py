"""`kit score`: the exact DSB metric and error report of a submission CSV against the truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import console, print_summary


def score_command(
    submission: Annotated[
        Path, typer.Argument(help="Submission CSV (ImageId,EncodedPixels).", exists=True, dir_okay=False)
    ],
    truth: Annotated[
        Path,
        typer.Option(
            "--truth",
            "-t",
            help="Labels CSV with Height,Width (e.g. stage1_solution.csv), a kit dataset folder, or a DSB "
            "folder or zip (<id>/images/, <id>/masks/, e.g. stage1_train/).",
            exists=True,
        ),
    ],
    split: Annotated[
        str | None,
        typer.Option(
            help="Dataset split to score against (default: the splits the submission's ids are in)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Report folder. Default: outputs/score/<submission name>/."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON (nothing else on stdout).")
    ] = False,
    track: Annotated[
        bool, typer.Option(help="Log the score as an MLflow run in experiment 'scores'.")
    ] = True,
) -> None:
    """Validate a submission, score it with DSB mAP@[.5:.95] (strict IoU > t), print and plot the error report."""
    from kit.stages.score import score

    outcome = score(submission, truth, split=split, out=out, track=track)
    if as_json:
        typer.echo(json.dumps(outcome.evaluation.summary, indent=2))
        return
    print_summary(outcome.evaluation.summary, title=f"{submission.name} vs {truth.name}")
    console.print(f"report: {outcome.out_dir}/ ({len(outcome.files)} files)")
