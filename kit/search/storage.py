"""Where a study lives: beside the MLflow tracking store, so every `kit tune` worker that shares the
store shares the study.

Default, from the tracking URI:
- `sqlite:///DIR/mlflow.db` (kit's own store) → `sqlite:///DIR/optuna.db`, a sibling file. One SQLite
  file cannot hold both: MLflow and Optuna each record their schema migrations in a table named
  `alembic_version`, and each refuses the other's revision (checked with MLflow 3.17 and Optuna 5.1).
- `postgresql://…/DB` (a team's MLflow backend used directly) → the same database, schema `optuna`.
- anything else (an http tracking server, a file store) → the journal file `optuna.journal` in the
  working directory; pass `--storage` to share a study across machines.

`--storage` takes an RDB URL (`sqlite:///…`, `postgresql://…`, `mysql://…`) or the path of a journal file.
A PostgreSQL study always lives in the schema `optuna` of its database (created when missing), so the
MLflow backend's own database can hold it beside MLflow's tables.

RDB storages run Optuna's heartbeat: a trial whose worker stops beating for `grace_period` seconds (a
SIGKILL, a lost machine) is set FAIL and handed to `on_stale`. Journal files have no heartbeat; there a
worker's MLflow run liveness stands in (`kit.workflows.tune`).
"""

from __future__ import annotations

import contextlib
import re
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kit.errors import ConfigError

OPTUNA_SCHEMA = "optuna"
JOURNAL_FILE = Path("optuna.journal")
HEARTBEAT_SECONDS = 30
"""How often a running trial's worker records its Optuna heartbeat (RDB storages)."""
GRACE_SECONDS = 90
"""A running trial whose heartbeat is older than this is failed by the next worker that looks."""
_RDB_PREFIXES = ("sqlite:", "postgresql", "postgres:", "mysql")


def default_storage(tracking_uri: str, cwd: Path | None = None) -> str:
    """The study storage beside the tracking store `tracking_uri` (see the module docstring)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
        return f"sqlite:///{db.parent / 'optuna.db'}"
    if tracking_uri.startswith(("postgresql", "postgres:")):
        return tracking_uri
    return str((cwd or Path.cwd()) / JOURNAL_FILE)


def is_rdb(storage: str) -> bool:
    """Whether `storage` is a database URL (else it is a journal file path)."""
    return storage.startswith(_RDB_PREFIXES)


def redacted(storage: str) -> str:
    """`storage` without the password of its URL, for tags and messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", storage)


def open_storage(
    storage: str,
    *,
    heartbeat_interval: int = HEARTBEAT_SECONDS,
    grace_period: int = GRACE_SECONDS,
    on_stale: Callable[[Any, Any], None] | None = None,
) -> Any:
    """The Optuna storage at `storage` (an RDB URL with heartbeats, or a journal file), its tables
    created under a lock so that workers starting together do not race."""
    import optuna

    if not is_rdb(storage):
        from optuna.storages.journal import JournalFileBackend

        path = Path(storage)
        if not path.parent.is_dir():
            raise ConfigError(f"study journal {path}: folder {path.parent} does not exist")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    url = _with_driver(storage)
    if storage.startswith("sqlite:"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for another worker's write, never fail
    elif storage.startswith(("postgresql", "postgres:")):
        engine_kwargs["connect_args"] = {"options": f"-csearch_path={OPTUNA_SCHEMA}"}
    with _creation_lock(storage), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
            )
        except ImportError as exc:
            raise ConfigError(f"study storage {redacted(storage)}: no database driver ({exc})") from None
        except Exception as exc:  # SQLAlchemy's OperationalError and kin: unreachable, refused, no rights
            raise ConfigError(
                f"study storage {redacted(storage)}: cannot open it ({str(exc).splitlines()[0]})"
            ) from None


def _with_driver(storage: str) -> str:
    """A PostgreSQL URL without a driver names psycopg (3), the driver kit installs; SQLAlchemy's own
    default differs between its versions (psycopg2 in 2.0, psycopg in 2.1)."""
    for prefix in ("postgresql://", "postgres://"):
        if storage.startswith(prefix):
            return "postgresql+psycopg://" + storage.removeprefix(prefix)
    return storage


@contextlib.contextmanager
def _creation_lock(storage: str) -> Iterator[None]:
    """Hold a lock while the storage's tables are created: a lock file beside a SQLite database, a
    PostgreSQL advisory lock (which also creates the `optuna` schema) on a server."""
    if storage.startswith("sqlite:///"):
        from filelock import FileLock

        db = Path(storage.removeprefix("sqlite:///").split("?", 1)[0])
        if not db.parent.is_dir():
            raise ConfigError(f"study storage {storage}: folder {db.parent} does not exist")
        with FileLock(f"{db}.lock", timeout=600):
            yield
        return
    if not storage.startswith(("postgresql", "postgres:")):
        yield
        return
    import sqlalchemy

    key = zlib.crc32(f"kit-optuna-{OPTUNA_SCHEMA}".encode())
    try:
        engine = sqlalchemy.create_engine(_with_driver(storage))
        connection = engine.connect()
    except Exception as exc:  # unreachable server, bad credentials, no driver
        raise ConfigError(
            f"study storage {redacted(storage)}: cannot connect ({str(exc).splitlines()[0]})"
        ) from None
    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        connection.execute(sqlalchemy.text(f'CREATE SCHEMA IF NOT EXISTS "{OPTUNA_SCHEMA}"'))
        connection.commit()
        yield
    finally:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        connection.commit()
        connection.close()
        engine.dispose()
