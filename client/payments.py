"""Paying servers: one payment channel per server, opened lazily, and a cumulative EIP-712
voucher per step, within the user's budget.

- A channel to a server is opened the first time a route uses it (one `open` transaction;
  the PaymentChannels contract is approved once for the wallet, when its allowance falls
  short). Its deposit is sized by `deposit_for`: room for several full sessions at the server's
  price, never more than the budget left. It is topped up (one transaction) when a voucher would
  exceed the deposit or the expiry comes closer than `min_life`.
- Every step signs, per server, a voucher for the channel's cumulative amount so far plus the
  step's cost, and records it in the ledger BEFORE it is sent (a server may redeem any voucher
  it got, so what was signed counts as spent). A restarted client continues each channel and
  its cumulative amount from the ledger.
- `Budget` refuses a step (`BudgetExceededError`) before anything is signed when its cost
  would take the spending of this client past the budget.

Chain and ledger calls block; the client calls them from its own (caller) thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount

from client.errors import BudgetExceededError, PaymentError
from ledger.chain import ChainError, ContractRevert, TransactionTimeout, TxResult
from ledger.contracts import Channel, Contracts
from ledger.db import (
    ChannelRole,
    ChannelStatus,
    Ledger,
    advance_client_voucher,
    client_channels,
    get_channel,
    open_channel_to,
    restore_voucher,
    upsert_channel,
)
from ledger.eip712 import Domain, sign_voucher
from ledger.errors import VoucherError
from ledger.types import ChannelId, Voucher, Wei
from ledger.units import TokenUnits, format_time
from node.balance import ChainClock

logger = logging.getLogger(__name__)

UINT256_MAX = 2**256 - 1
# A new channel's deposit covers this many full sessions at the server's price (fewer top-ups),
# unless the budget left is smaller.
DEPOSIT_SESSIONS = 8


def transact(what: str, send: Callable[[], TxResult]) -> TxResult:
    """Send a transaction, once more if the node refused it outright: the sender then re-reads
    the wallet's nonce, which another process using the same wallet may have taken."""
    try:
        return send()
    except (ContractRevert, TransactionTimeout):
        raise
    except ChainError as exc:
        logger.info("%s was refused (%s); sending it again", what, exc)
        return send()


def deposit_for(
    *, price_per_token: int, session_tokens: int, budget_left: int | None, at_least: int = 0
) -> int:
    """The deposit of a new channel (or a top-up) to a server charging `price_per_token`, for
    sessions of `session_tokens` tokens (batch x max length): `DEPOSIT_SESSIONS` such sessions,
    at most `budget_left` (None: no budget), at least `at_least` and at least 1 (the contract
    refuses empty deposits)."""
    if min(price_per_token, session_tokens, at_least) < 0:
        raise ValueError("prices, token counts and amounts are never negative")
    wanted = price_per_token * session_tokens * DEPOSIT_SESSIONS
    if budget_left is not None:
        wanted = min(wanted, budget_left)
    return max(wanted, at_least, 1)


@dataclass
class Budget:
    """What this client may still spend: `limit` (None: no cap) less what it signed."""

    limit: int | None  # base units
    units: TokenUnits  # the stake token, to say what a refused step costs
    spent: int = 0  # base units

    @property
    def left(self) -> int | None:
        return None if self.limit is None else self.limit - self.spent

    def check(self, cost: int, what: str) -> None:
        """`BudgetExceededError` if spending `cost` more (for `what`) passes the limit."""
        left = self.left
        if left is not None and cost > left:
            show = self.units.show
            raise BudgetExceededError(
                f"{what} would cost {show(cost)}, but only {show(left)} of the budget of "
                f"{show(self.limit or 0)} is left ({show(self.spent)} spent): stopped before "
                "overspending; raise the budget to go on",
                needed=cost,
                left=left,
            )

    def spend(self, cost: int) -> None:
        self.spent += cost


