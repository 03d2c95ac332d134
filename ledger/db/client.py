"""A paying client's records: the receipts it was given (valid ones, and invalid ones as
evidence) and the channels it pays through.

The client's channels and the highest voucher it signed on each live in `channels` (role
`client`, see `ledger.db.channels`); a restarted client finds its channel to a server with
`open_channel_to` and continues the cumulative amount from `voucher_amount`. A voucher a
server explicitly refused is taken back with `restore_voucher`.
Functions take a `Session` and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ledger.db.channels import lock_row
from ledger.db.columns import check_address, check_amount, check_bytes, check_int, utcnow
from ledger.db.models import (
    SIGNATURE_LENGTH,
    Channel,
    ChannelRole,
    ChannelStatus,
    ClientReceipt,
    ReceiptStatus,
)
from ledger.errors import LedgerDbError, VoucherError
from ledger.types import Leaf, Voucher


def record_receipt(
    session: Session,
    *,
    chain_id: int,
    server: str,
    peer_id: str,
    channel_id: int,
    leaf: Leaf,
    signature: bytes,
    sent_hash: bytes,
    received_hash: bytes,
    cost: int,
    problem: str | None = None,
    detail: str | None = None,
) -> ClientReceipt:
    """Keep a receipt as received (`leaf`, `signature`) with the hashes of what the client sent
    and received and what the step cost; with a `problem`, it is stored as invalid evidence."""
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= 128:
        raise LedgerDbError("peer id must be a non-empty string of at most 128 chars")
    if problem is not None and (not isinstance(problem, str) or not 0 < len(problem) <= 32):
        raise LedgerDbError("a receipt problem is a non-empty string of at most 32 chars")
    row = ClientReceipt(
        chain_id=check_int(chain_id, "chain id", low=1),
        server=check_address(server, "server"),
        peer_id=peer_id,
        channel_id=check_int(channel_id, "channel id", low=1),
        session_id=check_bytes(leaf.session_id, "leaf session id"),
        model_id=check_bytes(leaf.model_id, "leaf model id"),
        span_start=check_int(leaf.span_start, "leaf span start", high=2**16 - 1),
        span_end=check_int(leaf.span_end, "leaf span end", high=2**16 - 1),
        step=check_int(leaf.step, "leaf step", high=2**32 - 1),
        tokens=check_int(leaf.tokens, "leaf tokens", high=2**32 - 1),
        input_hash=check_bytes(leaf.input_hash, "leaf input hash"),
        output_hash=check_bytes(leaf.output_hash, "leaf output hash"),
        sketch_hash=check_bytes(leaf.sketch_hash, "leaf sketch hash"),
        issued_at=check_int(leaf.issued_at, "leaf issued at"),
        signature=check_bytes(signature, "receipt signature", SIGNATURE_LENGTH),
        sent_hash=check_bytes(sent_hash, "sent hash"),
        received_hash=check_bytes(received_hash, "received hash"),
        cost=check_amount(cost, "cost"),
        status=ReceiptStatus.VALID if problem is None else ReceiptStatus.INVALID,
        problem=problem,
        detail=detail,
    )
    session.add(row)
    session.flush()
    return row


def receipts_of(
    session: Session,
    *,
    server: str | None = None,
    status: ReceiptStatus | str | None = None,
    session_id: bytes | None = None,
) -> list[ClientReceipt]:
    """Receipts kept, oldest first, optionally of one server, status or session."""
    query = select(ClientReceipt)
    if server is not None:
        query = query.where(ClientReceipt.server == check_address(server, "server"))
    if status is not None:
        try:
            query = query.where(ClientReceipt.status == ReceiptStatus(status))
        except ValueError:
            raise LedgerDbError(f"{status!r} is not a receipt status") from None
    if session_id is not None:
        query = query.where(ClientReceipt.session_id == check_bytes(session_id, "session id"))
    return list(session.scalars(query.order_by(ClientReceipt.id)))


@dataclass(frozen=True)
class ServedTotal:
    """What one channel's server computed and was paid for, by the receipts kept (a server is
    paid for every step it answered, a step with an invalid receipt too)."""

    channel_id: int
    server: str
    tokens: int  # token positions over all its receipts
    cost: int  # Wei those steps cost


def served_totals(session: Session, chain_id: int) -> list[ServedTotal]:
    """Per channel: tokens and cost of every receipted step, by channel id."""
    chain_id = check_int(chain_id, "chain id", low=1)
    totals: dict[int, list] = {}
    rows = session.execute(
        select(
            ClientReceipt.channel_id,
            ClientReceipt.server,
            ClientReceipt.tokens,
            ClientReceipt.cost,
        ).where(ClientReceipt.chain_id == chain_id)
    )
    for channel_id, server, tokens, cost in rows:
        entry = totals.setdefault(channel_id, [server, 0, 0])
        entry[1] += tokens
        entry[2] += cost  # TokenAmount: summed in Python, exactly
    return [ServedTotal(c, s, t, cost) for c, (s, t, cost) in sorted(totals.items())]


def client_channels(
    session: Session, chain_id: int, contract: str, client: str, *, open_only: bool = False
) -> list[Channel]:
    """The channels `client` pays through on the PaymentChannels `contract`, by channel id."""
    query = select(Channel).where(
        Channel.chain_id == check_int(chain_id, "chain id", low=1),
        Channel.contract == check_address(contract, "channels contract"),
        Channel.role == ChannelRole.CLIENT,
        Channel.client == check_address(client, "client"),
    )
    if open_only:
        query = query.where(Channel.status == ChannelStatus.OPEN)
    return list(session.scalars(query.order_by(Channel.channel_id)))


def restore_voucher(
    session: Session, channel: Channel, refused: Voucher, previous: Voucher | None
) -> bool:
    """Client side: a server refused `refused` before accepting it (it answered with a refusal,
    so it never held it): hold `previous` (None: no voucher) again as the channel's highest.
    Only when `refused` is still the one held; True if it was restored."""
    if channel.role is not ChannelRole.CLIENT:
        raise LedgerDbError(f"channel {channel.channel_id}: only a client restores its vouchers")
    lock_row(session, channel)  # the voucher held now, not when `channel` was read
    if (channel.voucher_amount, channel.voucher_signature) != (
        refused.cumulative_amount,
        refused.signature,
    ):
        return False
    if previous is not None and previous.cumulative_amount >= refused.cumulative_amount:
        raise LedgerDbError(
            f"channel {channel.channel_id}: the voucher restored must be below the refused one"
        )
    channel.voucher_amount = 0 if previous is None else previous.cumulative_amount
    channel.voucher_signature = None if previous is None else previous.signature
    channel.updated_at = utcnow()
    session.flush()
    return True


def advance_client_voucher(
    session: Session,
    *,
    chain_id: int,
    contract: str,
    channel_id: int,
    voucher: Voucher,
    held: int,
) -> None:
    """Client side, once per step and server: make `voucher` the channel's highest, in one
    UPDATE (no read), provided the ledger still holds the amount `held` the client signed
    last, the channel is open and its deposit covers the voucher. `VoucherError` otherwise
    (the ledger changed under this client, e.g. another process uses the same wallet)."""
    chain_id, contract = check_int(chain_id, "chain id", low=1), check_address(contract, "contract")
    amount = check_amount(voucher.cumulative_amount, "voucher cumulative amount")
    signature = check_bytes(voucher.signature, "voucher signature", SIGNATURE_LENGTH)
    if amount <= check_amount(held, "held amount"):
        raise VoucherError(f"channel {channel_id}: voucher for {amount} is not above {held}")
    result = session.execute(
        update(Channel)
        .where(
            Channel.chain_id == chain_id,
            Channel.contract == contract,
            Channel.channel_id == check_int(channel_id, "channel id", low=1),
            Channel.role == ChannelRole.CLIENT,
            Channel.status == ChannelStatus.OPEN,
            Channel.voucher_amount == held,
            Channel.deposit >= amount,  # fixed-width decimal strings: string order is numeric
        )
        .values(voucher_amount=amount, voucher_signature=signature, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise VoucherError(
            f"channel {channel_id}: the ledger does not hold an open client channel whose last "
            f"voucher is {held} and whose deposit covers {amount}"
        )
