"""MLflow servers kit starts (`kit ui`, the tests' tracking server) as a process group of their own.

`mlflow ui` / `mlflow server` is a tree of processes (the CLI, uvicorn or gunicorn workers, huey task
consumers). Started in its own process group, the whole tree can be signalled at once: `serve` forwards
kit's SIGINT (Ctrl-C) and SIGTERM to the group and, whatever ends it, leaves no process of the group
behind, so nothing keeps the port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 10.0


def ui_url(base: str) -> str:
    """The page of the MLflow UI at `base` to open: the experiments in the UI's model-training view.

    MLflow 3.17's UI shows every experiment in the GenAI view (traces, agent versions) unless the browser
    chose "Model training" before; the experiment tag `mlflow.experimentKind` that kit sets is only read
    where that switch is absent. The URL parameter sets the view for the visit (and links within it)."""
    return f"{base.rstrip('/')}/#/experiments?workflowType=machine_learning"


def mlflow_command(kind: str, backend_store_uri: str, host: str, port: int, *extra: str) -> list[str]:
    """The command line of `mlflow ui` or `mlflow server` with this interpreter's MLflow."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        kind,
        "--backend-store-uri",
        backend_store_uri,
        "--host",
        host,
        "--port",
        str(port),
        *extra,
    ]


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """End the process group led by `proc`: SIGTERM to every member, SIGKILL to those still there after
    `grace` seconds; reaps `proc`."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        if not group_alive(pgid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


@contextlib.contextmanager
def process_group(cmd: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """Start `cmd` as the leader of a new process group (and session); on exit, stop the whole group."""
    proc = subprocess.Popen(list(cmd), start_new_session=True, **popen)
    try:
        yield proc
    finally:
        stop_group(proc)


def serve(cmd: Sequence[str]) -> int:
    """Run `cmd` in its own process group until it exits or kit gets SIGINT/SIGTERM, which is passed on
    to the whole group; then no process of the group is left. Returns the command's exit code (0 when
    stopped by a signal)."""
    stopped: list[float] = []

    with process_group(cmd) as proc:

        def forward(signum: int, _frame: Any) -> None:
            stopped.append(time.monotonic())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)

        previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
        try:
            while (code := proc.poll()) is None:
                if stopped and time.monotonic() - stopped[0] > GRACE_SECONDS:
                    break  # it ignores the signal: `process_group` ends it
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0 if stopped or code is None else code
