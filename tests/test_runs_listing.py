"""`kit runs`: the leaderboard of training runs, readable in an 80-column terminal."""

from __future__ import annotations

import socket
import subprocess
import sys

from typer.testing import CliRunner

from kit import tracking
from kit.cli import app
from kit.tracking.schema import Role, Tag, role_tags


def _train_run(experiment: str, maps: list[float], status: str = "FINISHED", **tags: str) -> str:
    """A training parent run with one finished fold child per value of `maps` (its best_val_map)."""
    client = tracking.configure().MlflowClient()
    experiment_id = tracking.ensure_experiment(experiment)
    folds = ",".join(map(str, range(len(maps))))
    parent = client.create_run(experiment_id, tags=role_tags(Role.TRAIN, **{Tag.FOLDS: folds}, **tags))
    for fold, value in enumerate(maps):
        child = client.create_run(
            experiment_id,
            tags=role_tags(Role.TRAIN_FOLD, **{Tag.PARENT_RUN: parent.info.run_id, Tag.FOLD: str(fold)}),
        )
        client.log_metric(child.info.run_id, "best_val_map", value)
        client.log_param(child.info.run_id, "epochs_run", 3)
        client.set_terminated(child.info.run_id)
    if status != "RUNNING":
        client.set_terminated(parent.info.run_id, status=status)
    return parent.info.run_id


def _runs(columns: int, *args: str) -> str:
    result = CliRunner().invoke(app, ["runs", *args], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_kit_runs_fits_80_columns_and_keeps_names_and_ids_whole(project) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    runs = {
        "unet_tiny": _train_run("unet_tiny", [0.41, 0.43]),
        "unet_tiny2": _train_run("unet_tiny2", [0.5, 0.52, 0.54, 0.56]),
        "maskrcnn_r50_long_name": _train_run(
            "maskrcnn_r50_long_name",
            [0.3],
            status="RUNNING",
            **{"kit.host": socket.gethostname(), "kit.pid": dead.stdout.decode().strip()},
        ),
    }
    out = _runs(80)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for experiment, run_id in runs.items():
        (line,) = [line for line in out.splitlines() if run_id[:8] in line]
        assert experiment in line.split(), out
    assert "0.4200 ± 0.0100" in out and "0.5300 ± 0.0224" in out
    (stale,) = [line for line in out.splitlines() if runs["maskrcnn_r50_long_name"][:8] in line]
    assert "stale" in stale, out


def test_kit_runs_shows_every_column_when_the_terminal_is_wide(project) -> None:
    run_id = _train_run("unet_tiny", [0.41, 0.43])
    out = _runs(200)
    header = next(line for line in out.splitlines() if "experiment" in line)
    for column in ("experiment", "run", "folds", "val mAP", "epochs", "duration", "status", "started"):
        assert column in header, out
    (row,) = [line for line in out.splitlines() if run_id[:8] in line]
    assert "unet_tiny" in row and "FINISHED" in row and "0,1" in row


def test_kit_runs_prints_one_block_per_run_when_even_the_main_columns_do_not_fit(project) -> None:
    runs = {name: _train_run(name, [0.41, 0.43]) for name in ("unet_tiny", "unet_tiny2")}
    out = _runs(40)
    assert "┃" not in out and max(len(line) for line in out.splitlines()) <= 40, out
    for experiment, run_id in runs.items():
        assert f"{experiment} {run_id[:8]}" in out.splitlines(), out
    lines = [line.split() for line in out.splitlines()]
    assert (
        lines.count(["val", "mAP", "0.4200", "±", "0.0100"]) == 2 and lines.count(["status", "FINISHED"]) == 2
    )
