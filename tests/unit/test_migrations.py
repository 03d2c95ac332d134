"""The Alembic revisions of the ledger: up, down, and equal to the models, on SQLite and on
PostgreSQL (`empty_db_url` in tests/conftest.py); and how opening a ledger fails."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.command import upgrade as alembic_upgrade
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from ledger.db import (
    Base,
    alembic_config,
    create_ledger_engine,
    downgrade,
    ledger_url,
    migrations_dir,
    open_ledger,
    sqlite_url,
    upgrade,
)
from ledger.errors import LedgerDbError
from tests.postgres_server import PASSWORD, PASSWORD_USER, PostgresServer

LEDGER_TABLES = {
    "deployments",
    "channels",
    "batches",
    "leaves",
    "sent_transactions",
    "audits",
    "slashes",
}


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def schema_diff(engine: sa.Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_upgrade_to_head_then_downgrade_to_base(empty_db_url: str) -> None:
    engine = create_ledger_engine(empty_db_url)
    try:
        assert table_names(engine) == set()
        upgrade(engine)
        assert table_names(engine) >= LEDGER_TABLES
        with engine.connect() as connection:
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert MigrationContext.configure(connection).get_current_revision() == head
        downgrade(engine)
        assert table_names(engine) & LEDGER_TABLES == set()
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() is None
        upgrade(engine)  # and up again: the downgrade left nothing behind that conflicts
        assert table_names(engine) >= LEDGER_TABLES
    finally:
        engine.dispose()


def test_migrated_schema_equals_the_models(empty_db_url: str) -> None:
    engine = create_ledger_engine(empty_db_url)
    try:
        upgrade(engine)
        assert schema_diff(engine) == []
        # The comparison does see a difference when there is one.
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP INDEX ix_channels_status_expiry")
        assert [d[0] for d in schema_diff(engine)] == ["add_index"]
    finally:
        engine.dispose()


def test_revisions_form_one_line_from_0001() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "two heads: merge the revisions"
    assert script.get_bases() == ["0001"]
    assert (migrations_dir() / "env.py").is_file()


def test_open_ledger_migrates_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the script location comes from importlib, not the cwd
    ledger = open_ledger(sqlite_url(tmp_path / "state" / "ledger.sqlite"))
    try:
        assert table_names(ledger.engine) >= LEDGER_TABLES
        with ledger.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        ledger.close()
    # Opening an up-to-date ledger again is a no-op.
    again = open_ledger(sqlite_url(tmp_path / "state" / "ledger.sqlite"))
    again.close()


def test_alembic_config_with_a_url_migrates_like_the_command_line(empty_db_url: str) -> None:
    url = empty_db_url
    alembic_upgrade(alembic_config(url=url), "head")
    engine = create_ledger_engine(url)
    try:
        assert table_names(engine) >= LEDGER_TABLES
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_bad_url_is_a_clear_error() -> None:
    with pytest.raises(LedgerDbError, match="not a database URL"):
        open_ledger("definitely not a url")
    with pytest.raises(LedgerDbError, match="neither SQLite nor PostgreSQL"):
        open_ledger("mysql://me:secret@db.example/ledger")


def test_a_postgresql_url_without_a_driver_gets_psycopg() -> None:
    for given in ("postgresql://me@db.example/ledger", "postgres://me@db.example/ledger"):
        assert ledger_url(given).render_as_string() == "postgresql+psycopg://me@db.example/ledger"
    assert ledger_url("sqlite:///x.sqlite").drivername == "sqlite+pysqlite"
    named = "postgresql+psycopg://me@db.example:5433/ledger"
    assert ledger_url(named).render_as_string() == named


def test_an_unreachable_server_is_named_without_its_password() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LedgerDbError) as raised:
        open_ledger(f"postgresql://me:s3cret-pw@127.0.0.1:{port}/ledger")
    message = str(raised.value)
    assert message.startswith(
        f"cannot connect to the ledger database postgresql+psycopg://me:***@127.0.0.1:{port}/ledger"
    )
    assert "refused" in message and "s3cret-pw" not in message


def test_a_wrong_password_is_named_without_the_password(postgres_server: PostgresServer) -> None:
    database = postgres_server.create_database(owner=PASSWORD_USER).rsplit("/", 1)[1]
    wrong = postgres_server.url(database, user=PASSWORD_USER, password="not-the-password")
    with pytest.raises(LedgerDbError, match="password authentication failed") as raised:
        open_ledger(wrong)
    assert "cannot connect to the ledger database postgresql+psycopg://" in str(raised.value)
    assert "not-the-password" not in str(raised.value)
    right = open_ledger(postgres_server.url(database, user=PASSWORD_USER, password=PASSWORD))
    try:
        assert table_names(right.engine) >= LEDGER_TABLES
    finally:
        right.close()


def test_0006_gives_existing_leaves_and_receipts_issued_at_0_and_takes_it_back(
    empty_db_url: str,
) -> None:
    engine = create_ledger_engine(empty_db_url)
    now = "2026-11-30 12:00:00.000000"
    try:
        upgrade(engine, "0005")
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO leaves (session_id, model_id, span_start, span_end, step, tokens,"
                    " input_hash, output_hash, sketch_hash, leaf_hash, receipt_signature,"
                    " created_at) VALUES (:h, :h, 0, 2, 0, 1, :h, :h, :h, :h, :sig, :now)"
                ),
                {"h": b"\x01" * 32, "sig": b"\x02" * 65, "now": now},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO client_receipts (chain_id, server, peer_id, channel_id,"
                    " session_id, model_id, span_start, span_end, step, tokens, input_hash,"
                    " output_hash, sketch_hash, signature, sent_hash, received_hash, cost,"
                    " status, created_at) VALUES (1, :a, 'peer', 1, :h, :h, 0, 2, 0, 1, :h, :h,"
                    " :h, :sig, :h, :h, '5', 'valid', :now)"
                ),
                {"a": "0x" + "ab" * 20, "h": b"\x01" * 32, "sig": b"\x02" * 65, "now": now},
            )
        upgrade(engine)
        with engine.begin() as connection:
            for table in ("leaves", "client_receipts"):
                assert connection.execute(sa.text(f"SELECT issued_at FROM {table}")).all() == [(0,)]
            # The default only filled the old rows: a new row must state its time.
            with pytest.raises(sa.exc.IntegrityError):
                connection.execute(
                    sa.text(
                        "INSERT INTO leaves (session_id, model_id, span_start, span_end, step,"
                        " tokens, input_hash, output_hash, sketch_hash, leaf_hash,"
                        " receipt_signature, created_at) VALUES (:h, :h, 0, 2, 1, 1, :h, :h, :h,"
                        " :l, :sig, :now)"
                    ),
                    {"h": b"\x01" * 32, "l": b"\x03" * 32, "sig": b"\x02" * 65, "now": now},
                )
        assert schema_diff(engine) == []
        downgrade(engine, "0005")
        with engine.connect() as connection:
            for table in ("leaves", "client_receipts"):
                columns = {c["name"] for c in sa.inspect(connection).get_columns(table)}
                assert "issued_at" not in columns
                count = connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
                assert count == 1
    finally:
        engine.dispose()
