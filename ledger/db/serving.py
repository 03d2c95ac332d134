"""The serving node's own records: session ids it accepted, the step inputs it keeps for
reveals, what each channel owes, and the summaries its status page shows.

A node claims each session id once, ever (`claim_session`), so it never signs two different
leaves for one step; it indexes every stored step input (`record_input`) and drops the inputs
of sessions whose challenge windows closed (`expired_input_spans`, `delete_inputs`); it keeps
per channel what the client owes (`add_owed`). Functions take a `Session` and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ledger.db.columns import (
    check_address,
    check_amount,
    check_bytes,
    check_int,
    check_time,
    utcnow,
)
from ledger.db.models import (
    Batch,
    BatchStatus,
    Channel,
    ChannelRole,
    ChannelStatus,
    ChannelUsage,
    LeafRecord,
    ServedSession,
    SessionInput,
)
from ledger.errors import LedgerDbError
from ledger.types import Leaf


class SessionReusedError(LedgerDbError):
    """A session id this node already accepted once."""


SpanKey = tuple[bytes, int, int]  # (session id, span start, span end)


def _span(span_start: int, span_end: int) -> tuple[int, int]:
    start = check_int(span_start, "span start", high=2**16 - 1)
    end = check_int(span_end, "span end", high=2**16 - 1)
    if not start < end:
        raise LedgerDbError(f"span [{start}, {end}) is empty")
    return start, end


def claim_session(
    session: Session, *, session_id: bytes, channel_id: int, span_start: int, span_end: int
) -> ServedSession:
    """Record that this node serves `session_id` (on `channel_id`, over the span);
    `SessionReusedError` if the id was ever claimed before."""
    session_id = check_bytes(session_id, "session id")
    start, end = _span(span_start, span_end)
    taken = session.scalars(
        select(ServedSession.id).where(ServedSession.session_id == session_id)
    ).first()
    if taken is not None:
        raise SessionReusedError(f"session 0x{session_id.hex()} was already served by this node")
    row = ServedSession(
        session_id=session_id,
        channel_id=check_int(channel_id, "channel id", low=1),
        span_start=start,
        span_end=end,
    )
    session.add(row)
    session.flush()
    return row


def get_served_session(session: Session, session_id: bytes) -> ServedSession | None:
    """The claim of `session_id`, if this node ever served it."""
    session_id = check_bytes(session_id, "session id")
    return session.scalars(
        select(ServedSession).where(ServedSession.session_id == session_id)
    ).one_or_none()


def record_input(
    session: Session,
    *,
    session_id: bytes,
    span_start: int,
    span_end: int,
    step: int,
    path: str,
) -> SessionInput:
    """Index the stored inputs of one served step (`path` relative to the inputs directory)."""
    start, end = _span(span_start, span_end)
    if not isinstance(path, str) or not path or len(path) > 512:
        raise LedgerDbError("input path must be a non-empty string of at most 512 chars")
    row = SessionInput(
        session_id=check_bytes(session_id, "session id"),
        span_start=start,
        span_end=end,
        step=check_int(step, "step", high=2**32 - 1),
        path=path,
    )
    session.add(row)
    session.flush()
    return row


def session_inputs(
    session: Session, session_id: bytes, span_start: int, span_end: int, *, up_to_step: int
) -> list[SessionInput]:
    """The stored inputs of one session span, steps 0..`up_to_step`, in step order."""
    start, end = _span(span_start, span_end)
    query = (
        select(SessionInput)
        .where(
            SessionInput.session_id == check_bytes(session_id, "session id"),
            SessionInput.span_start == start,
            SessionInput.span_end == end,
            SessionInput.step <= check_int(up_to_step, "step"),
        )
        .order_by(SessionInput.step)
    )
    return list(session.scalars(query))


def expired_input_spans(
    session: Session, *, committed_before: datetime, unused_before: datetime
) -> list[SpanKey]:
    """Session spans whose inputs no reveal can need any more: every leaf of the span is in a
    batch committed before `committed_before` (its challenge window closed), or the span has
    no leaf at all and its first input is older than `unused_before` (nothing was committed)."""
    committed_before = check_time(committed_before, "committed_before")
    unused_before = check_time(unused_before, "unused_before")
    same_span = and_(
        LeafRecord.session_id == SessionInput.session_id,
        LeafRecord.span_start == SessionInput.span_start,
        LeafRecord.span_end == SessionInput.span_end,
    )
    # a leaf that still matters: not sealed, sealed but not committed, or committed recently
    open_leaf = (
        select(LeafRecord.id)
        .outerjoin(Batch, LeafRecord.batch_id == Batch.id)
        .where(
            same_span,
            (LeafRecord.batch_id.is_(None))
            | (Batch.status != BatchStatus.COMMITTED)
            | (Batch.committed_at >= committed_before),
        )
    )
    any_leaf = select(LeafRecord.id).where(same_span)
    grouped = (
        select(
            SessionInput.session_id,
            SessionInput.span_start,
            SessionInput.span_end,
            func.min(SessionInput.created_at),
            exists(any_leaf.correlate(SessionInput)),
        )
        .where(~exists(open_leaf.correlate(SessionInput)))
        .group_by(SessionInput.session_id, SessionInput.span_start, SessionInput.span_end)
    )
    expired: list[SpanKey] = []
    for session_id, start, end, first, has_leaves in session.execute(grouped):
        first = first if first.tzinfo else first.replace(tzinfo=committed_before.tzinfo)
        if has_leaves or first < unused_before:
            expired.append((bytes(session_id), int(start), int(end)))
    return expired


def delete_inputs(session: Session, session_id: bytes, span_start: int, span_end: int) -> list[str]:
    """Forget the stored inputs of one session span; returns their paths (to delete the files)."""
    start, end = _span(span_start, span_end)
    rows = list(
        session.scalars(
            select(SessionInput).where(
                SessionInput.session_id == check_bytes(session_id, "session id"),
                SessionInput.span_start == start,
                SessionInput.span_end == end,
            )
        )
    )
    for row in rows:
        session.delete(row)
    session.flush()
    return [row.path for row in rows]


def _usage(
    session: Session, chain_id: int, contract: str, channel_id: int, *, for_update: bool = False
) -> ChannelUsage | None:
    query = select(ChannelUsage).where(
        ChannelUsage.chain_id == check_int(chain_id, "chain id", low=1),
        ChannelUsage.contract == check_address(contract, "channels contract"),
        ChannelUsage.channel_id == check_int(channel_id, "channel id", low=1),
    )
    if for_update:  # PostgreSQL: locked until the transaction ends (SQLite ignores it)
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def channel_owed(session: Session, chain_id: int, contract: str, channel_id: int) -> int:
    """What the client owes on the channel for everything served so far (0 if nothing)."""
    usage = _usage(session, chain_id, contract, channel_id)
    return 0 if usage is None else usage.owed


def set_owed(session: Session, chain_id: int, contract: str, channel_id: int, owed: int) -> None:
    """Record that the client owes `owed` in total on the channel (never decreases)."""
    owed = check_amount(owed, "owed")
    # locked: a concurrent, lower `owed` waits and is then refused instead of overwriting this
    usage = _usage(session, chain_id, contract, channel_id, for_update=True)
    if usage is None:  # a second process inserting it too fails on the unique key
        usage = ChannelUsage(
            chain_id=chain_id,
            contract=check_address(contract, "channels contract"),
            channel_id=channel_id,
            owed=owed,
        )
        session.add(usage)
    elif owed < usage.owed:
        raise LedgerDbError(
            f"channel {channel_id}: what is owed cannot drop from {usage.owed} to {owed}"
        )
    usage.owed = owed
    usage.updated_at = utcnow()
    session.flush()


@dataclass(frozen=True)
class Earnings:
    """A serving node's income over its channels (token base units)."""

    redeemed: int  # paid out on-chain
    unredeemed: int  # held in vouchers above what was redeemed
    channels: int  # channels this node serves


