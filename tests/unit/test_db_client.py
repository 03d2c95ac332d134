"""A paying client's ledger records: receipts (valid, and invalid as evidence), what each
channel's server was paid for, and the client's channels."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from eth_utils import to_checksum_address

from ledger.db import (
    ChannelRole,
    ChannelStatus,
    Ledger,
    ReceiptStatus,
    advance_client_voucher,
    client_channels,
    get_channel,
    latest_voucher,
    open_ledger,
    receipts_of,
    record_receipt,
    record_voucher,
    restore_voucher,
    served_totals,
    upsert_channel,
)
from ledger.errors import LedgerDbError, VoucherError
from ledger.types import Leaf, Voucher, model_id

CONTRACT = "0x" + "cc" * 20
SERVER_A = "0x" + "aa" * 20
SERVER_B = "0x" + "ab" * 20
CLIENT = "0x" + "bb" * 20
CHAIN = 31337


@pytest.fixture
def ledger(ledger_db_url: str) -> Iterator[Ledger]:
    opened = open_ledger(ledger_db_url)
    yield opened
    opened.close()


def _leaf(step: int, tokens: int, span: tuple[int, int] = (0, 3)) -> Leaf:
    return Leaf(b"\x01" * 32, model_id("tiny"), *span, step, tokens, b"\x02" * 32, b"\x03" * 32,
                b"\x04" * 32, 1_767_225_600 + step)  # fmt: skip


def _record(db, server: str, channel: int, step: int, tokens: int, cost: int, **kw) -> None:  # noqa: ANN001
    record_receipt(
        db, chain_id=CHAIN, server=server, peer_id="12D3KooW" + "x" * 44, channel_id=channel,
        leaf=_leaf(step, tokens), signature=b"\x05" * 65, sent_hash=b"\x02" * 32,
        received_hash=b"\x03" * 32, cost=cost, **kw,
    )  # fmt: skip


def test_receipts_are_kept_as_received_and_invalid_ones_as_evidence(ledger: Ledger) -> None:
    with ledger.begin() as db:
        _record(db, SERVER_A, 1, 0, 7, 7 * 3000)
        _record(db, SERVER_A, 1, 1, 1, 3000)
        _record(db, SERVER_B, 2, 0, 7, 7 * 3000, problem="output_hash", detail="differs")
    with ledger.begin() as db:
        everything = receipts_of(db)
        evidence = receipts_of(db, status=ReceiptStatus.INVALID)
        of_a = receipts_of(db, server=SERVER_A)
    assert [r.step for r in everything] == [0, 1, 0]
    assert everything[0].to_leaf() == _leaf(0, 7)
    assert [r.issued_at for r in everything] == [1_767_225_600, 1_767_225_601, 1_767_225_600]
    assert [(r.server, r.problem, r.detail) for r in evidence] == [
        (to_checksum_address(SERVER_B), "output_hash", "differs")
    ]
    assert len(of_a) == 2 and all(r.status is ReceiptStatus.VALID for r in of_a)


def test_served_totals_sum_every_answered_step_per_channel(ledger: Ledger) -> None:
    big = 2**200  # amounts beyond 64 bits stay exact
    with ledger.begin() as db:
        _record(db, SERVER_A, 1, 0, 7, big)
        _record(db, SERVER_A, 1, 1, 1, big)
        _record(db, SERVER_B, 2, 0, 7, 21, problem="custody")  # paid, though the receipt is bad
    with ledger.begin() as db:
        totals = served_totals(db, CHAIN)
        assert served_totals(db, CHAIN + 1) == []
    assert [(t.channel_id, t.tokens, t.cost) for t in totals] == [(1, 8, 2 * big), (2, 7, 21)]


def test_bad_receipt_values_are_refused(ledger: Ledger) -> None:
    with ledger.begin() as db, pytest.raises(LedgerDbError, match="peer id"):
        record_receipt(
            db, chain_id=CHAIN, server=SERVER_A, peer_id="", channel_id=1, leaf=_leaf(0, 1),
            signature=b"\x05" * 65, sent_hash=b"\x02" * 32, received_hash=b"\x03" * 32, cost=1,
        )  # fmt: skip
    with ledger.begin() as db, pytest.raises(LedgerDbError, match="signature"):
        record_receipt(
            db, chain_id=CHAIN, server=SERVER_A, peer_id="p", channel_id=1, leaf=_leaf(0, 1),
            signature=b"\x05" * 64, sent_hash=b"\x02" * 32, received_hash=b"\x03" * 32, cost=1,
        )  # fmt: skip
    with ledger.begin() as db, pytest.raises(LedgerDbError, match="leaf issued at"):
        record_receipt(
            db, chain_id=CHAIN, server=SERVER_A, peer_id="p", channel_id=1,
            leaf=dataclasses.replace(_leaf(0, 1), issued_at=2**63), signature=b"\x05" * 65,
            sent_hash=b"\x02" * 32, received_hash=b"\x03" * 32, cost=1,
        )  # fmt: skip
    with ledger.begin() as db, pytest.raises(LedgerDbError, match="status"):
        receipts_of(db, status="maybe")


def test_client_channels_lists_only_this_clients_side(ledger: Ledger) -> None:
    with ledger.begin() as db:
        for channel_id, role, status in [
            (3, ChannelRole.CLIENT, ChannelStatus.OPEN),
            (1, ChannelRole.CLIENT, ChannelStatus.CLOSED),
            (2, ChannelRole.SERVER, ChannelStatus.OPEN),
        ]:
            upsert_channel(
                db, chain_id=CHAIN, contract=CONTRACT, channel_id=channel_id, role=role,
                client=CLIENT, server=SERVER_A, deposit=100, redeemed=0, expiry=10**9,
                status=status,
            )  # fmt: skip
    with ledger.begin() as db:
        assert [c.channel_id for c in client_channels(db, CHAIN, CONTRACT, CLIENT)] == [1, 3]
        opened = client_channels(db, CHAIN, CONTRACT, CLIENT, open_only=True)
        assert [c.channel_id for c in opened] == [3]
        assert client_channels(db, CHAIN, CONTRACT, SERVER_A) == []


def test_a_refused_voucher_is_taken_back_to_the_one_before(ledger: Ledger) -> None:
    first, refused = Voucher(3, 100, b"\x01" * 65), Voucher(3, 160, b"\x02" * 65)
    with ledger.begin() as db:
        row = upsert_channel(
            db, chain_id=CHAIN, contract=CONTRACT, channel_id=3, role=ChannelRole.CLIENT,
            client=CLIENT, server=SERVER_A, deposit=1000, redeemed=0, expiry=10**9,
        )  # fmt: skip
        record_voucher(db, row, first)
        record_voucher(db, row, refused)
        assert not restore_voucher(db, row, Voucher(3, 150, b"\x03" * 65), first)  # not held
        assert restore_voucher(db, row, refused, first)
    with ledger.begin() as db:
        assert latest_voucher(db, CHAIN, CONTRACT, 3) == first
        row = get_channel(db, CHAIN, CONTRACT, 3)
        assert row is not None
        record_voucher(db, row, Voucher(3, 160, b"\x04" * 65))  # the next step signs again
        assert restore_voucher(db, row, Voucher(3, 160, b"\x04" * 65), None)
        assert latest_voucher(db, CHAIN, CONTRACT, 3) is None
        held = Voucher(3, 170, b"\x06" * 65)
        record_voucher(db, row, held)
        with pytest.raises(LedgerDbError, match="below the refused"):
            restore_voucher(db, row, held, Voucher(3, 170, b"\x05" * 65))


def test_a_clients_voucher_advances_only_from_what_it_last_signed(ledger: Ledger) -> None:
    with ledger.begin() as db:
        upsert_channel(
            db, chain_id=CHAIN, contract=CONTRACT, channel_id=4, role=ChannelRole.CLIENT,
            client=CLIENT, server=SERVER_A, deposit=1000, redeemed=0, expiry=10**9,
        )  # fmt: skip
    key = dict(chain_id=CHAIN, contract=CONTRACT, channel_id=4)
    with ledger.begin() as db:
        advance_client_voucher(db, **key, voucher=Voucher(4, 100, b"\x01" * 65), held=0)
        advance_client_voucher(db, **key, voucher=Voucher(4, 1000, b"\x02" * 65), held=100)
    with ledger.begin() as db:
        assert latest_voucher(db, CHAIN, CONTRACT, 4) == Voucher(4, 1000, b"\x02" * 65)
    for voucher, held, words in [
        (Voucher(4, 1100, b"\x03" * 65), 100, "last voucher is 100"),  # the ledger holds 1000
        (Voucher(4, 1001, b"\x03" * 65), 1000, "deposit covers 1001"),
        (Voucher(4, 900, b"\x03" * 65), 1000, "not above"),
        (Voucher(5, 1100, b"\x03" * 65), 1000, "channel 5"),
    ]:
        channel = voucher.channel_id
        with ledger.begin() as db, pytest.raises(VoucherError, match=words):
            advance_client_voucher(
                db, chain_id=CHAIN, contract=CONTRACT, channel_id=channel, voucher=voucher,
                held=held,
            )  # fmt: skip
