"""The Alembic revisions of the ledger: up, down, and equal to the models."""

from __future__ import annotations

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
    migrations_dir,
    open_ledger,
    sqlite_url,
    upgrade,
)
from ledger.errors import LedgerDbError

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


def test_upgrade_to_head_then_downgrade_to_base(tmp_path: Path) -> None:
    engine = create_ledger_engine(sqlite_url(tmp_path / "ledger.sqlite"))
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


def test_migrated_schema_equals_the_models(tmp_path: Path) -> None:
    engine = create_ledger_engine(sqlite_url(tmp_path / "ledger.sqlite"))
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


def test_alembic_config_with_a_url_migrates_like_the_command_line(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "cli.sqlite")
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


def test_0006_gives_existing_leaves_and_receipts_issued_at_0_and_takes_it_back(
    tmp_path: Path,
) -> None:
    engine = create_ledger_engine(sqlite_url(tmp_path / "ledger.sqlite"))
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
