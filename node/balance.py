"""Getting paid: checking each step's voucher before serving it, and redeeming vouchers.

Every step carries the client's cumulative voucher for its channel. `IncomingPayments.accept` checks,
in this order: the voucher is for the session's channel (WRONG_CHANNEL), its signature
recovers to the channel's client (BAD_VOUCHER), the channel exists on-chain, is to this node,
open and not about to expire (WRONG_CHANNEL), the amount is above the last accepted voucher
unless the step is free (REPLAYED_VOUCHER), covers everything the channel owes after this step
less the credit window (PAYMENT_BEHIND), and fits the deposit (PAYMENT_BEHIND). Channel reads
are cached and re-read when a voucher goes above the known deposit (the client may have topped
up). The voucher and the new amount owed are written to the ledger before the step's output is
sent (`Accepted.persisted`). `Redeemer` redeems the highest voucher per channel when it is
worth it and always some time before the channel expires.

The amount rules are the pure function `judge_amount`, so they can be read and tested alone.

A node the NodeRegistry no longer counts as active (its stake no longer covers its span, e.g.
after a slash) must not take money for service its stake does not back: while `suspend`ed,
`check_channel` and `accept` refuse every session, step and voucher with NODE_INACTIVE, before
anything is read or recorded, until `resume`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from ledger.chain import ChainError, ContractRevert
from ledger.contracts import Channel, PaymentChannels
from ledger.db import (
    ChannelRole,
    ChannelStatus,
    Ledger,
    channel_owed,
    get_channel,
    latest_voucher,
    record_served_voucher,
    record_voucher,
    redeemable_channels,
    set_owed,
    upsert_channel,
)
from ledger.eip712 import recover_voucher_signer
from ledger.errors import LedgerError, SignatureError
from ledger.types import ChannelId, Voucher, Wei
from ledger.units import TokenUnits
from node.protocol import ErrorCode, ProtocolError

logger = logging.getLogger(__name__)


def judge_amount(
    amount: int,
    *,
    owed_after: int,
    step_cost: int,
    last_accepted: int,
    credit: int,
    units: TokenUnits,
) -> None:
    """The voucher amount rules. `owed_after`: what the channel owes once this step is served;
    `last_accepted`: the highest voucher amount accepted before (0 if none); `units` say the
    amounts of a refusal in tokens (exactly: `TokenUnits.show` never rounds).

    A step that costs something needs a voucher strictly above the last one (else it is a
    replay) and at least `owed_after - credit`. A free step may repeat the last voucher."""
    if step_cost == 0 and amount == last_accepted:
        return
    if amount <= last_accepted:
        raise ProtocolError(
            ErrorCode.REPLAYED_VOUCHER,
            f"voucher for {units.show(amount)} is not above the {units.show(last_accepted)} "
            "already accepted on this channel; sign a new cumulative voucher",
        )
    needed = max(0, owed_after - credit)
    if amount < needed:
        raise ProtocolError(
            ErrorCode.PAYMENT_BEHIND,
            f"voucher for {units.show(amount)} is behind: after this step the channel owes "
            f"{units.show(owed_after)}, the node extends {units.show(credit)} of credit, so at "
            f"least {units.show(needed)} is needed",
        )


class ChainClock:
    """The chain's idea of now (seconds), without a request per question: the latest block's
    timestamp plus the wall time since it was read, never behind the wall clock."""

    def __init__(self, read_timestamp: Callable[[], int]) -> None:
        self._read = read_timestamp
        self._base = 0.0
        self._at = 0.0

    def refresh(self) -> None:
        """Re-read the latest block (blocking)."""
        self._base = float(self._read())
        self._at = time.time()

    def now(self) -> float:
        return max(time.time(), self._base + (time.time() - self._at))


@dataclass
class _ChannelBook:
    """What this node knows about one channel it serves."""

    owed: int  # cumulative Wei the client owes
    last_amount: int  # highest accepted voucher amount (0: none)
    last_signature: bytes | None
    onchain: Channel | None = None
    read_at: float = 0.0  # monotonic time of the last chain read
    lock: asyncio.Lock | None = None


@dataclass(frozen=True)
class Accepted:
    """A voucher that passed every check; `persisted` completes once it is in the ledger."""

    voucher: Voucher
    owed_after: int
    persisted: asyncio.Future[None]


class IncomingPayments:
    """Checks vouchers for the node's channels and records them (see the module doc)."""

    def __init__(
        self,
        channels: PaymentChannels,
        ledger: Ledger,
        *,
        node: str,
        chain_id: int,
        credit: int,
        units: TokenUnits,
        min_life: float,
        cache_ttl: float,
        clock: ChainClock,
        db_executor: Executor,
    ) -> None:
        self.channels = channels
        self.ledger = ledger
        self.node = node
        self.chain_id = chain_id
        self.contract = channels.address
        self.domain = channels.domain()
        self.credit = credit
        self.units = units  # the stake token, for refusals people read
        self.min_life = min_life
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._db = db_executor
        self._books: dict[int, _ChannelBook] = {}
        self._persisted: dict[int, Channel] = {}  # ledger thread only
        self._suspended: str | None = None  # why nothing is accepted now (None: serving)

    def suspend(self, reason: str) -> None:
        """Refuse every channel and voucher with NODE_INACTIVE, saying `reason`, until
        `resume` (the node is not staked to serve)."""
        self._suspended = reason

    def resume(self) -> None:
        """Accept channels and vouchers again."""
        self._suspended = None

    @property
    def suspended(self) -> bool:
        return self._suspended is not None

    def _refuse_if_suspended(self) -> None:
        if self._suspended is not None:
            raise ProtocolError(ErrorCode.NODE_INACTIVE, self._suspended)

    async def _book(self, channel_id: int) -> _ChannelBook:
        book = self._books.get(channel_id)
        if book is None:

            def load() -> tuple[int, Voucher | None]:
                with self.ledger.begin() as db:
                    return (
                        channel_owed(db, self.chain_id, self.contract, channel_id),
                        latest_voucher(db, self.chain_id, self.contract, channel_id),
                    )

            owed, voucher = await asyncio.get_running_loop().run_in_executor(self._db, load)
            book = self._books.get(channel_id)  # another step may have loaded it meanwhile
            if book is None:
                book = _ChannelBook(
                    owed=owed,
                    last_amount=voucher.cumulative_amount if voucher else 0,
                    last_signature=voucher.signature if voucher else None,
                    lock=asyncio.Lock(),
                )
                self._books[channel_id] = book
        return book

    async def _onchain(self, book: _ChannelBook, channel_id: int, min_deposit: int = 0) -> Channel:
        fresh = time.monotonic() - book.read_at < self.cache_ttl
        if book.onchain is not None and fresh and book.onchain.deposit >= min_deposit:
            return book.onchain

        def read() -> Channel:
            channel = self.channels.get_channel(ChannelId(channel_id))
            self.clock.refresh()
            return channel

        try:
            channel = await asyncio.to_thread(read)
        except ContractRevert as exc:
            raise ProtocolError(
                ErrorCode.WRONG_CHANNEL, f"channel {channel_id} does not exist on-chain ({exc})"
            ) from None
        except (ChainError, OSError) as exc:
            logger.warning("cannot read channel %d: %s", channel_id, exc)
            raise ProtocolError(ErrorCode.INTERNAL, "the node cannot reach the chain") from None
        book.onchain, book.read_at = channel, time.monotonic()
        return channel

    def _check_usable(self, channel: Channel) -> None:
        if channel.server != self.node:
            raise ProtocolError(
                ErrorCode.WRONG_CHANNEL,
                f"channel {channel.channel_id} pays {channel.server}, not this node {self.node}",
            )
        if channel.closed:
            raise ProtocolError(ErrorCode.WRONG_CHANNEL, f"channel {channel.channel_id} is closed")
        left = channel.expiry - self.clock.now()
        if left < self.min_life:
            raise ProtocolError(
                ErrorCode.WRONG_CHANNEL,
                f"channel {channel.channel_id} expires in {max(left, 0):.0f} s; this node needs "
                f"at least {self.min_life:.0f} s left (top up with a later expiry)",
            )

    async def check_channel(self, channel_id: int) -> Channel:
        """The channel a session will pay through, checked usable (WRONG_CHANNEL if not;
        NODE_INACTIVE while suspended)."""
        self._refuse_if_suspended()
        book = await self._book(channel_id)
        channel = await self._onchain(book, channel_id)
        self._check_usable(channel)
        return channel

    async def accept(
        self, *, channel_id: int, voucher: Voucher, step_cost: int, client: str
    ) -> Accepted:
        """Check `voucher` for a step costing `step_cost` on `channel_id` (whose client is
        `client`) and start writing it to the ledger; `ProtocolError` with the reason if it is
        refused (then nothing changed)."""
        self._refuse_if_suspended()
        if voucher.channel_id != channel_id:
            raise ProtocolError(
                ErrorCode.WRONG_CHANNEL,
                f"voucher is for channel {voucher.channel_id}, the session pays through "
                f"channel {channel_id}",
            )
        try:
            signer = recover_voucher_signer(self.domain, voucher, voucher.signature)
        except (SignatureError, LedgerError) as exc:
            raise ProtocolError(ErrorCode.BAD_VOUCHER, f"voucher signature: {exc}") from None
        if signer != client:
            raise ProtocolError(
                ErrorCode.BAD_VOUCHER,
                f"voucher is signed by {signer}, not by the channel's client {client}",
            )
        book = await self._book(channel_id)
        assert book.lock is not None
        async with book.lock:
            owed_after = book.owed + step_cost
            judge_amount(
                voucher.cumulative_amount,
                owed_after=owed_after,
                step_cost=step_cost,
                last_accepted=book.last_amount,
                credit=self.credit,
                units=self.units,
            )
            channel = await self._onchain(book, channel_id, voucher.cumulative_amount)
            self._check_usable(channel)
            if voucher.cumulative_amount > channel.deposit:
                raise ProtocolError(
                    ErrorCode.PAYMENT_BEHIND,
                    f"voucher for {self.units.show(voucher.cumulative_amount)} exceeds channel "
                    f"{channel_id}'s deposit {self.units.show(channel.deposit)}; top the "
                    "channel up",
                )
            if max(0, owed_after - self.credit) > channel.deposit:
                raise ProtocolError(
                    ErrorCode.PAYMENT_BEHIND,
                    f"channel {channel_id}'s deposit {self.units.show(channel.deposit)} cannot "
                    f"cover the {self.units.show(owed_after)} owed after this step; top the "
                    "channel up",
                )
            new_voucher = voucher.cumulative_amount != book.last_amount
            book.owed = owed_after
            if new_voucher:
                book.last_amount = voucher.cumulative_amount
                book.last_signature = voucher.signature
            # a task: the write reaches the ledger thread on the loop's next turn, after the
            # caller (which does not await in between) has handed the step to the compute
            # thread, so the step starts without waiting for the GIL behind the write;
            # tasks start in order, so one channel's writes stay in the order accepted
            persisted = asyncio.ensure_future(
                self._persist_in_thread(channel, voucher if new_voucher else None, owed_after)
            )
        return Accepted(voucher=voucher, owed_after=owed_after, persisted=persisted)

    async def _persist_in_thread(
        self, channel: Channel, voucher: Voucher | None, owed: int
    ) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._db, self._persist, channel, voucher, owed
        )

    def _persist(self, channel: Channel, voucher: Voucher | None, owed: int) -> None:
        if self._persisted.get(channel.channel_id) == channel:
            # the common case: the channel's on-chain state is recorded; two UPDATEs
            with self.ledger.engine.begin() as connection:
                if record_served_voucher(
                    connection,
                    chain_id=self.chain_id,
                    contract=self.contract,
                    channel_id=channel.channel_id,
                    voucher_amount=voucher.cumulative_amount if voucher else None,
                    voucher_signature=voucher.signature if voucher else None,
                    owed=owed,
                ):
                    return
        with self.ledger.begin() as db:
            row = upsert_channel(
                db,
                chain_id=self.chain_id,
                contract=self.contract,
                channel_id=channel.channel_id,
                role=ChannelRole.SERVER,
                client=channel.client,
                server=channel.server,
                deposit=channel.deposit,
                redeemed=channel.redeemed,
                expiry=channel.expiry,
                status=ChannelStatus.CLOSED if channel.closed else ChannelStatus.OPEN,
            )
            if voucher is not None:
                record_voucher(db, row, voucher)
            set_owed(db, self.chain_id, self.contract, channel.channel_id, owed)
        self._persisted[channel.channel_id] = channel  # the on-chain state now in the ledger