def server_earnings(session: Session, chain_id: int, contract: str) -> Earnings:
    """Sums over the server-side channels of one PaymentChannels contract."""
    rows = session.scalars(
        select(Channel).where(
            Channel.chain_id == check_int(chain_id, "chain id", low=1),
            Channel.contract == check_address(contract, "channels contract"),
            Channel.role == ChannelRole.SERVER,
        )
    )
    redeemed = unredeemed = count = 0
    for channel in rows:  # amounts are uint256 strings: sum in Python, exactly
        count += 1
        redeemed += channel.redeemed
        unredeemed += max(0, channel.voucher_amount - channel.redeemed)
    return Earnings(redeemed=redeemed, unredeemed=unredeemed, channels=count)


@dataclass(frozen=True)
class CommitmentCounts:
    """How far a node's leaves got: pending (no batch or batch not on-chain) or committed."""

    pending_leaves: int
    committed_leaves: int
    committed_batches: int
    failed_batches: int


def commitment_counts(session: Session) -> CommitmentCounts:
    """Counts of leaves and batches by state."""
    committed = LeafRecord.batch.has(Batch.status == BatchStatus.COMMITTED)
    committed_leaves = session.scalar(select(func.count(LeafRecord.id)).where(committed)) or 0
    all_leaves = session.scalar(select(func.count(LeafRecord.id))) or 0
    batches = dict(
        session.execute(select(Batch.status, func.count(Batch.id)).group_by(Batch.status)).all()
    )
    return CommitmentCounts(
        pending_leaves=all_leaves - committed_leaves,
        committed_leaves=committed_leaves,
        committed_batches=int(batches.get(BatchStatus.COMMITTED, 0)),
        failed_batches=int(batches.get(BatchStatus.FAILED, 0)),
    )


