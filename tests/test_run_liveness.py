"""Telling a running run from one whose process died: pid on this host, heartbeat from elsewhere, and
`kit runs` showing the dead ones as "RUNNING (stale?)"."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from kit import tracking
from kit.cli import app
from kit.tracking import store


def _ended_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(done.stdout)


def _running_run(experiment: str, **tags: str):
    """A RUNNING run with these tags (besides kit.role=train), made without kit's lifecycle."""
    client = tracking.configure().MlflowClient()
    experiment_id = tracking.ensure_experiment(experiment)
    run = client.create_run(experiment_id, tags={"kit.role": "train", **tags}, run_name="r")
    return client.get_run(run.info.run_id)


def test_a_run_of_this_process_is_live_and_records_its_liveness(project) -> None:
    with tracking.start_run("live", "train") as run:
        got = tracking.configure().get_run(run.info.run_id)
        assert got.data.tags[tracking.PID_TAG] == str(os.getpid())
        assert abs(int(got.data.tags[store.HEARTBEAT_TAG]) - time.time()) < 60
        assert tracking.is_live(got) and not tracking.is_stale(got)
        assert tracking.status_text(got) == "RUNNING"
    finished = tracking.configure().get_run(run.info.run_id)
    assert not tracking.is_live(finished) and tracking.status_text(finished) == "FINISHED"


@pytest.mark.parametrize(
    ("tags", "live", "stale"),
    [
        ({"kit.host": "HERE", "kit.pid": "ENDED"}, False, True),  # this host, process gone
        ({"kit.host": "HERE", "kit.pid": "ME"}, True, False),  # this host, process alive
        ({"kit.host": "HERE", "kit.pid": "ME", "kit.process_start": "1"}, False, True),  # pid reused
        ({"kit.host": "elsewhere", "kit.pid": "1", "kit.heartbeat": "NOW"}, True, False),
        ({"kit.host": "elsewhere", "kit.pid": "1", "kit.heartbeat": "OLD"}, False, True),
        ({"kit.host": "elsewhere"}, False, False),  # made before kit recorded liveness: unknown
    ],
    ids=["dead-pid", "live-pid", "reused-pid", "fresh-heartbeat", "old-heartbeat", "unknown"],
)
def test_liveness_of_running_runs(project, tags, live, stale) -> None:
    import socket

    values = {
        "HERE": socket.gethostname(),
        "ENDED": str(_ended_pid()),
        "ME": str(os.getpid()),
        "NOW": str(int(time.time())),
        "OLD": str(int(time.time() - 2 * store.STALE_AFTER_SECONDS)),
    }
    run = _running_run("liveness", **{k: values.get(v, v) for k, v in tags.items()})
    if "kit.process_start" in tags and store._process_start(os.getpid()) is None:
        pytest.skip("no /proc: process start times are not recorded here")
    assert (tracking.is_live(run), tracking.is_stale(run)) == (live, stale)
    assert tracking.status_text(run) == ("RUNNING (stale?)" if stale else "RUNNING")


def test_kit_runs_marks_stale_runs(project) -> None:
    import socket

    dead = _running_run("unet_tiny", **{"kit.host": socket.gethostname(), "kit.pid": str(_ended_pid())})
    result = CliRunner().invoke(app, ["runs"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if dead.info.run_id[:8] in line]
    assert "RUNNING (stale?)" in row


def test_the_heartbeat_beats(project, monkeypatch) -> None:
    monkeypatch.setattr(store, "HEARTBEAT_SECONDS", 0.2)
    with tracking.start_run("beat", "train") as run:
        first = int(tracking.configure().get_run(run.info.run_id).data.tags[store.HEARTBEAT_TAG])
        deadline = time.time() + 30
        while int(tracking.configure().get_run(run.info.run_id).data.tags[store.HEARTBEAT_TAG]) == first:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.2)
