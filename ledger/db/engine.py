"""Opening a ledger database: engine, sessions, and the schema at the latest revision.

`open_ledger(url)` is the only way components get at the ledger. It migrates the database to
Alembic `head` (the revisions live in the `migrations` package, located through importlib so
it works from a source checkout, an editable install or a wheel), turns SQLite's foreign keys
and WAL journal on, and hands back a `Ledger` whose `begin()` yields a `Session` inside a
transaction: repository functions never commit, the caller's `with ledger.begin():` does.

Two backends: an SQLite file (the default of every component, `sqlite_url(path)`) or a
PostgreSQL database (`--db postgresql://user@host/dbname`; a URL naming no driver gets psycopg 3,
`ledger_url`). A PostgreSQL server that cannot be reached, or refuses the login, is a
`LedgerDbError` naming the database (its password hidden), raised before any migration runs;
migrations there hold an advisory lock, so two processes opening one database migrate it once.

An SQLite ledger file is checked before anything touches it (`check_sqlite_ledger`): its
write-ahead log must have a valid header (SQLite silently drops a garbage WAL, and with it every
transaction since the last checkpoint, so the ledger would look empty) and the database must
pass `PRAGMA integrity_check`. A damaged file raises `LedgerDamagedError`, which names the file
and what to do, instead of a migration error or a node that serves what it cannot record.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ledger.db.txjournal import LedgerTxJournal
from ledger.errors import LedgerDamagedError, LedgerDbError

logger = logging.getLogger(__name__)

# A second process (the CLI next to a running node) waits this long for a write lock.
SQLITE_BUSY_TIMEOUT_MS = 10_000

# The backends a ledger runs on, and the driver a URL that names none gets.
BACKEND_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}
# postgres://... as libpq and hosting services write it
BACKEND_ALIASES = {"postgres": "postgresql"}
# pg_advisory_xact_lock key held while migrating a PostgreSQL ledger (the first 8 bytes of
# "stakeswarm", halved to fit a signed 64-bit key): a second process opening the same database
# waits, then finds it at head.
MIGRATION_LOCK_KEY = int.from_bytes(b"stakeswarm"[:8], "big") >> 1


def ledger_url(url: str | URL) -> URL:
    """`url` parsed, with the driver the ledger uses when it names none (`postgresql://...` and
    `postgres://...` become `postgresql+psycopg://...`, `sqlite://...` `sqlite+pysqlite://...`).
    `LedgerDbError` for text that is no database URL, or a backend other than SQLite or
    PostgreSQL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise LedgerDbError(f"not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    backend = BACKEND_ALIASES.get(backend, backend)
    if backend not in BACKEND_DRIVERS:
        raise LedgerDbError(
            f"the ledger database {describe_url(parsed)} is neither SQLite nor PostgreSQL "
            "(give sqlite:///FILE or postgresql://USER@HOST/DBNAME)"
        )
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+{BACKEND_DRIVERS[backend]}")
    return parsed


def ledger_url_problem(url: str) -> str | None:
    """What is wrong with `url` as a ledger database URL (None: nothing), for a component's
    config to refuse it before anything connects."""
    try:
        ledger_url(url)
    except LedgerDbError as exc:
        return str(exc)
    return None


def describe_url(url: str | URL) -> str:
    """`url` as it may be shown and logged: its password hidden (text that is no URL at all
    is not shown: it may hold one)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


def chosen_ledger_url(url: str | None, default: str | os.PathLike[str]) -> str:
    """The ledger a component opens: `url` (its `--db`) when given, else the SQLite file at
    `default` (the file it has always used)."""
    return sqlite_url(default) if url is None else url


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of the SQLite file at `path` (the default ledger backend)."""
    return URL.create("sqlite+pysqlite", database=str(Path(path))).render_as_string()


def sqlite_path(url: str | URL) -> Path | None:
    """The file behind an SQLite `url`; None for another backend or an in-memory database."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def set_aside(path: Path, label: str) -> Path:
    """Rename the SQLite file at `path` (and its -wal, -shm, if left) next to itself as
    `<stem>.<label>-<UTC time><suffix>`; returns the new path of the database file."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.stem}.{label}-{stamp}{path.suffix}")
    path.rename(aside)
    for suffix in ("-wal", "-shm"):
        leftover = path.with_name(path.name + suffix)
        if leftover.exists():
            leftover.rename(aside.with_name(aside.name + suffix))
    return aside


