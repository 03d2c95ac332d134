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
