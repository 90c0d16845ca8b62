"""`kit score`: the exact DSB metric and error report of a submission CSV against the truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import console, print_summary

SCORE_EXPERIMENT = "scores"


def score_command(
    submission: Annotated[
        Path, typer.Argument(help="Submission CSV (ImageId,EncodedPixels).", exists=True, dir_okay=False)
    ],
    truth: Annotated[
        Path,
        typer.Option(
            "--truth",
            "-t",
            help="Labels CSV with Height,Width (e.g. stage1_solution.csv) or a kit dataset folder.",
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
    from kit.scoring import score_submission, write_report

    evaluation = score_submission(submission, truth, split=split)
    out = out or Path("outputs") / "score" / submission.stem
    paths = write_report(evaluation, out, name=submission.stem)
    if track:
        _log_score(submission, truth, evaluation, out)
    if as_json:
        typer.echo(json.dumps(evaluation.summary, indent=2))
        return
    print_summary(evaluation.summary, title=f"{submission.name} vs {truth.name}")
    console.print(f"report: {out}/ ({len(paths)} files)")


def _log_score(submission: Path, truth: Path, evaluation, out: Path) -> None:
    import mlflow

    from kit import tracking
    from kit.scoring import summary_metrics

    summary = evaluation.summary
    with tracking.start_run(SCORE_EXPERIMENT, "score", run_name=submission.stem):
        mlflow.log_params({"submission": str(submission.resolve()), "truth": str(truth.resolve())})
        mlflow.log_metrics(summary_metrics(summary))
        mlflow.log_artifacts(str(out), artifact_path="report")
        mlflow.log_artifact(str(submission), artifact_path="submission")
