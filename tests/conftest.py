"""Settings for the whole suite, and the ledger backends the ledger tests run on."""

from __future__ import annotations

import ast
import functools
import gc
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer, find_bindir

if sys.version_info < (3, 12):
    # CPython 3.11 keeps the AST constructor's recursion depth in one per-interpreter slot. A
    # garbage collection inside `ast.parse` runs finalizers (hivemind's streams, asyncio's
    # tasks), and another thread or a nested parse can move that slot: the parse then fails
    # with "SystemError: AST constructor recursion depth mismatch". pytest parses with
    # `ast.parse` when it rewrites a module's asserts and when it shows a failed test's
    # source, so that error ended whole runs (INTERNALERROR) instead of reporting the failure.
    # Parsing with the collector paused keeps finalizers out of the parse.
    _parse = ast.parse

    @functools.wraps(_parse)
    def _parse_without_collection(*args, **kwargs):  # type: ignore[no-untyped-def]
        collecting = gc.isenabled()
        gc.disable()
        try:
            return _parse(*args, **kwargs)
        finally:
            if collecting:
                gc.enable()

    ast.parse = _parse_without_collection


# --- ledger backends: the ledger tests run on SQLite and on PostgreSQL --------------------------

LEDGER_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session (`tests/postgres_server.py`)."""
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
        if shutil.which("apt-get") is not None:
            reason += ": run `make system-packages` (Debian package postgresql)"
        pytest.skip(reason)
    server = PostgresServer.start(bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_ledger_template(postgres_server: PostgresServer) -> str:
    """The name of a database on the session's server migrated to head once (`open_ledger`),
    which `ledger_db_url` copies: a copy is ready at once, where migrating every test's
    database would take most of its time."""
    from ledger.db import open_ledger

    url = postgres_server.create_database()
    open_ledger(url).close()  # closed: a template must have no connection while it is copied
    return url.rsplit("/", 1)[1]


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new ledger database of the test's own, once per backend: an SQLite file in
    the test's folder (created and migrated when opened), and a fresh database at the latest
    revision on the session's PostgreSQL server (`postgresql://...`, as a user gives it with
    `--db`; opening it checks its revision, as for a ledger opened again)."""
    if request.param == "sqlite":
        from ledger.db import sqlite_url

        return sqlite_url(tmp_path / "ledger.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(template=request.getfixturevalue("postgres_ledger_template"))


@pytest.fixture(params=LEDGER_BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty database, once per backend (no ledger tables: for migrations
    from scratch): an SQLite file in the test's folder, and a fresh database on the session's
    PostgreSQL server."""
    if request.param == "sqlite":
        from ledger.db import sqlite_url

        return sqlite_url(tmp_path / "ledger.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
