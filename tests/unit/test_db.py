"""ledger.db repositories on a real, migrated ledger: each test runs on SQLite and on PostgreSQL
(`ledger_db_url` in tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ledger import db, eip712
from ledger.db import (
    AuditOutcome,
    BatchStatus,
    Channel,
    ChannelRole,
    ChannelStatus,
    LeafRecord,
    Ledger,
    SlashReason,
    TxStatus,
)
from ledger.errors import EquivocationError, LedgerDbError, VoucherError
from ledger.merkle import MerkleTree, verify
from ledger.txjournal import TxJournal
from ledger.types import Leaf, Voucher, model_id
from tests.postgres_server import PostgresServer

SALT = bytes.fromhex("5a17" * 16)  # a Slasher deployment's EIP-712 domain salt

CHAIN = 31337
CHANNELS = "0x1000000000000000000000000000000000000001"
SLASHER = "0x2000000000000000000000000000000000000002"
CLIENT = Account.from_key("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
NODE = Account.from_key("0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a")
SERVER = NODE.address
OTHER_SERVER = "0x90F79bf6EB2c4F870365E785982E1f101E93b906"
MODEL = model_id("tiny-llama")
SESSION = keccak(text="session-1")
ISSUED_AT = 1_767_225_600  # unix seconds the receipt of step 0 is signed
BIG = 10**30  # far beyond 64 bits


@pytest.fixture
def ledger(ledger_db_url: str) -> Iterator[Ledger]:
    opened = db.open_ledger(ledger_db_url)
    yield opened
    opened.close()


@pytest.fixture
def session(ledger: Ledger) -> Iterator[Session]:
    with ledger.begin() as s:
        yield s


def make_leaf(step: int, **changes: object) -> Leaf:
    fields: dict[str, object] = dict(
        session_id=SESSION,
        model_id=MODEL,
        span_start=2,
        span_end=5,
        step=step,
        tokens=1 + step % 3,
        input_hash=keccak(b"in%d" % step),
        output_hash=keccak(b"out%d" % step),
        sketch_hash=keccak(b"sketch%d" % step),
        issued_at=ISSUED_AT + step,
    )
    fields.update(changes)
    return Leaf(**fields)  # type: ignore[arg-type]


def receipt(leaf: Leaf) -> bytes:
    return eip712.sign_receipt(eip712.Domain.slasher(CHAIN, SLASHER, SALT), leaf, NODE)


def voucher(channel_id: int, amount: int) -> Voucher:
    unsigned = Voucher(channel_id, amount)
    domain = eip712.Domain.payment_channels(CHAIN, CHANNELS, SALT)
    return dataclasses.replace(unsigned, signature=eip712.sign_voucher(domain, unsigned, CLIENT))


def server_channel(session: Session, channel_id: int = 1, **changes: object) -> Channel:
    fields: dict[str, object] = dict(
        chain_id=CHAIN,
        contract=CHANNELS,
        channel_id=channel_id,
        role=ChannelRole.SERVER,
        client=CLIENT.address,
        server=SERVER,
        deposit=BIG,
        redeemed=0,
        expiry=2_000_000_000,
    )
    fields.update(changes)
    return db.upsert_channel(session, **fields)  # type: ignore[arg-type]


# --- channels and vouchers --------------------------------------------------------------------


def test_upsert_channel_inserts_then_refreshes_on_chain_state(ledger: Ledger) -> None:
    with ledger.begin() as session:
        channel = server_channel(session, contract=CHANNELS.lower())
        assert channel.contract == CHANNELS  # checksummed
    with ledger.begin() as session:
        server_channel(session, deposit=BIG + 5, redeemed=7, expiry=2_100_000_000)
    with ledger.begin() as session:
        stored = db.get_channel(session, CHAIN, CHANNELS, 1)
        assert stored is not None
        assert (stored.deposit, stored.redeemed, stored.expiry) == (BIG + 5, 7, 2_100_000_000)
        assert stored.status is ChannelStatus.OPEN and stored.role is ChannelRole.SERVER
        assert stored.updated_at.tzinfo is UTC
        assert db.get_channel(session, CHAIN, CHANNELS, 2) is None
        assert session.scalar(select(Channel.id).where(Channel.channel_id == 1)) == stored.id


def test_a_channel_keeps_its_role_and_parties(session: Session) -> None:
    server_channel(session)
    with pytest.raises(LedgerDbError, match="one ledger per party"):
        server_channel(session, role=ChannelRole.CLIENT)
    with pytest.raises(LedgerDbError, match="redeemed 8 exceeds deposit 7"):
        server_channel(session, channel_id=2, deposit=7, redeemed=8)
    with pytest.raises(LedgerDbError, match="'middleman' is not a valid ChannelRole"):
        server_channel(session, channel_id=3, role="middleman")


def test_vouchers_only_move_up(ledger: Ledger) -> None:
    with ledger.begin() as session:
        new = server_channel(session)
        assert db.latest_voucher(session, CHAIN, CHANNELS, 1) is None
        assert db.record_voucher(session, new, voucher(1, 100))
        assert db.record_voucher(session, new, voucher(1, BIG - 1))
    with ledger.begin() as session:
        channel = db.get_channel(session, CHAIN, CHANNELS, 1)
        assert channel is not None
        # A replay of the voucher held is accepted and changes nothing.
        assert not db.record_voucher(session, channel, voucher(1, BIG - 1))
        with pytest.raises(VoucherError, match="voucher for 100 is not above the"):
            db.record_voucher(session, channel, voucher(1, 100))
        forged = dataclasses.replace(voucher(1, BIG - 1), signature=b"\x01" * 65)
        with pytest.raises(VoucherError, match="is not above"):
            db.record_voucher(session, channel, forged)
        with pytest.raises(VoucherError, match="exceeds the deposit"):
            db.record_voucher(session, channel, voucher(1, BIG + 1))
        with pytest.raises(VoucherError, match="not channel 1"):
            db.record_voucher(session, channel, voucher(2, BIG))
        with pytest.raises(VoucherError, match="signature must be exactly 65 bytes"):
            db.record_voucher(session, channel, Voucher(1, BIG, b"\x01" * 64))
    with ledger.begin() as session:
        held = db.latest_voucher(session, CHAIN, CHANNELS, 1)
        assert held == voucher(1, BIG - 1)  # exact beyond 64 bits, signature kept
        assert (
            eip712.recover_voucher_signer(
                eip712.Domain.payment_channels(CHAIN, CHANNELS, SALT), held, held.signature
            )
            == CLIENT.address
        )


def test_no_voucher_for_a_closed_or_already_redeemed_amount(session: Session) -> None:
    channel = server_channel(session, redeemed=500)
    with pytest.raises(VoucherError, match="not above the 500 already redeemed"):
        db.record_voucher(session, channel, voucher(1, 400))
    server_channel(session, redeemed=500, status=ChannelStatus.CLOSED)
    with pytest.raises(VoucherError, match="channel 1 is closed"):
        db.record_voucher(session, channel, voucher(1, 600))


def test_a_refused_voucher_leaves_the_ledger_unchanged(ledger: Ledger) -> None:
    with ledger.begin() as session:
        db.record_voucher(session, server_channel(session), voucher(1, 1_000))
    with pytest.raises(VoucherError), ledger.begin() as session:
        channel = db.get_channel(session, CHAIN, CHANNELS, 1)
        assert channel is not None
        channel.redeemed = 900  # changed in the same transaction ...
        db.record_voucher(session, channel, voucher(1, 10))
    with ledger.begin() as session:  # ... and rolled back with it
        channel = db.get_channel(session, CHAIN, CHANNELS, 1)
        assert channel is not None and channel.redeemed == 0
        assert channel.voucher_amount == 1_000


def test_a_voucher_read_before_a_higher_one_was_committed_cannot_replace_it(
    ledger: Ledger,
) -> None:
    """Two writers on one channel (a node and a CLI on one ledger): the second read the channel
    before the first committed a higher voucher, and is refused instead of lowering it."""
    with ledger.begin() as session:
        server_channel(session)
    with ledger.begin() as late:
        stale = db.get_channel(late, CHAIN, CHANNELS, 1)  # voucher 0, as read here
        assert stale is not None
        with ledger.begin() as first:
            db.record_voucher(first, server_channel(first), voucher(1, 200))
        with pytest.raises(VoucherError, match="voucher for 150 is not above the 200 held"):
            db.record_voucher(late, stale, voucher(1, 150))
    with ledger.begin() as session:
        assert db.latest_voucher(session, CHAIN, CHANNELS, 1) == voucher(1, 200)


def test_a_voucher_waits_for_a_concurrent_higher_one_on_postgresql(
    postgres_server: PostgresServer,
) -> None:
    """PostgreSQL: a voucher recorded while another transaction holds a higher, uncommitted one
    waits for it (`SELECT ... FOR UPDATE`), then is refused; it never overwrites it."""
    ledger = db.open_ledger(postgres_server.create_database())
    try:
        with ledger.begin() as session:
            server_channel(session)
        outcome: list[BaseException | bool] = []

        def second_writer() -> None:
            try:
                with ledger.begin() as session:
                    channel = db.get_channel(session, CHAIN, CHANNELS, 1)
                    assert channel is not None
                    outcome.append(db.record_voucher(session, channel, voucher(1, 150)))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        with ledger.begin() as first:
            db.record_voucher(first, server_channel(first), voucher(1, 200))  # row locked
            writer = threading.Thread(target=second_writer)
            writer.start()
            assert postgres_server.wait_for_lock_waiter(timeout=30), "the second never waited"
        writer.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], VoucherError)
        assert "not above the 200 held" in str(outcome[0])
        with ledger.begin() as session:
            assert db.latest_voucher(session, CHAIN, CHANNELS, 1) == voucher(1, 200)
    finally:
        ledger.close()


def test_redeemable_channels_compare_amounts_numerically(session: Session) -> None:
    # 10**20 > 9 * 10**19, although "100..." < "9..." as plain strings.
    first = server_channel(session, 1, redeemed=9 * 10**19, expiry=3_000)
    db.record_voucher(session, first, voucher(1, 10**20))
    second = server_channel(session, 2, expiry=2_000)
    db.record_voucher(session, second, voucher(2, 5))
    done = server_channel(session, 3, redeemed=10)
    db.record_voucher(session, done, voucher(3, 10**19))
    server_channel(session, 3, redeemed=10**19)  # fully redeemed since
    server_channel(session, 4)  # no voucher yet
    closed = server_channel(session, 5)
    db.record_voucher(session, closed, voucher(5, 10))
    server_channel(session, 5, status=ChannelStatus.CLOSED)

    redeemable = db.redeemable_channels(session, CHAIN, CHANNELS)
    assert [c.channel_id for c in redeemable] == [2, 1]  # soonest expiry first
    soon = db.redeemable_channels(session, CHAIN, CHANNELS, expiring_before=2_500)
    assert [c.channel_id for c in soon] == [2]


def test_open_channel_to_finds_the_clients_latest_open_channel(session: Session) -> None:
    def client_channel(channel_id: int, server: str, expiry: int, status: str = "open") -> None:
        server_channel(
            session,
            channel_id,
            role="client",
            server=server,
            expiry=expiry,
            status=status,
        )

    assert db.open_channel_to(session, CHAIN, CHANNELS, SERVER) is None
    client_channel(1, SERVER, 1_000)
    client_channel(2, SERVER, 5_000)
    client_channel(3, SERVER, 9_000, status="closed")
    client_channel(4, OTHER_SERVER, 9_000)
    found = db.open_channel_to(session, CHAIN, CHANNELS, SERVER.lower())
    assert found is not None and found.channel_id == 2


# --- leaves and batches -----------------------------------------------------------------------


def test_add_leaf_stores_the_leaf_and_is_idempotent(ledger: Ledger) -> None:
    leaf = make_leaf(0)
    with ledger.begin() as session:
        record = db.add_leaf(session, leaf, receipt(leaf))
        assert record.leaf_hash == leaf.hash()
        assert db.add_leaf(session, leaf, receipt(leaf)).id == record.id
    with ledger.begin() as session:
        stored = db.get_leaf(session, leaf.hash())
        assert stored is not None and stored.to_leaf() == leaf
        assert stored.batch_id is None and stored.index_in_batch is None
        assert stored.created_at.tzinfo is UTC
        signer = eip712.recover_receipt_signer(
            eip712.Domain.slasher(CHAIN, SLASHER, SALT), stored.to_leaf(), stored.receipt_signature
        )
        assert signer == NODE.address


def test_a_second_leaf_for_the_same_slot_is_equivocation(session: Session) -> None:
    leaf = make_leaf(3)
    db.add_leaf(session, leaf, receipt(leaf))
    other = dataclasses.replace(leaf, output_hash=keccak(b"something else"))
    with pytest.raises(EquivocationError, match="step 3 already has leaf"):
        db.add_leaf(session, other, receipt(other))
    with pytest.raises(LedgerDbError, match="another signature"):
        db.add_leaf(session, leaf, b"\x02" * 65)
    # The same step signed again at another time is a second receipt for the slot.
    later = dataclasses.replace(leaf, issued_at=leaf.issued_at + 1)
    with pytest.raises(EquivocationError, match="step 3 already has leaf"):
        db.add_leaf(session, later, receipt(later))
    # Another span, step or session is another slot.
    for distinct in (
        dataclasses.replace(other, span_start=3),
        dataclasses.replace(other, step=4),
        dataclasses.replace(other, session_id=keccak(b"s2")),
    ):
        db.add_leaf(session, distinct, receipt(distinct))
    assert len(db.pending_leaves(session)) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"session_id": b"\x01" * 31}, "leaf session id must be exactly 32 bytes"),
        ({"span_start": 5}, r"span \[5, 5\) is empty"),
        ({"span_end": 2**16}, "does not fit its ABI types"),
        ({"tokens": -1}, "does not fit its ABI types"),
        ({"issued_at": 2**64}, "does not fit its ABI types"),
        ({"issued_at": 2**63}, "leaf issued at"),
    ],
)
def test_bad_leaves_are_refused(session: Session, change: dict, message: str) -> None:
    with pytest.raises(LedgerDbError, match=message):
        db.add_leaf(session, make_leaf(0, **change), b"\x01" * 65)
    assert db.pending_leaves(session) == []


def test_seal_batch_assigns_indexes_in_order_under_the_merkle_root(ledger: Ledger) -> None:
    leaves = [make_leaf(step) for step in range(5)]
    with ledger.begin() as session:
        for leaf in leaves:
            db.add_leaf(session, leaf, receipt(leaf))
        pending = db.pending_leaves(session)
        assert [r.step for r in pending] == [0, 1, 2, 3, 4]
        # Seal the first three in a deliberate order.
        chosen = [pending[2], pending[0], pending[1]]
        batch_id = db.seal_batch(session, chosen, node=NODE.address.lower()).id
    with ledger.begin() as session:
        batch = session.get(db.Batch, batch_id)
        assert batch is not None
        assert [leaf.step for leaf in batch.leaves] == [2, 0, 1]
        assert [leaf.index_in_batch for leaf in batch.leaves] == [0, 1, 2]
        expected = MerkleTree([leaves[2].hash(), leaves[0].hash(), leaves[1].hash()])
        assert batch.root == expected.root
        assert (batch.leaf_count, batch.token_count) == (3, 3 + 1 + 2)
        assert batch.status is BatchStatus.PENDING and batch.node == NODE.address
        assert batch.model_id == MODEL
        assert [r.step for r in db.pending_leaves(session)] == [3, 4]
        for record in batch.leaves:
            assert record.index_in_batch is not None
            assert verify(
                db.leaf_proof(record),
                batch.root,
                record.leaf_hash,
                record.index_in_batch,
                batch.leaf_count,
            )
        assert db.batches_with_status(session, "pending") == [batch]


def test_seal_batch_refuses_bad_batches(session: Session) -> None:
    a, b = make_leaf(0), make_leaf(1, model_id=model_id("other"))
    ra, rb = db.add_leaf(session, a, receipt(a)), db.add_leaf(session, b, receipt(b))
    with pytest.raises(LedgerDbError, match="empty batch"):
        db.seal_batch(session, [], node=NODE.address)
    with pytest.raises(LedgerDbError, match="one model"):
        db.seal_batch(session, [ra, rb], node=NODE.address)
    with pytest.raises(LedgerDbError, match="appears twice"):
        db.seal_batch(session, [ra, ra], node=NODE.address)
    with pytest.raises(LedgerDbError, match="0x-address"):
        db.seal_batch(session, [ra], node="node-7")
    db.seal_batch(session, [ra], node=NODE.address)
    with pytest.raises(LedgerDbError, match="already in a batch"):
        db.seal_batch(session, [ra], node=NODE.address)
    with pytest.raises(LedgerDbError, match="not in a batch yet"):
        db.leaf_proof(rb)
    assert db.pending_leaves(session, model_id=MODEL) == []
    assert db.pending_leaves(session, model_id=model_id("other")) == [rb]


def test_leaves_sealed_by_another_transaction_are_not_sealed_again(ledger: Ledger) -> None:
    with ledger.begin() as session:
        for step in range(3):
            db.add_leaf(session, make_leaf(step), receipt(make_leaf(step)))
    with ledger.begin() as late:
        stale = db.pending_leaves(late, model_id=MODEL)  # three pending leaves, as read here
        with ledger.begin() as first:
            db.seal_batch(first, db.pending_leaves(first, model_id=MODEL)[:2], node=SERVER)
        with pytest.raises(LedgerDbError, match="2 of the leaves were sealed into another batch"):
            db.seal_batch(late, stale, node=SERVER)
    with ledger.begin() as session:
        (batch,) = db.batches_with_status(session, BatchStatus.PENDING)
        assert batch.leaf_count == 2 and [leaf.step for leaf in batch.leaves] == [0, 1]
        assert [leaf.step for leaf in db.pending_leaves(session)] == [2]


def test_commit_outcomes_of_a_batch(ledger: Ledger) -> None:
    tx = keccak(b"tx")
    with ledger.begin() as session:
        leaf = make_leaf(0)
        batch = db.seal_batch(session, [db.add_leaf(session, leaf, receipt(leaf))], node=SERVER)
        db.mark_batch_failed(session, batch, "RegistryNodeInactive(0x...)")
        assert batch.status is BatchStatus.FAILED
        assert db.batches_with_status(session, BatchStatus.FAILED) == [batch]
        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        db.mark_batch_committed(session, batch, chain_batch_id=7, tx_hash=tx, committed_at=when)
        db.mark_batch_committed(session, batch, chain_batch_id=7, tx_hash=tx)  # no-op
        with pytest.raises(LedgerDbError, match="already committed as on-chain batch 7"):
            db.mark_batch_committed(session, batch, chain_batch_id=8, tx_hash=tx)
        with pytest.raises(LedgerDbError, match="already committed"):
            db.mark_batch_failed(session, batch, "late")
    with ledger.begin() as session:
        stored = db.get_batch(session, chain_batch_id=7)
        assert stored is not None
        assert (stored.status, stored.tx_hash, stored.error) == (BatchStatus.COMMITTED, tx, None)
        assert stored.committed_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert db.get_batch(session, chain_batch_id=8) is None
        assert db.batches_with_status(session, "failed") == []
        with pytest.raises(LedgerDbError, match="is not one of|not a valid"):
            db.batches_with_status(session, "lost")


def test_session_leaves_up_to_a_step(session: Session) -> None:
    for step in (4, 0, 2, 1, 3):
        leaf = make_leaf(step)
        db.add_leaf(session, leaf, receipt(leaf))
    other_span = make_leaf(1, span_start=5, span_end=9)
    db.add_leaf(session, other_span, receipt(other_span))
    got = db.session_leaves(session, SESSION, 2, 5, up_to_step=2)
    assert [r.step for r in got] == [0, 1, 2]
    assert [r.step for r in db.session_leaves(session, SESSION, 2, 5)] == [0, 1, 2, 3, 4]
    assert [r.step for r in db.session_leaves(session, SESSION, 5, 9)] == [1]
    assert db.session_leaves(session, keccak(b"nobody"), 2, 5) == []


def test_the_database_enforces_batch_links(session: Session) -> None:
    leaf = make_leaf(0)
    record = db.add_leaf(session, leaf, receipt(leaf))
    with pytest.raises(IntegrityError, match="(?i)foreign key"), session.begin_nested():
        session.execute(
            text("UPDATE leaves SET batch_id = 999, index_in_batch = 0 WHERE id = :id"),
            {"id": record.id},
        )
    batch = db.seal_batch(session, [record], node=SERVER)
    with pytest.raises(IntegrityError, match="(?i)check"), session.begin_nested():
        session.execute(
            text("UPDATE leaves SET index_in_batch = NULL WHERE id = :id"), {"id": record.id}
        )
    with pytest.raises(IntegrityError, match="(?i)foreign key"), session.begin_nested():
        session.execute(text("DELETE FROM batches WHERE id = :id"), {"id": batch.id})


def test_a_large_batch_proves_every_leaf(session: Session) -> None:
    signature = b"\x01" * 65  # signatures are stored, not checked: keep this test fast
    for step in range(1_000):
        db.add_leaf(session, make_leaf(step), signature)
    batch = db.seal_batch(session, db.pending_leaves(session), node=SERVER)
    assert batch.leaf_count == 1_000
    tree = db.batch_tree(batch)
    assert tree.root == batch.root
    records = session.scalars(select(LeafRecord).order_by(LeafRecord.index_in_batch)).all()
    for record in records[:: math.isqrt(1_000)]:
        assert record.index_in_batch is not None
        assert verify(
            db.leaf_proof(record), batch.root, record.leaf_hash, record.index_in_batch, 1_000
        )


# --- transactions, audits, slashes, deployments -----------------------------------------------


def test_sent_transaction_life_cycle(ledger: Ledger) -> None:
    h1, h2 = keccak(b"1"), keccak(b"2")
    with ledger.begin() as session:
        db.record_tx(session, tx_hash=h1, sender=SERVER, to=CHANNELS, function="redeem", nonce=4)
        db.record_tx(session, tx_hash=h2, sender=SERVER, to=None, function="deploy", nonce=3)
        with pytest.raises(LedgerDbError, match="already recorded"):
            db.record_tx(session, tx_hash=h1, sender=SERVER, to=None, function="x", nonce=4)
        assert [t.nonce for t in db.pending_txs(session, SERVER)] == [3, 4]
    with ledger.begin() as session:
        db.update_tx(session, h1, status=TxStatus.MINED, gas_used=51_234, block_number=12)
        db.update_tx(session, h2, status="reverted", error="ChannelsExpired(1, 100)")
        with pytest.raises(LedgerDbError, match="no transaction"):
            db.update_tx(session, keccak(b"3"), status="mined")
        with pytest.raises(LedgerDbError, match="'lost' is not one of"):
            db.update_tx(session, h1, status="lost")
    with ledger.begin() as session:
        mined = db.get_tx(session, h1)
        assert mined is not None
        assert (mined.status, mined.gas_used, mined.block_number) == (TxStatus.MINED, 51_234, 12)
        assert mined.updated_at >= mined.created_at
        reverted = db.get_tx(session, h2)
        assert reverted is not None and reverted.error == "ChannelsExpired(1, 100)"
        assert db.pending_txs(session) == []


def test_ledger_tx_journal_commits_each_report_as_it_comes(ledger: Ledger) -> None:
    journal: TxJournal = ledger.tx_journal()
    sent, unknown = keccak(b"1"), keccak(b"2")

    journal.sent("0x" + sent.hex(), sender=SERVER, to=CHANNELS, function="redeem", nonce=7)
    # committed before the sender goes on: a node that stops now finds it pending on restart
    with ledger.begin() as session:
        (pending,) = db.pending_txs(session, SERVER)
        assert (pending.tx_hash, pending.to, pending.function, pending.nonce) == (
            sent,
            CHANNELS,
            "redeem",
            7,
        )
    with pytest.raises(LedgerDbError, match="already recorded"):
        journal.sent("0x" + sent.hex(), sender=SERVER, to=None, function="redeem", nonce=7)

    journal.settled("0x" + sent.hex(), "mined", gas_used=51_234, block_number=12)
    with pytest.raises(LedgerDbError, match="no transaction"):
        journal.settled("0x" + unknown.hex(), "failed", error="dropped")
    with ledger.begin() as session:
        mined = db.get_tx(session, sent)
        assert mined is not None
        assert (mined.status, mined.gas_used, mined.block_number) == (TxStatus.MINED, 51_234, 12)
        assert db.pending_txs(session) == [] and db.get_tx(session, unknown) is None


def test_the_chain_transport_does_not_import_the_ledger_database() -> None:
    probe = (
        "import sys, ledger.chain\n"
        "print(sorted(m for m in sys.modules if m.startswith(('ledger.db', 'sqlalchemy'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "[]"


def test_audits_keep_their_measurements(ledger: Ledger) -> None:
    leaf = keccak(b"leaf")
    distances = {"max_abs": 0.0123, "top_k_overlap": [1.0, 0.98], "tolerance": "bf16"}
    with ledger.begin() as session:
        assert not db.is_audited(session, leaf)
        db.record_audit(
            session, node=SERVER, batch_id=3, leaf_hash=leaf, outcome="passed", distances=distances
        )
        db.record_audit(
            session,
            node=SERVER,
            batch_id=4,
            leaf_hash=keccak(b"leaf2"),
            outcome=AuditOutcome.WITHHELD,
            detail="no reveal within 30 s",
        )
        with pytest.raises(LedgerDbError, match="plain JSON"):
            db.record_audit(
                session,
                node=SERVER,
                batch_id=3,
                leaf_hash=leaf,
                outcome="failed",
                distances={"max_abs": float("nan")},
            )
    with ledger.begin() as session:
        assert db.is_audited(session, leaf)
        audits = db.audits_of(session, SERVER)
        assert [a.batch_id for a in audits] == [3, 4]
        assert audits[0].distances == distances
        assert [a.batch_id for a in db.audits_of(session, SERVER, outcome="withheld")] == [4]
        assert db.audits_of(session, OTHER_SERVER) == []


def test_slashes_are_recorded_exactly(ledger: Ledger) -> None:
    with ledger.begin() as session:
        db.record_slash(
            session,
            node=SERVER,
            batch_id=3,
            leaf_hash=keccak(b"leaf"),
            reason=SlashReason.MISMATCH,
            amount=BIG,
            bounty=BIG // 10,
            tx_hash=keccak(b"slash-tx"),
        )
        db.record_slash(
            session,
            node=SERVER,
            batch_id=None,
            leaf_hash=keccak(b"leaf-a"),
            reason="equivocation",
            amount=5,
            bounty=1,
        )
        with pytest.raises(LedgerDbError, match="batch id is given exactly"):
            db.record_slash(
                session,
                node=SERVER,
                batch_id=3,
                leaf_hash=keccak(b"x"),
                reason="equivocation",
                amount=5,
                bounty=1,
            )
        with pytest.raises(LedgerDbError, match="exceeds the slashed amount"):
            db.record_slash(
                session,
                node=SERVER,
                batch_id=3,
                leaf_hash=keccak(b"x"),
                reason="withheld",
                amount=5,
                bounty=6,
            )
    with ledger.begin() as session:
        slashes = db.slashes_of(session, SERVER)
        assert [(s.reason, s.amount, s.bounty) for s in slashes] == [
            (SlashReason.MISMATCH, BIG, BIG // 10),
            (SlashReason.EQUIVOCATION, 5, 1),
        ]


def test_deployments_are_replaced_by_a_fresh_deploy(ledger: Ledger) -> None:
    first = datetime.now(UTC) - timedelta(hours=1)
    with ledger.begin() as session:
        db.record_deployment(
            session,
            name="devnet",
            chain_id=CHAIN,
            rpc_url="http://127.0.0.1:8545",
            contracts={"PaymentChannels": CHANNELS.lower()},
            deployed_at=first,
        )
        db.record_deployment(
            session,
            name="devnet",
            chain_id=CHAIN,
            rpc_url="http://127.0.0.1:9545",
            contracts={"PaymentChannels": CHANNELS, "Slasher": SLASHER},
        )
        with pytest.raises(LedgerDbError, match="address of Slasher"):
            db.record_deployment(
                session, name="x", chain_id=1, rpc_url="u", contracts={"Slasher": "0x12"}
            )
    with ledger.begin() as session:
        deployment = db.get_deployment(session, "devnet")
        assert deployment is not None
        assert deployment.rpc_url == "http://127.0.0.1:9545"
        assert deployment.contracts == {"PaymentChannels": CHANNELS, "Slasher": SLASHER}
        assert deployment.deployed_at > first
        assert db.get_deployment(session, "devnet", chain_id=1) is None


def test_naive_timestamps_and_bad_addresses_are_refused(session: Session) -> None:
    leaf = make_leaf(0)
    batch = db.seal_batch(session, [db.add_leaf(session, leaf, receipt(leaf))], node=SERVER)
    with pytest.raises(LedgerDbError, match="timezone-aware"):
        db.mark_batch_committed(
            session, batch, chain_batch_id=1, tx_hash=keccak(b"t"), committed_at=datetime.now()
        )
    with pytest.raises(LedgerDbError, match="0x-address"):
        db.record_tx(session, tx_hash=keccak(b"t"), sender="me", to=None, function="f", nonce=0)
    with pytest.raises(LedgerDbError, match="uint256"):
        server_channel(session, deposit=2**256)


def test_data_survives_reopening_the_ledger(ledger_db_url: str) -> None:
    url = ledger_db_url
    first = db.open_ledger(url)
    with first.begin() as session:
        db.record_voucher(session, server_channel(session), voucher(1, BIG))
    first.close()
    second = db.open_ledger(url)
    with second.begin() as session:
        assert db.latest_voucher(session, CHAIN, CHANNELS, 1) == voucher(1, BIG)
    second.close()


def test_migrations_log_at_debug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Opening a ledger says nothing at INFO about its migrations; at DEBUG it lists them.
    Alembic's own logger is set too: a command run in-process before this test (its
    `setup_logging`) may have left it at WARNING, which would prove nothing."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="alembic")
    db.open_ledger(db.sqlite_url(tmp_path / "quiet.sqlite")).close()
    assert not [r for r in caplog.records if r.name.startswith("alembic")]
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="alembic")
    db.open_ledger(db.sqlite_url(tmp_path / "told.sqlite")).close()
    upgrades = [r for r in caplog.records if "Running upgrade" in r.getMessage()]
    assert upgrades and all(r.levelno == logging.DEBUG for r in upgrades)
