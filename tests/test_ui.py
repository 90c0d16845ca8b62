"""`kit ui`'s `kit.tracking.server.serve`: Ctrl-C (SIGINT) and SIGTERM reach every process the server
started, and none is left behind to keep the port. (tests/test_tracking_server.py stops a real `mlflow
server` this way; tests/test_cli.py checks that `kit ui` runs `mlflow ui` through `serve`.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# A stand-in server: the leader starts a worker that ignores SIGINT (as some servers' workers do), then
# both write their pids and sleep.
FAKE_SERVER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    from pathlib import Path
    worker = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"])
    Path(sys.argv[1]).write_text(f"{worker.pid}\\n")
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def group_members(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(stat.parent.name))
    return out


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow  # real processes and signals
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_passes_the_signal_on_and_leaves_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    pids_file = tmp_path / "worker.pid"
    script = (
        "import sys; from kit.tracking.server import serve; "
        f"sys.exit(serve([sys.executable, '-c', {FAKE_SERVER!r}, {str(pids_file)!r}]))"
    )
    kit_process = subprocess.Popen([sys.executable, "-c", script])
    wait_until(pids_file.exists, 60, "the fake server to start")
    (leader,) = children(kit_process.pid)
    worker = int(pids_file.read_text())
    assert os.getpgid(worker) == leader != os.getpgid(kit_process.pid)  # a group of its own

    kit_process.send_signal(sig)

    assert kit_process.wait(timeout=30) == 0
    assert not alive(leader) and not alive(worker)
    assert group_members(leader) == []