# The first 32 bytes of a WAL file: magic, format version, page size, checkpoint sequence,
# two salts and a checksum of the first 24 bytes (https://sqlite.org/fileformat.html#walformat).
_WAL_MAGIC = (0x377F0682, 0x377F0683)  # the low bit: checksums over big-endian words
_WAL_VERSION = 3007000
_WAL_HEADER = 32

DAMAGED_ADVICE = (
    "Stop every process using it, then restore the ledger from a backup (the file together "
    "with its -wal, or a copy made with sqlite3 .backup; see docs/operator.md, 'Crashes and "
    "backups'), or start a node on a new ledger with `--new-ledger` (the damaged file is moved "
    "aside; the vouchers and commitments it held can no longer be redeemed or revealed)"
)


def _wal_checksum(data: bytes, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack((">" if big_endian else "<") + f"{len(data) // 4}I", data)
    s0 = s1 = 0
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_header_problem(header: bytes) -> str | None:
    """What is wrong with the first bytes of a WAL file, None if they are a valid header or
    hold no header (shorter than one, or all zero: nothing was committed through it)."""
    if len(header) < _WAL_HEADER or not any(header[:_WAL_HEADER]):
        return None
    magic, version, page_size, _seq, _salt1, _salt2, c0, c1 = struct.unpack(
        ">8I", header[:_WAL_HEADER]
    )
    if magic not in _WAL_MAGIC:
        return f"its write-ahead log does not start with the WAL magic number (0x{magic:08x})"
    if version != _WAL_VERSION or page_size & (page_size - 1) or not 512 <= page_size <= 65536:
        return f"its write-ahead log has a malformed header (version {version}, page {page_size})"
    if _wal_checksum(header[:24], magic & 1 == 1) != (c0, c1):
        return "its write-ahead log header fails its checksum"
    return None


def check_sqlite_ledger(path: Path) -> None:
    """Raise `LedgerDamagedError` if the SQLite ledger at `path` (when it exists) is not a
    readable database, has a garbage write-ahead log, or fails `PRAGMA integrity_check`.

    Call before any connection of ours opens the file: opening it resets a WAL SQLite cannot
    read, and with it the transactions it held."""
    if not path.exists():
        return
    wal = path.with_name(path.name + "-wal")
    problem: str | None = None
    if wal.exists():
        with wal.open("rb") as file:
            problem = wal_header_problem(file.read(_WAL_HEADER))
    if problem is None:
        problem = _integrity_problem(path)
    if problem is not None:
        raise LedgerDamagedError(f"the ledger {path} is damaged: {problem}. {DAMAGED_ADVICE}")


def _integrity_problem(path: Path) -> str | None:
    """What `PRAGMA integrity_check` finds wrong with the database at `path` (its first
    findings), None if it is sound. The full check, not quick_check: a ledger holds rows
    only (inputs live in files), so even a large one is checked in seconds."""
    try:
        connection = sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        return f"it cannot be opened ({exc})"
    try:
        rows = connection.execute("PRAGMA integrity_check(5)").fetchall()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise LedgerDbError(f"the ledger {path} is locked by another process: {exc}") from exc
        return f"it cannot be read ({exc})"
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
        return f"it cannot be read ({exc})"
    finally:
        connection.close()
    findings = [str(row[0]) for row in rows]
    if findings == ["ok"]:
        return None
    return "PRAGMA integrity_check found " + "; ".join(findings)


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
    """An engine for `url` (`ledger_url`: SQLite or PostgreSQL); for SQLite, with foreign keys
    and WAL on every connection and the file's directory created if missing. Connects to
    nothing yet."""
    parsed = ledger_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        # pre-ping: a pooled connection the server closed (a restart) is replaced, not used
        engine = create_engine(
            parsed, echo=echo, pool_pre_ping=parsed.get_backend_name() != "sqlite"
        )
    except (NoSuchModuleError, ImportError) as exc:  # a driver named in the URL, not installed
        raise LedgerDbError(
            f"cannot open the ledger database {describe_url(parsed)}: no driver for it ({exc})"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def check_connection(engine: Engine) -> None:
    """Connect once to the database behind `engine`: `LedgerDbError` naming it (password
    hidden) and saying why, when the server cannot be reached or refuses the login."""
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        reason = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
        raise LedgerDbError(
            f"cannot connect to the ledger database {describe_url(engine.url)}: {reason}"
        ) from None


class _AtDebug(logging.Filter):
    """Logs Alembic's INFO lines ("Running upgrade ...", "setup plugin ...") at DEBUG: every
    ledger opens through the migrations, and a user opening one has no use for them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_AT_DEBUG = _AtDebug()
# the loggers Alembic reports a programmatic migration on
ALEMBIC_LOGGERS = ("alembic.runtime.migration", "alembic.runtime.plugins")


def _migration_logs_at_debug() -> None:
    for name in ALEMBIC_LOGGERS:
        logging.getLogger(name).addFilter(_AT_DEBUG)  # once: a logger keeps a filter once


def _lock_migrations(connection: Connection) -> None:
    """On PostgreSQL, wait for any other process migrating the same database (the lock ends
    with the transaction). SQLite needs none: its write lock serializes the DDL."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind `engine` to `revision` (its logs at DEBUG)."""
    _migration_logs_at_debug()
    with engine.begin() as connection:
        _lock_migrations(connection)
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Migrate the database behind `engine` down to `revision` (`base`: drop everything)."""
    _migration_logs_at_debug()
    with engine.begin() as connection:
        _lock_migrations(connection)
        command.downgrade(alembic_config(connection), revision)


def _is_url(text: str) -> bool:
    try:
        make_url(text)
    except ArgumentError:
        return False  # create_ledger_engine says so
    return True


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

    def tx_journal(self) -> LedgerTxJournal:
        """A journal for `Chain.sender` that records its transactions in this ledger."""
        return LedgerTxJournal(self.sessions)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()


def open_ledger(url: str | URL, *, migrate: bool = True, echo: bool = False) -> Ledger:
    """Open the ledger at `url` (e.g. `sqlite_url(home / "ledger.sqlite")`, or a PostgreSQL
    URL such as `postgresql://user@host/dbname`) and, unless `migrate` is False, bring its
    schema to the latest revision. An SQLite file is checked first (`check_sqlite_ledger`):
    `LedgerDamagedError` if it is damaged. A database server that cannot be reached or
    refuses the login: `LedgerDbError` naming the database, its password hidden."""
    path = sqlite_path(url) if isinstance(url, URL) or _is_url(url) else None
    if path is not None:
        check_sqlite_ledger(path)
    engine = create_ledger_engine(url, echo=echo)
    if engine.dialect.name != "sqlite":
        try:
            check_connection(engine)
        except LedgerDbError:
            engine.dispose()
            raise
    if migrate:
        try:
            upgrade(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise LedgerDbError(
                f"cannot migrate the ledger database {describe_url(engine.url)}: {exc}"
            ) from exc
    logger.info("ledger open at %s", engine.url.render_as_string(hide_password=True))
    # expire_on_commit=False: rows stay readable after `with ledger.begin():` ends.
    return Ledger(engine, sessionmaker(engine, expire_on_commit=False))
