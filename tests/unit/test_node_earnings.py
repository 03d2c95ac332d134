"""What a node earned per channel: the chain's side and the vouchers its ledger holds."""

from __future__ import annotations

from ledger.contracts import Channel
from ledger.types import Address, ChannelId, Wei
from node.earnings import node_earnings

CLIENT = Address("0x" + "22" * 20)
SERVER = Address("0x" + "33" * 20)
NOW = 1_800_000_000


def channel(channel_id: int, *, deposit: int, redeemed: int, expiry: int, closed: bool = False):  # noqa: ANN201
    return Channel(
        channel_id=ChannelId(channel_id),
        client=CLIENT,
        server=SERVER,
        deposit=Wei(deposit),
        redeemed=Wei(redeemed),
        expiry=expiry,
        closed=closed,
    )


def test_owed_is_the_latest_voucher_minus_what_was_redeemed() -> None:
    report = node_earnings(
        [
            channel(2, deposit=100, redeemed=30, expiry=NOW + 60),
            channel(1, deposit=50, redeemed=0, expiry=NOW + 60),
        ],
        {2: 45, 1: 10},
        NOW,
    )
    assert [row.channel.channel_id for row in report.channels] == [1, 2]
    assert [row.owed for row in report.channels] == [10, 15]
    assert (report.deposit, report.redeemed, report.owed, report.lost) == (150, 30, 25, 0)


def test_after_the_expiry_what_was_not_redeemed_is_lost_not_owed() -> None:
    expired = channel(1, deposit=100, redeemed=30, expiry=NOW)
    reclaimed = channel(2, deposit=100, redeemed=0, expiry=NOW - 10, closed=True)
    report = node_earnings([expired, reclaimed], {1: 40, 2: 5}, NOW)
    assert [row.state for row in report.channels] == ["expired", "closed"]
    assert (report.owed, report.lost) == (0, 15)


def test_without_the_ledger_owed_is_unknown() -> None:
    report = node_earnings([channel(1, deposit=100, redeemed=30, expiry=NOW + 60)], None, NOW)
    assert report.channels[0].owed is None and report.owed is None
    assert report.redeemed == 30  # the chain's side is still known


def test_a_channel_without_a_voucher_owes_nothing() -> None:
    report = node_earnings([channel(1, deposit=100, redeemed=0, expiry=NOW + 60)], {}, NOW)
    assert report.owed == 0
