"""Opening a ledger database: engine, sessions, and the schema at the latest revision.

`open_ledger(url)` is the only way components get at the ledger. It migrates the database to
Alembic `head` (the revisions live in the `migrations` package, located through importlib so
it works from a source checkout, an editable install or a wheel), turns SQLite's foreign keys
and WAL journal on, and hands back a `Ledger` whose `begin()` yields a `Session` inside a
transaction: repository functions never commit, the caller's `with ledger.begin():` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ledger.errors import LedgerDbError

logger = logging.getLogger(__name__)

# A second process (the CLI next to a running node) waits this long for a write lock.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of the SQLite file at `path` (the default ledger backend)."""
    return URL.create("sqlite+pysqlite", database=str(Path(path))).render_as_string()


def migrations_dir() -> Path:
    """The Alembic script directory: the `migrations` package."""
    return Path(str(files("migrations")))


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for the ledger revisions, bound to `connection` (or to `url`)."""
    config = Config()
    # configparser interpolation: a literal % in a path must be doubled.
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL: readers do not block the writer. In-memory databases answer "memory"; fine.
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def create_ledger_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """An engine for `url`; for SQLite, with foreign keys and WAL on every connection and the
    file's directory created if missing."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise LedgerDbError(f"not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, echo=echo)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind `engine` to `revision`."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Migrate the database behind `engine` down to `revision` (`base`: drop everything)."""
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


@dataclass(frozen=True)
class Ledger:
    """An open ledger database: its engine and a factory of sessions."""

    engine: Engine
    sessions: sessionmaker[Session]
    # where an earlier chain's ledger was moved when this one was opened in its place
    # (`ledger.db.binding.open_chain_ledger`); None when nothing was set aside
    set_aside: Path | None = None

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction, committed on success and rolled back on error."""
        with self.sessions.begin() as session:
            yield session

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()


def open_ledger(url: str | URL, *, migrate: bool = True, echo: bool = False) -> Ledger:
    """Open the ledger at `url` (e.g. `sqlite_url(home / "ledger.sqlite")`, or a PostgreSQL
    URL) and, unless `migrate` is False, bring its schema to the latest revision."""
    engine = create_ledger_engine(url, echo=echo)
    if migrate:
        try:
            upgrade(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise LedgerDbError(f"cannot migrate the ledger database: {exc}") from exc
    logger.info("ledger open at %s", engine.url.render_as_string(hide_password=True))
    # expire_on_commit=False: rows stay readable after `with ledger.begin():` ends.
    return Ledger(engine, sessionmaker(engine, expire_on_commit=False))
