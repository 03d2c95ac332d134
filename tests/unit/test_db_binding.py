"""A ledger tied to the chain its state was recorded on (`ledger.db.binding`): the same chain
keeps it, a chain restarted under the same id gets a fresh one and the old one is set aside (an
SQLite file), or is refused by name (PostgreSQL)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ledger.db import (
    ChannelRole,
    StaleLedgerError,
    get_binding,
    get_channel,
    open_chain_ledger,
    open_ledger,
    record_voucher,
    sqlite_url,
    upsert_channel,
)
from ledger.errors import LedgerDbError
from ledger.types import Voucher

CHAIN = 31337
CONTRACT = "0x" + "c0" * 20
CLIENT = "0x" + "a1" * 20
SERVER = "0x" + "b2" * 20
DEPLOY_BLOCK = 1


class Chain:
    """Block hashes of a chain that can be restarted (a new history under the same id)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.height = 20

    def block_hash(self, number: int) -> bytes | None:
        if number > self.height:
            return None
        return bytes([self.seed]) * 16 + number.to_bytes(16, "big")


def _open(where: Path | str, chain: Chain):  # noqa: ANN202
    """Open the ledger at `where` (an SQLite file, or a database URL) for `chain`."""
    url = sqlite_url(where) if isinstance(where, Path) else where
    return open_chain_ledger(
        url, chain_id=CHAIN, anchor_block=DEPLOY_BLOCK, block_hash=chain.block_hash
    )


def _channel_with_voucher(ledger, amount: int) -> None:  # noqa: ANN001
    with ledger.begin() as db:
        row = upsert_channel(
            db, chain_id=CHAIN, contract=CONTRACT, channel_id=1, role=ChannelRole.CLIENT,
            client=CLIENT, server=SERVER, deposit=1000, redeemed=0, expiry=2**40,
        )  # fmt: skip
        record_voucher(db, row, Voucher(1, amount, b"\x01" * 65))


def _voucher_amount(ledger) -> int | None:  # noqa: ANN001
    with ledger.begin() as db:
        row = get_channel(db, CHAIN, CONTRACT, 1)
        return None if row is None else row.voucher_amount


def test_the_same_chain_keeps_its_ledger(tmp_path: Path, ledger_db_url: str) -> None:
    url = ledger_db_url
    chain = Chain(seed=1)
    ledger = _open(url, chain)
    _channel_with_voucher(ledger, 300)
    binding = get_binding(ledger, CHAIN)
    assert binding is not None and binding.block_number == DEPLOY_BLOCK
    assert binding.block_hash == chain.block_hash(DEPLOY_BLOCK)
    ledger.close()

    chain.height += 100  # the chain went on
    again = _open(url, chain)
    try:
        assert again.set_aside is None
        assert _voucher_amount(again) == 300
    finally:
        again.close()
    assert [p.name for p in tmp_path.iterdir() if "stale" in p.name] == []


def test_a_restarted_chain_gets_a_fresh_ledger_and_the_old_one_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = _open(path, Chain(seed=1))
    _channel_with_voucher(ledger, 300)
    ledger.close()

    restarted = Chain(seed=2)
    with caplog.at_level(logging.WARNING, logger="ledger.db.binding"):
        fresh = _open(path, restarted)
    try:
        assert _voucher_amount(fresh) is None  # channel 1 of the new chain starts from zero
        binding = get_binding(fresh, CHAIN)
        assert binding is not None and binding.block_hash == restarted.block_hash(DEPLOY_BLOCK)
        aside = fresh.set_aside
        assert aside is not None and aside.parent == tmp_path
        assert aside.name.startswith("ledger.stale-31337-01010101-") and aside.suffix == ".sqlite"
    finally:
        fresh.close()
    message = caplog.records[-1].getMessage()
    assert "earlier chain 31337" in message and f"0x{'01' * 16}" in message
    assert str(aside) in message
    old = open_ledger(sqlite_url(aside))  # kept for inspection, as it was
    try:
        assert _voucher_amount(old) == 300
    finally:
        old.close()


def test_a_chain_shorter_than_the_anchor_is_another_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = Chain(seed=1)
    _open(path, chain).close()
    chain.height = 0  # the chain restarted and has not reached the anchor block yet

    with pytest.raises(LedgerDbError, match="has no block 1"):
        _open(path, chain)  # set aside, but a fresh ledger cannot be bound before block 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ledger.stale-")]


def test_a_ledger_without_a_binding_is_bound_as_it_is(ledger_db_url: str) -> None:
    url = ledger_db_url
    plain = open_ledger(url)  # written before bindings existed
    _channel_with_voucher(plain, 40)
    plain.close()

    bound = _open(url, Chain(seed=3))
    try:
        assert bound.set_aside is None and _voucher_amount(bound) == 40
        assert get_binding(bound, CHAIN) is not None
    finally:
        bound.close()


@pytest.mark.parametrize("kind", ["sqlite-uri", "postgresql"])
def test_a_stale_database_that_is_not_a_file_is_refused_by_name(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database()
    else:
        url = f"sqlite+pysqlite:///file:{tmp_path / 'uri.sqlite'}?mode=rwc&uri=true"
    ledger = _open(url, Chain(1))
    _channel_with_voucher(ledger, 300)
    ledger.close()

    with pytest.raises(StaleLedgerError, match="point the ledger at a fresh database"):
        _open(url, Chain(2))
    kept = open_ledger(url)  # refused, not emptied: what it holds is the operator's to judge
    try:
        assert _voucher_amount(kept) == 300
    finally:
        kept.close()
