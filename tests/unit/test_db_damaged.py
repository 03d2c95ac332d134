"""A damaged SQLite ledger is refused when opened, and its failures are told apart from others.

The files are real ledgers written through `open_ledger`, then damaged the way disks and crashes
damage them: pages overwritten in the middle of the file, a write-ahead log full of garbage.
SQLite itself opens both without a word (it drops a WAL it cannot read, and with it every
transaction since the last checkpoint); the ledger must not.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from ledger import db
from ledger.chain import ChainError
from ledger.db.engine import wal_header_problem
from ledger.errors import LedgerDamagedError, LedgerDbError
from node.api import NodeMetrics, build_app
from node.recovery import LedgerHealth, is_ledger_failure

PAGE = 4096
ROWS = 400  # ~100 pages of filler: a file with middle pages to damage


def _fill(ledger: db.Ledger) -> None:
    with ledger.begin() as session:
        session.execute(text("CREATE TABLE filler (id INTEGER PRIMARY KEY, data BLOB)"))
        for i in range(ROWS):
            session.execute(
                text("INSERT INTO filler (id, data) VALUES (:i, :d)"),
                {"i": i, "d": os.urandom(900)},
            )


def _rows(ledger: db.Ledger) -> int:
    with ledger.begin() as session:
        return int(session.execute(text("SELECT count(*) FROM filler")).scalar_one())


@pytest.fixture
def closed_ledger(tmp_path: Path) -> Path:
    """A filled ledger file, closed cleanly (everything checkpointed into the main file)."""
    path = tmp_path / "ledger.sqlite"
    ledger = db.open_ledger(db.sqlite_url(path))
    _fill(ledger)
    ledger.close()
    assert not path.with_name(path.name + "-wal").exists() or (
        path.with_name(path.name + "-wal").stat().st_size == 0
    )
    return path


@pytest.fixture
def crashed_ledger(tmp_path: Path) -> Iterator[Path]:
    """A copy of a filled ledger taken while it is open, as a kill -9 leaves it: the recent
    transactions are in its -wal file only."""
    live = tmp_path / "live" / "ledger.sqlite"
    ledger = db.open_ledger(db.sqlite_url(live))
    try:
        with ledger.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            copy = tmp_path / "crashed" / "ledger.sqlite"
            copy.parent.mkdir()
            _fill(ledger)
            shutil.copy(live, copy)
            shutil.copy(live.with_name(live.name + "-wal"), copy.with_name(copy.name + "-wal"))
        yield copy
    finally:
        ledger.close()


def test_a_ledger_with_overwritten_middle_pages_is_refused_naming_the_file(
    closed_ledger: Path,
) -> None:
    size = closed_ledger.stat().st_size
    assert size > 20 * PAGE
    with closed_ledger.open("r+b") as file:
        file.seek(size // 2 // PAGE * PAGE)
        file.write(os.urandom(4 * PAGE))
    with pytest.raises(LedgerDamagedError, match="is damaged") as refused:
        db.open_ledger(db.sqlite_url(closed_ledger))
    message = str(refused.value)
    assert str(closed_ledger) in message and "malformed" in message
    assert "backup" in message and "--new-ledger" in message


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(os.urandom(20 * PAGE))
    with pytest.raises(LedgerDamagedError, match="not a database"):
        db.open_ledger(db.sqlite_url(path))


def test_a_crashed_ledger_keeps_what_its_wal_holds(crashed_ledger: Path) -> None:
    wal = crashed_ledger.with_name(crashed_ledger.name + "-wal")
    assert wal.stat().st_size > crashed_ledger.stat().st_size  # the rows are in the WAL
    reopened = db.open_ledger(db.sqlite_url(crashed_ledger))
    try:
        assert _rows(reopened) == ROWS
    finally:
        reopened.close()


def test_a_garbage_wal_is_refused_not_dropped(crashed_ledger: Path) -> None:
    wal = crashed_ledger.with_name(crashed_ledger.name + "-wal")
    with wal.open("r+b") as file:
        file.write(os.urandom(PAGE))
    with pytest.raises(LedgerDamagedError, match="write-ahead log") as refused:
        db.open_ledger(db.sqlite_url(crashed_ledger))
    assert str(crashed_ledger) in str(refused.value)
    assert wal.stat().st_size > PAGE  # not reset: a repair can still read what it holds


def test_wal_headers() -> None:
    assert wal_header_problem(b"") is None  # no header yet
    assert wal_header_problem(bytes(32)) is None  # never written through
    assert "magic" in (wal_header_problem(b"\x01" * 32) or "")


def test_a_storage_failure_is_a_ledger_failure_a_chain_error_is_not(closed_ledger: Path) -> None:
    ledger = db.open_ledger(db.sqlite_url(closed_ledger))
    try:
        size = closed_ledger.stat().st_size
        with closed_ledger.open("r+b") as file:  # damaged under the running process
            file.seek(2 * PAGE)
            file.write(os.urandom(size - 2 * PAGE))
        ledger.engine.dispose()  # fresh connections: nothing served from a page cache
        with pytest.raises(Exception) as failed:
            _rows(ledger)
    finally:
        ledger.close()
    health = LedgerHealth()
    assert not health.record("redeem", ChainError("the RPC did not answer"))
    assert not health.record("commit", LedgerDbError("voucher below the one held"))
    assert health.ok
    assert is_ledger_failure(failed.value)
    assert health.record("prune", failed.value)
    assert not health.ok and "prune job" in (health.failure or "")
    assert "malformed" in (health.failure or "")

    app = build_app(
        status=dict,
        healthy=lambda: health.ok,
        metrics=NodeMetrics(),
        problem=lambda: health.failure,
    )
    response = TestClient(app).get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": health.failure}
