"""Run the `kit` CLI and SIGKILL it at an exact point: the Nth call of a function (for tests/test_kills.py).

    python tests/kill_harness.py TARGET N [--after] [--match TEXT] -- KIT ARGS...

TARGET is `module:attribute.path` (e.g. `kit.stages.train:_FoldLogger.checkpoint`), looked up when the
call happens, so patch a name the code reads through its module. The process kills itself with SIGKILL
just before the Nth call (or just after it returns, with --after); with --match only calls whose
arguments' repr contains TEXT count. A SIGKILL cannot be caught: no `finally`, no `atexit`, no MLflow
end_run runs, exactly as when a user or the OOM killer kills the job at that point.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys


def _patch(target: str, nth: int, after: bool, match: str | None) -> None:
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        counted = match is None or match in repr((args, kwargs))
        calls += counted
        if counted and calls == nth and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if counted and calls == nth and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("nth", type=int)
    parser.add_argument("--after", action="store_true")
    parser.add_argument("--match")
    opts = parser.parse_args(argv[:split])
    _patch(opts.target, opts.nth, opts.after, opts.match)
    from kit.cli import main as kit_main

    sys.argv = ["kit", *argv[split + 1 :]]
    kit_main()


if __name__ == "__main__":
    main()