def record_served_voucher(
    session: Session | Connection,
    *,
    chain_id: int,
    contract: str,
    channel_id: int,
    voucher_amount: int | None,
    voucher_signature: bytes | None,
    owed: int,
) -> bool:
    """The per-step write of a serving node, in two UPDATE statements: raise the channel's held
    voucher (when `voucher_amount` is given; only upwards) and what the channel owes. False,
    with nothing written, when the channel or its usage row is not recorded yet (then use
    `upsert_channel`, `record_voucher` and `set_owed`). Plain Core statements: on a
    `Connection` (`ledger.engine.begin()`) it skips the ORM session's bookkeeping, which is
    most of the cost of a write made once per served token."""
    chain_id = check_int(chain_id, "chain id", low=1)
    contract = check_address(contract, "channels contract")
    channel_id = check_int(channel_id, "channel id", low=1)
    now = utcnow()
    usage = session.execute(
        update(ChannelUsage)
        .where(
            ChannelUsage.chain_id == chain_id,
            ChannelUsage.contract == contract,
            ChannelUsage.channel_id == channel_id,
            ChannelUsage.owed <= check_amount(owed, "owed"),
        )
        .values(owed=owed, updated_at=now)
    )
    if usage.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if voucher_amount is None:
        return True
    signature = check_bytes(voucher_signature, "voucher signature", 65)
    held = session.execute(
        update(Channel)
        .where(
            Channel.chain_id == chain_id,
            Channel.contract == contract,
            Channel.channel_id == channel_id,
            Channel.role == ChannelRole.SERVER,
            Channel.status == ChannelStatus.OPEN,
            Channel.voucher_amount < check_amount(voucher_amount, "voucher amount"),
            Channel.deposit >= voucher_amount,
        )
        .values(voucher_amount=voucher_amount, voucher_signature=signature, updated_at=now)
    )
    if held.rowcount != 1:  # type: ignore[attr-defined]
        raise LedgerDbError(
            f"channel {channel_id}: voucher for {voucher_amount} is not above the held one, "
            "exceeds the deposit, or the channel is not an open server channel"
        )
    return True


def add_served_steps(
    session: Session | Connection, steps: Sequence[tuple[Leaf, bytes, str]]
) -> None:
    """Store many served steps at once: each step's leaf with the node's receipt signature
    (pending, as `add_leaf` stores it) and the path of its stored inputs (as `record_input`).
    Core INSERTs in one round each; a slot that already holds a leaf makes the whole call fail
    with SQLAlchemy's `IntegrityError` (then store them one by one with `add_leaf`, which
    tells a repeat from an equivocation)."""
    if not steps:
        return
    now = utcnow()
    leaves, inputs = [], []
    for leaf, signature, path in steps:
        start, end = _span(leaf.span_start, leaf.span_end)
        leaves.append(
            {
                "session_id": check_bytes(leaf.session_id, "leaf session id"),
                "model_id": check_bytes(leaf.model_id, "leaf model id"),
                "span_start": start,
                "span_end": end,
                "step": check_int(leaf.step, "leaf step", high=2**32 - 1),
                "tokens": check_int(leaf.tokens, "leaf tokens", high=2**32 - 1),
                "input_hash": check_bytes(leaf.input_hash, "leaf input hash"),
                "output_hash": check_bytes(leaf.output_hash, "leaf output hash"),
                "sketch_hash": check_bytes(leaf.sketch_hash, "leaf sketch hash"),
                "issued_at": check_int(leaf.issued_at, "leaf issued at"),
                "leaf_hash": leaf.hash(),
                "receipt_signature": check_bytes(signature, "receipt signature", 65),
                "created_at": now,
            }
        )
        inputs.append(
            {
                "session_id": leaf.session_id,
                "span_start": start,
                "span_end": end,
                "step": leaf.step,
                "path": path,
                "created_at": now,
            }
        )
    session.execute(insert(LeafRecord), leaves)
    session.execute(insert(SessionInput), inputs)