@dataclass
class ClientChannel:
    """A channel this client pays a server through, as this client knows it."""

    channel_id: int
    server: str
    deposit: int  # escrowed so far (Wei)
    redeemed: int  # paid out to the server on-chain so far (as last read)
    expiry: int  # unix seconds
    signed: int  # cumulative amount of the highest voucher signed
    voucher: Voucher | None = None  # that voucher, if any
    signed_now: int = 0  # signed on it by this client object (this run)
    opened_now: bool = False  # opened by this client object


@dataclass(frozen=True)
class Reclaimed:
    channel_id: int
    server: str
    refunded: int  # Wei back to the client
    tx_hash: str


@dataclass
class Payments:
    """The client's channels, vouchers and budget (see the module doc)."""

    contracts: Contracts  # with the client's sender
    ledger: Ledger
    account: LocalAccount
    chain_id: int
    budget: Budget
    units: TokenUnits  # the stake token, for what people read (logs, errors)
    channel_life: int = 86_400  # seconds a new or extended channel runs
    min_life: int = 1_800  # extend a channel's expiry when less than this is left
    clock: ChainClock = field(init=False)
    domain: Domain = field(init=False)
    _channels: dict[str, ClientChannel] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.clock = ChainClock(self.contracts.payment_channels.chain.timestamp)
        self.domain = self.contracts.payment_channels.domain()
        if self.min_life >= self.channel_life:
            raise ValueError("a channel's life must exceed the minimum life left it is kept at")

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def contract(self) -> str:
        return self.contracts.payment_channels.address

    # --- channels --------------------------------------------------------------------------

    def channel(self, server: str, *, price_per_token: int, session_tokens: int) -> ClientChannel:
        """The channel to `server`, ready for a session of `session_tokens` tokens at
        `price_per_token`: the one this client already uses, else the open one in the ledger
        (checked on-chain), else a new one. `PaymentError` if none can be had."""
        known = self._channels.get(server)
        if known is not None:
            return known
        self.clock.refresh()  # the chain's time decides whether a channel is still usable
        with self.ledger.begin() as db:
            row = open_channel_to(db, self.chain_id, self.contract, server)
            found = (
                None
                if row is None
                else ClientChannel(
                    channel_id=row.channel_id,
                    server=row.server,
                    deposit=row.deposit,
                    redeemed=row.redeemed,
                    expiry=row.expiry,
                    signed=row.voucher_amount,
                    voucher=(
                        Voucher(row.channel_id, row.voucher_amount, row.voucher_signature)
                        if row.voucher_signature
                        else None
                    ),
                )
            )
        if found is not None:
            onchain = self._read(found.channel_id)
            self._store(onchain)
            if onchain.closed or onchain.client != self.address:
                found = None
            else:
                found.deposit, found.redeemed, found.expiry = (
                    onchain.deposit,
                    onchain.redeemed,
                    onchain.expiry,
                )
                if self.clock.now() >= onchain.expiry:
                    found = None  # expired: reclaim it later, pay through a new one
        if found is None:
            deposit = deposit_for(
                price_per_token=price_per_token,
                session_tokens=session_tokens,
                budget_left=self.budget.left,
            )
            found = self._open(server, deposit)
        self._channels[server] = found
        logger.info(
            "paying %s through channel %d (deposit %s, signed %s)",
            server,
            found.channel_id,
            self.units.show(found.deposit),
            self.units.show(found.signed),
        )
        return found

    def _read(self, channel_id: int) -> Channel:
        try:
            return self.contracts.payment_channels.get_channel(ChannelId(channel_id))
        except (ChainError, OSError) as exc:
            raise PaymentError(f"cannot read channel {channel_id} on-chain: {exc}") from exc

    def _store(self, channel: Channel) -> None:
        with self.ledger.begin() as db:
            upsert_channel(
                db,
                chain_id=self.chain_id,
                contract=self.contract,
                channel_id=channel.channel_id,
                role=ChannelRole.CLIENT,
                client=channel.client,
                server=channel.server,
                deposit=channel.deposit,
                redeemed=channel.redeemed,
                expiry=channel.expiry,
                status=ChannelStatus.CLOSED if channel.closed else ChannelStatus.OPEN,
            )

    def _ensure_funds(self, amount: int, what: str) -> None:
        token = self.contracts.token
        balance = token.balance_of(self.address)
        if balance < amount:
            raise PaymentError(
                f"{what} needs {self.units.show(amount)}, the wallet {self.address} holds "
                f"{self.units.show(balance)}"
            )
        channels = self.contracts.payment_channels.address
        if token.allowance(self.address, channels) < amount:
            # once per wallet: the channels contract pulls only what this wallet opens or tops up
            result = transact(
                "approving the channels contract",
                lambda: token.approve(channels, Wei(UINT256_MAX)),
            )
            logger.info("approved the PaymentChannels contract (tx %s)", result.tx_hash)

    def _expiry(self) -> int:
        self.clock.refresh()
        life = min(self.channel_life, self.contracts.payment_channels.max_duration())
        return int(self.clock.now()) + life

    def _open(self, server: str, deposit: int) -> ClientChannel:
        channels = self.contracts.payment_channels
        try:
            self._ensure_funds(deposit, f"a channel to {server}")
            expiry = self._expiry()
            result = transact(
                f"opening a channel to {server}",
                lambda: channels.open(server, Wei(deposit), expiry),
            )
            channel_id = channels.opened_channel_id(result)
            onchain = channels.get_channel(channel_id)
        except ContractRevert as exc:
            raise PaymentError(
                f"opening a channel to {server} reverted: {exc.describe(self.units)}"
            ) from exc
        except (ChainError, OSError) as exc:
            raise PaymentError(f"opening a channel to {server} failed: {exc}") from exc
        self._store(onchain)
        logger.info(
            "opened channel %d to %s: deposit %s until %s (tx %s)",
            channel_id,
            server,
            self.units.show(deposit),
            format_time(onchain.expiry),
            result.tx_hash,
        )
        return ClientChannel(
            channel_id=channel_id,
            server=onchain.server,
            deposit=onchain.deposit,
            redeemed=onchain.redeemed,
            expiry=onchain.expiry,
            signed=0,
            opened_now=True,
        )

    def _top_up(self, channel: ClientChannel, amount: int) -> None:
        channels = self.contracts.payment_channels
        try:
            if amount:
                self._ensure_funds(amount, f"topping up channel {channel.channel_id}")
            expiry = max(channel.expiry, self._expiry())
            result = transact(
                f"topping up channel {channel.channel_id}",
                lambda: channels.top_up(ChannelId(channel.channel_id), Wei(amount), expiry),
            )
            onchain = channels.get_channel(ChannelId(channel.channel_id))
        except ContractRevert as exc:
            raise PaymentError(
                f"topping up channel {channel.channel_id} reverted: {exc.describe(self.units)}"
            ) from exc
        except (ChainError, OSError) as exc:
            raise PaymentError(f"topping up channel {channel.channel_id} failed: {exc}") from exc
        self._store(onchain)
        channel.deposit, channel.redeemed, channel.expiry = (
            onchain.deposit,
            onchain.redeemed,
            onchain.expiry,
        )
        logger.info(
            "topped up channel %d by %s: deposit %s until %s (tx %s)",
            channel.channel_id,
            self.units.show(amount),
            self.units.show(onchain.deposit),
            format_time(onchain.expiry),
            result.tx_hash,
        )

    def ensure_room(
        self, channel: ClientChannel, cost: int, *, price_per_token: int, session_tokens: int
    ) -> None:
        """Top the channel up when a voucher `cost` higher would exceed its deposit, or when it
        runs out sooner than `min_life` (one transaction for both)."""
        shortfall = max(0, channel.signed + cost - channel.deposit)
        amount = 0
        if shortfall:
            amount = deposit_for(
                price_per_token=price_per_token,
                session_tokens=session_tokens,
                budget_left=self.budget.left,
                at_least=shortfall,
            )
        if amount or channel.expiry - self.clock.now() < self.min_life:
            self._top_up(channel, amount)

    # --- vouchers --------------------------------------------------------------------------

    def pay(self, channel: ClientChannel, cost: int) -> Voucher:
        """The voucher for one more step costing `cost` on `channel`: cumulative, signed, and
        recorded in the ledger before it is returned (to be sent). `BudgetExceededError` (and
        nothing signed) when the budget cannot pay it; the caller made room (`ensure_room`)."""
        if cost < 0:
            raise ValueError("a step never costs less than nothing")
        self.budget.check(cost, f"paying {channel.server} for a step")
        if cost == 0 and channel.voucher is not None:
            return channel.voucher  # a free step may repeat the last voucher
        amount = channel.signed + cost
        if amount > channel.deposit:
            raise PaymentError(
                f"channel {channel.channel_id} holds {self.units.show(channel.deposit)}, a "
                f"voucher for {self.units.show(amount)} would exceed it"
            )
        unsigned = Voucher(channel.channel_id, amount)
        voucher = Voucher(
            channel.channel_id, amount, sign_voucher(self.domain, unsigned, self.account)
        )
        if amount > channel.signed:  # (a first free step signs 0 and stores nothing)
            try:
                with self.ledger.begin() as db:
                    advance_client_voucher(
                        db,
                        chain_id=self.chain_id,
                        contract=self.contract,
                        channel_id=channel.channel_id,
                        voucher=voucher,
                        held=channel.signed,
                    )
            except VoucherError as exc:
                raise PaymentError(f"cannot record the voucher: {exc}") from exc
        channel.signed = amount
        channel.voucher = voucher
        channel.signed_now += cost
        self.budget.spend(cost)
        return voucher

    def refused(self, channel: ClientChannel, voucher: Voucher, previous: Voucher | None) -> None:
        """The server refused `voucher` (signed by `pay` after `previous`) before accepting it:
        it never held it, so the channel goes back to `previous` and the budget gets the
        difference back. (A dishonest server keeping it gains nothing: the next voucher of
        the same amount is the same voucher, signatures being deterministic.)"""
        before = 0 if previous is None else previous.cumulative_amount
        cost = voucher.cumulative_amount - before
        if channel.voucher != voucher or cost <= 0:
            return
        with self.ledger.begin() as db:
            row = get_channel(db, self.chain_id, self.contract, channel.channel_id)
            if row is not None:
                restore_voucher(db, row, voucher, previous)
        channel.signed -= cost
        channel.voucher = previous
        channel.signed_now -= cost
        self.budget.spent -= cost

    # --- listing and reclaiming ------------------------------------------------------------

    def known_channels(self) -> list[ClientChannel]:
        """The channels this client object paid through, in the order first used."""
        return list(self._channels.values())

    def refresh(self) -> list[Channel]:
        """Every channel of this wallet in the ledger, re-read on-chain (and stored)."""
        with self.ledger.begin() as db:
            ids = [
                c.channel_id
                for c in client_channels(db, self.chain_id, self.contract, self.address)
            ]
        channels = [self._read(channel_id) for channel_id in ids]
        for channel in channels:
            self._store(channel)
        return channels

    def reclaim_expired(self) -> list[Reclaimed]:
        """Reclaim every channel of this wallet that expired and is not closed yet."""
        self.clock.refresh()
        now = self.clock.now()
        done: list[Reclaimed] = []
        for channel in self.refresh():
            if channel.closed or channel.expiry > now:
                continue
            try:
                channel_id = ChannelId(channel.channel_id)
                result = transact(
                    f"reclaiming channel {channel_id}",
                    lambda: self.contracts.payment_channels.reclaim(channel_id),  # noqa: B023
                )
            except ContractRevert as exc:
                raise PaymentError(
                    f"reclaiming channel {channel.channel_id} reverted: {exc.describe(self.units)}"
                ) from exc
            refunded = int(result.event("ChannelReclaimed").args["refunded"])
            self._store(self._read(channel.channel_id))
            self._channels.pop(channel.server, None)
            done.append(Reclaimed(channel.channel_id, channel.server, refunded, result.tx_hash))
            logger.info(
                "reclaimed channel %d: %s back", channel.channel_id, self.units.show(refunded)
            )
        return done
