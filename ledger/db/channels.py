"""Payment channels in the ledger: their on-chain state and the highest voucher for each.

The server side persists every voucher before it serves the next step (`record_voucher`) and
redeems from `redeemable_channels`; the client side finds its open channel to a server with
`open_channel_to` and keeps the last voucher it signed. Signatures are not checked here (that
needs the contract's EIP-712 domain; see `ledger.eip712.recover_voucher_signer`), only their
shape. Functions take a `Session` and never commit.

Concurrency: a function that reads a channel and then writes it (`upsert_channel`,
`record_voucher`, and `ledger.db.client.restore_voucher`) first reads the row with
`SELECT ... FOR UPDATE` (`lock_row`), so on PostgreSQL a second transaction on the same channel
waits for this one and then sees its result: a voucher can never replace a higher one that was
committed meanwhile. SQLite has no row locks (SQLAlchemy leaves the clause out); there the one
writer at a time is the database's write lock and each component's single ledger thread.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.db.columns import (
    check_address,
    check_amount,
    check_bytes,
    check_int,
    utcnow,
)
from ledger.db.models import SIGNATURE_LENGTH, Base, Channel, ChannelRole, ChannelStatus
from ledger.errors import LedgerDbError, VoucherError
from ledger.types import Voucher


def _key(chain_id: int, contract: str, channel_id: int) -> tuple[int, str, int]:
    return (
        check_int(chain_id, "chain id", low=1),
        check_address(contract, "channels contract"),
        check_int(channel_id, "channel id", low=1),
    )


def lock_row(session: Session, row: Base) -> None:
    """Re-read `row` from the database and lock it until the transaction ends (`SELECT ... FOR
    UPDATE` on PostgreSQL; SQLite ignores the clause): what a read-then-write of money reads is
    the latest committed state, and nothing else changes it before this transaction ends.
    Pending changes to it are flushed first, so none is lost."""
    session.flush()
    session.refresh(row, with_for_update=True)


def get_channel(
    session: Session, chain_id: int, contract: str, channel_id: int, *, for_update: bool = False
) -> Channel | None:
    """The channel `channel_id` of the PaymentChannels `contract` on `chain_id`, if recorded;
    with `for_update`, its row locked until the transaction ends (see `lock_row`)."""
    chain_id, contract, channel_id = _key(chain_id, contract, channel_id)
    query = select(Channel).where(
        Channel.chain_id == chain_id,
        Channel.contract == contract,
        Channel.channel_id == channel_id,
    )
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def upsert_channel(
    session: Session,
    *,
    chain_id: int,
    contract: str,
    channel_id: int,
    role: ChannelRole | str,
    client: str,
    server: str,
    deposit: int,
    redeemed: int,
    expiry: int,
    status: ChannelStatus | str = ChannelStatus.OPEN,
) -> Channel:
    """Record a channel's on-chain state (insert, or refresh deposit, redeemed, expiry and
    status). The voucher held is kept. A channel's role and parties never change: a mismatch
    means two parties share one ledger, and is refused."""
    chain_id, contract, channel_id = _key(chain_id, contract, channel_id)
    try:
        role, status = ChannelRole(role), ChannelStatus(status)
    except ValueError as exc:
        raise LedgerDbError(f"channel {channel_id}: {exc}") from None
    client, server = check_address(client, "client"), check_address(server, "server")
    deposit, redeemed = check_amount(deposit, "deposit"), check_amount(redeemed, "redeemed")
    if redeemed > deposit:
        raise LedgerDbError(f"channel {channel_id}: redeemed {redeemed} exceeds deposit {deposit}")
    expiry = check_int(expiry, "expiry")

    channel = get_channel(session, chain_id, contract, channel_id, for_update=True)
    if channel is None:  # a second process inserting it too fails on the unique key
        channel = Channel(
            chain_id=chain_id,
            contract=contract,
            channel_id=channel_id,
            role=role,
            client=client,
            server=server,
            voucher_amount=0,
        )
        session.add(channel)
    elif (channel.role, channel.client, channel.server) != (role, client, server):
        raise LedgerDbError(
            f"channel {channel_id} is recorded as {channel.role.value} side between "
            f"{channel.client} and {channel.server}; one ledger per party"
        )
    channel.deposit = deposit
    channel.redeemed = redeemed
    channel.expiry = expiry
    channel.status = status
    channel.updated_at = utcnow()
    session.flush()
    return channel


def record_voucher(session: Session, channel: Channel, voucher: Voucher) -> bool:
    """Keep `voucher` as the channel's highest if its cumulative amount is higher than the one
    held. True if it was stored, False for a replay of the voucher already held.
    `VoucherError` for a lower amount, another voucher of the same amount, an amount above the
    deposit or not above what was redeemed, a closed channel, or a malformed signature."""
    if voucher.channel_id != channel.channel_id:
        raise VoucherError(
            f"voucher is for channel {voucher.channel_id}, not channel {channel.channel_id}"
        )
    try:
        amount = check_amount(voucher.cumulative_amount, "voucher cumulative amount")
        signature = check_bytes(voucher.signature, "voucher signature", SIGNATURE_LENGTH)
    except LedgerDbError as exc:
        raise VoucherError(str(exc)) from None
    lock_row(session, channel)  # compare with the latest held voucher, not a stale read
    if channel.status is ChannelStatus.CLOSED:
        raise VoucherError(f"channel {channel.channel_id} is closed")
    held = channel.voucher_amount
    if amount == held and signature == channel.voucher_signature:
        return False
    if amount <= held:
        raise VoucherError(
            f"channel {channel.channel_id}: voucher for {amount} is not above the {held} held"
        )
    if amount <= channel.redeemed:
        raise VoucherError(
            f"channel {channel.channel_id}: voucher for {amount} is not above the "
            f"{channel.redeemed} already redeemed"
        )
    if amount > channel.deposit:
        raise VoucherError(
            f"channel {channel.channel_id}: voucher for {amount} exceeds the deposit "
            f"{channel.deposit}"
        )
    channel.voucher_amount = amount
    channel.voucher_signature = signature
    channel.updated_at = utcnow()
    session.flush()
    return True


def latest_voucher(
    session: Session, chain_id: int, contract: str, channel_id: int
) -> Voucher | None:
    """The highest voucher held for the channel, or None if there is none (or no channel)."""
    channel = get_channel(session, chain_id, contract, channel_id)
    if channel is None or channel.voucher_signature is None:
        return None
    return Voucher(channel.channel_id, channel.voucher_amount, channel.voucher_signature)


def held_vouchers(session: Session, chain_id: int, contract: str) -> dict[int, int]:
    """Server side: the latest voucher amount held per channel of the PaymentChannels
    `contract` on `chain_id` (0: none yet)."""
    rows = session.execute(
        select(Channel.channel_id, Channel.voucher_amount).where(
            Channel.chain_id == check_int(chain_id, "chain id", low=1),
            Channel.contract == check_address(contract, "channels contract"),
            Channel.role == ChannelRole.SERVER,
        )
    )
    return {int(channel_id): int(amount) for channel_id, amount in rows}


def open_channel_to(session: Session, chain_id: int, contract: str, server: str) -> Channel | None:
    """Client side: our open channel to `server` that expires last, if any."""
    chain_id = check_int(chain_id, "chain id", low=1)
    return session.scalars(
        select(Channel)
        .where(
            Channel.chain_id == chain_id,
            Channel.contract == check_address(contract, "channels contract"),
            Channel.role == ChannelRole.CLIENT,
            Channel.server == check_address(server, "server"),
            Channel.status == ChannelStatus.OPEN,
        )
        .order_by(Channel.expiry.desc(), Channel.channel_id.desc())
        .limit(1)
    ).one_or_none()


def redeemable_channels(
    session: Session, chain_id: int, contract: str, *, expiring_before: int | None = None
) -> list[Channel]:
    """Server side: open channels whose held voucher is above what was redeemed, soonest
    expiry first; with `expiring_before` (unix seconds), only those expiring before it."""
    query = select(Channel).where(
        Channel.chain_id == check_int(chain_id, "chain id", low=1),
        Channel.contract == check_address(contract, "channels contract"),
        Channel.role == ChannelRole.SERVER,
        Channel.status == ChannelStatus.OPEN,
        # Fixed-width decimal strings: string order is numeric order.
        Channel.voucher_amount > Channel.redeemed,
    )
    if expiring_before is not None:
        query = query.where(Channel.expiry < check_int(expiring_before, "expiring_before"))
    return list(session.scalars(query.order_by(Channel.expiry, Channel.channel_id)))
