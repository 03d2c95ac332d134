"""The serving node's ledger records: session ids once ever, stored inputs and their expiry,
what channels owe, earnings and commitment counts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ledger.db import (
    ChannelRole,
    ChannelUsage,
    Ledger,
    SessionReusedError,
    add_leaf,
    add_served_steps,
    channel_owed,
    claim_session,
    commitment_counts,
    delete_inputs,
    expired_input_spans,
    latest_voucher,
    mark_batch_committed,
    open_ledger,
    pending_leaves,
    record_input,
    record_served_voucher,
    record_voucher,
    seal_batch,
    server_earnings,
    session_inputs,
    set_owed,
    upsert_channel,
)
from ledger.db.columns import utcnow
from ledger.errors import LedgerDbError
from ledger.types import Leaf, Voucher, model_id

CONTRACT = "0x" + "cc" * 20
NODE = "0x" + "aa" * 20
CLIENT = "0x" + "bb" * 20


@pytest.fixture
def ledger(ledger_db_url: str) -> Iterator[Ledger]:
    opened = open_ledger(ledger_db_url)
    yield opened
    opened.close()


def _leaf(session_id: bytes, step: int) -> Leaf:
    return Leaf(
        session_id, model_id("m"), 0, 2, step, 1, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, 1_000
    )


def test_a_session_id_is_claimed_once_ever(ledger: Ledger) -> None:
    with ledger.begin() as s:
        claim_session(s, session_id=b"\x05" * 32, channel_id=1, span_start=0, span_end=2)
    with pytest.raises(SessionReusedError, match="already served"), ledger.begin() as s:
        claim_session(s, session_id=b"\x05" * 32, channel_id=2, span_start=2, span_end=4)
    with pytest.raises(LedgerDbError, match="empty"), ledger.begin() as s:
        claim_session(s, session_id=b"\x06" * 32, channel_id=1, span_start=2, span_end=2)


def test_inputs_expire_only_when_every_leaf_of_the_span_left_its_window(ledger: Ledger) -> None:
    old, fresh = b"\x0a" * 32, b"\x0b" * 32
    with ledger.begin() as s:
        for sid in (old, fresh):
            for step in range(2):
                record_input(
                    s,
                    session_id=sid,
                    span_start=0,
                    span_end=2,
                    step=step,
                    path=f"{sid.hex()}/{step}",
                )
                add_leaf(s, _leaf(sid, step), b"\x1b" * 65)
        batch = seal_batch(s, pending_leaves(s), node=NODE)
        mark_batch_committed(s, batch, chain_batch_id=1, tx_hash=b"\x09" * 32)
        add_leaf(s, _leaf(fresh, 2), b"\x1b" * 65)  # pending: the fresh span must stay
        record_input(s, session_id=fresh, span_start=0, span_end=2, step=2, path="f/2")
        # no leaf at all (commitments off): expires by age
        record_input(s, session_id=b"\x0c" * 32, span_start=0, span_end=2, step=0, path="c/0")
    later = utcnow() + timedelta(seconds=10)
    with ledger.begin() as s:
        expired = expired_input_spans(s, committed_before=later, unused_before=later)
        assert set(expired) == {(old, 0, 2), (b"\x0c" * 32, 0, 2)}
        earlier = utcnow() - timedelta(seconds=10)
        assert expired_input_spans(s, committed_before=earlier, unused_before=earlier) == []
        assert [r.step for r in session_inputs(s, old, 0, 2, up_to_step=1)] == [0, 1]
        assert sorted(delete_inputs(s, old, 0, 2)) == [f"{old.hex()}/0", f"{old.hex()}/1"]
        assert session_inputs(s, old, 0, 2, up_to_step=1) == []


def test_owed_accumulates_and_never_drops(ledger: Ledger) -> None:
    with ledger.begin() as s:
        assert channel_owed(s, 1, CONTRACT, 3) == 0
        set_owed(s, 1, CONTRACT, 3, 10**30)
        assert channel_owed(s, 1, CONTRACT, 3) == 10**30
    with pytest.raises(LedgerDbError, match="cannot drop"), ledger.begin() as s:
        set_owed(s, 1, CONTRACT, 3, 5)


def test_owed_read_before_a_higher_amount_was_committed_cannot_lower_it(ledger: Ledger) -> None:
    with ledger.begin() as s:
        set_owed(s, 1, CONTRACT, 3, 100)
    with pytest.raises(LedgerDbError, match="cannot drop from 300 to 200"), ledger.begin() as late:
        (read,) = late.scalars(select(ChannelUsage)).all()  # kept: the session's copy
        assert read.owed == 100  # as read here
        with ledger.begin() as first:
            set_owed(first, 1, CONTRACT, 3, 300)
        set_owed(late, 1, CONTRACT, 3, 200)
    with ledger.begin() as s:
        assert channel_owed(s, 1, CONTRACT, 3) == 300


def test_earnings_and_commitment_counts(ledger: Ledger) -> None:
    with ledger.begin() as s:
        channel = upsert_channel(
            s,
            chain_id=1,
            contract=CONTRACT,
            channel_id=1,
            role=ChannelRole.SERVER,
            client=CLIENT,
            server=NODE,
            deposit=1000,
            redeemed=100,
            expiry=2**40,
        )
        record_voucher(s, channel, Voucher(1, 300, b"\x01" * 65))
        add_leaf(s, _leaf(b"\x0d" * 32, 0), b"\x1b" * 65)
    with ledger.begin() as s:
        earnings = server_earnings(s, 1, CONTRACT)
        assert (earnings.redeemed, earnings.unredeemed, earnings.channels) == (100, 200, 1)
        counts = commitment_counts(s)
        assert (counts.pending_leaves, counts.committed_leaves) == (1, 0)


def test_the_per_step_voucher_write_only_raises_what_is_held(ledger: Ledger) -> None:
    key = {"chain_id": 1, "contract": CONTRACT, "channel_id": 2}
    with ledger.begin() as s:  # nothing recorded yet: the caller takes the full path
        assert not record_served_voucher(
            s, **key, voucher_amount=5, voucher_signature=b"\x01" * 65, owed=5
        )
        upsert_channel(
            s, **key, role=ChannelRole.SERVER, client=CLIENT, server=NODE,
            deposit=100, redeemed=0, expiry=2**40,
        )  # fmt: skip
        set_owed(s, 1, CONTRACT, 2, 0)
    with ledger.begin() as s:
        assert record_served_voucher(
            s, **key, voucher_amount=40, voucher_signature=b"\x02" * 65, owed=40
        )
        assert record_served_voucher(s, **key, voucher_amount=None, voucher_signature=None, owed=45)
    with ledger.begin() as s:
        held = latest_voucher(s, 1, CONTRACT, 2)
        assert held is not None and held.cumulative_amount == 40
        assert channel_owed(s, 1, CONTRACT, 2) == 45
    for amount in (40, 101):  # not above the held one; above the deposit
        with pytest.raises(LedgerDbError), ledger.begin() as s:
            record_served_voucher(
                s, **key, voucher_amount=amount, voucher_signature=b"\x03" * 65, owed=500
            )


def test_served_steps_are_stored_in_one_go_and_a_filled_slot_refuses_the_group(
    ledger: Ledger,
) -> None:
    sid = b"\x0e" * 32
    steps = [(_leaf(sid, i), b"\x1b" * 65, f"{i}.safetensors") for i in range(3)]
    with ledger.engine.begin() as connection:
        add_served_steps(connection, steps)
    with ledger.begin() as s:
        assert [r.step for r in pending_leaves(s)] == [0, 1, 2]
        assert [r.path for r in session_inputs(s, sid, 0, 2, up_to_step=2)] == [
            "0.safetensors",
            "1.safetensors",
            "2.safetensors",
        ]
    with pytest.raises(IntegrityError), ledger.engine.begin() as connection:
        add_served_steps(connection, steps[2:])