@dataclass(frozen=True)
class Redemption:
    """One voucher redeemed on-chain."""

    channel_id: int
    amount: int  # the voucher's cumulative amount
    paid: int  # what this redemption paid (amount - redeemed before)
    tx_hash: str


class Redeemer:
    """Redeems the highest voucher of each channel this node serves (blocking; run it in a
    worker thread). Transactions are recorded in the ledger by the sender."""

    def __init__(
        self,
        channels: PaymentChannels,
        ledger: Ledger,
        *,
        chain_id: int,
        min_amount: int,
        margin: float,
        clock: ChainClock,
        units: TokenUnits,
    ) -> None:
        self.channels = channels
        self.ledger = ledger
        self.chain_id = chain_id
        self.min_amount = min_amount
        self.margin = margin
        self.clock = clock
        self.units = units  # the stake token, for the log

    def redeem_due(self, *, everything: bool = False) -> list[Redemption]:
        """Redeem each channel whose held voucher adds at least `min_amount`, or whose expiry is
        within `margin`; with `everything`, every voucher above what was redeemed."""
        self.clock.refresh()
        now = self.clock.now()
        with self.ledger.begin() as db:
            due = [
                (c.channel_id, Voucher(c.channel_id, c.voucher_amount, c.voucher_signature or b""))
                for c in redeemable_channels(db, self.chain_id, self.channels.address)
                if c.expiry > now
                and (
                    everything
                    or c.voucher_amount - c.redeemed >= max(self.min_amount, 1)
                    or c.expiry - now <= self.margin
                )
            ]
        done: list[Redemption] = []
        for channel_id, voucher in due:
            try:
                before = self.channels.get_channel(ChannelId(channel_id))
                if voucher.cumulative_amount <= before.redeemed:
                    self._refresh(before)
                    continue
                result = self.channels.redeem_voucher(voucher)
                after = self.channels.get_channel(ChannelId(channel_id))
                self._refresh(after)
            except (ChainError, LedgerError, OSError) as exc:
                logger.warning("redeeming channel %d failed: %s", channel_id, exc)
                continue
            paid = Wei(after.redeemed - before.redeemed)
            logger.info(
                "redeemed channel %d: voucher %s, paid %s (tx %s)",
                channel_id,
                self.units.show(voucher.cumulative_amount),
                self.units.exact(paid),
                result.tx_hash,
            )
            done.append(Redemption(channel_id, voucher.cumulative_amount, paid, result.tx_hash))
        return done

    def _refresh(self, channel: Channel) -> None:
        with self.ledger.begin() as db:
            row = get_channel(db, self.chain_id, self.channels.address, channel.channel_id)
            if row is None:
                return
            upsert_channel(
                db,
                chain_id=self.chain_id,
                contract=self.channels.address,
                channel_id=channel.channel_id,
                role=ChannelRole.SERVER,
                client=channel.client,
                server=channel.server,
                deposit=channel.deposit,
                redeemed=channel.redeemed,
                expiry=channel.expiry,
                status=ChannelStatus.CLOSED if channel.closed else ChannelStatus.OPEN,
            )
