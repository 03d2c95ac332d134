"""What a node earned: per payment channel where it is the server, what the chain paid it and
what its vouchers still owe it.

The chain knows each channel's deposit, what the server redeemed and the expiry; only the
node's ledger knows the latest voucher the client signed. A channel's `owed` is that voucher
minus what was redeemed: redeemable until the expiry (`PaymentChannels.redeem` reverts from
then on and the client reclaims the rest), lost after it. Without the node's ledger the owed
amounts are unknown (None), never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ledger.contracts import Channel


@dataclass(frozen=True)
class ChannelEarnings:
    """One channel to this node: the chain's record and the node's latest voucher."""

    channel: Channel
    voucher: int | None  # the latest voucher's cumulative amount (None: no ledger)
    now: int  # chain time (unix seconds) of the reading

    @property
    def state(self) -> str:
        """ "open" (redeemable), "expired" (past its expiry) or "closed" (reclaimed)."""
        if self.channel.closed:
            return "closed"
        return "expired" if self.now >= self.channel.expiry else "open"

    @property
    def unpaid(self) -> int | None:
        """Signed for but not redeemed (None: unknown without the ledger)."""
        if self.voucher is None:
            return None
        return max(0, self.voucher - self.channel.redeemed)

    @property
    def owed(self) -> int | None:
        """What the node can still redeem: `unpaid` while the channel is open, else 0."""
        unpaid = self.unpaid
        if unpaid is None:
            return None
        return unpaid if self.state == "open" else 0

    @property
    def lost(self) -> int | None:
        """Signed for but past redemption (the channel expired or was reclaimed first)."""
        unpaid = self.unpaid
        if unpaid is None:
            return None
        return 0 if self.state == "open" else unpaid


@dataclass(frozen=True)
class EarningsReport:
    """Every channel to one node and the totals."""

    channels: tuple[ChannelEarnings, ...]
    ledger_read: bool  # False: owed amounts are unknown

    @property
    def deposit(self) -> int:
        return sum(c.channel.deposit for c in self.channels)

    @property
    def redeemed(self) -> int:
        return sum(c.channel.redeemed for c in self.channels)

    @property
    def owed(self) -> int | None:
        return _total([c.owed for c in self.channels]) if self.ledger_read else None

    @property
    def lost(self) -> int | None:
        return _total([c.lost for c in self.channels]) if self.ledger_read else None


def _total(amounts: Sequence[int | None]) -> int:
    return sum(a for a in amounts if a is not None)


def node_earnings(
    channels: Sequence[Channel], vouchers: Mapping[int, int] | None, now: int
) -> EarningsReport:
    """Pure: the report for `channels` (on-chain, this node the server) given the node's
    `vouchers` by channel id (None: no ledger; a channel missing there had no voucher, 0) at
    chain time `now`."""
    rows = tuple(
        ChannelEarnings(
            channel=channel,
            voucher=None if vouchers is None else vouchers.get(int(channel.channel_id), 0),
            now=now,
        )
        for channel in sorted(channels, key=lambda c: c.channel_id)
    )
    return EarningsReport(channels=rows, ledger_read=vouchers is not None)
