"""The one error family of `kit`.

Raise a `KitError` (or a subclass) where the problem is known, with a message that names the file, id or
value and, where possible, the fix. The CLI catches `KitError`, prints its message on one line and exits
with code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class KitError(Exception):
    """A user-facing error: bad input, bad config, a missing run. The message is shown as is."""


class DataError(KitError):
    """Bad or missing data: unreadable image, mask size mismatch, overlapping masks, malformed CSV."""


class ConfigError(KitError):
    """Bad experiment config: unknown experiment, unknown key, invalid value."""


class RunNotFoundError(KitError):
    """A stage asked MLflow for a run (or artifact) that does not exist."""


class StopRun(Exception):
    """Raised to stop work on purpose (a search trial its pruner gave up on): every MLflow run it passes
    through ends KILLED, not FAILED. Control flow, never shown to a user, so not a KitError."""
