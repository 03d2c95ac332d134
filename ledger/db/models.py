"""Tables of the ledger database (SQLAlchemy 2.0 declarative models).

One ledger per party (a node, a client, a verifier), in its home directory. The schema is
created and changed only by Alembic revisions in `migrations/`; a test checks that the
migrated schema equals these models. Amounts are `TokenAmount` (exact uint256), hashes
`Bytes32`, addresses `EthAddress`, times `UtcDateTime` (see `ledger.db.columns`).
The gateway's API keys (`GatewayKey`) live with their functions in `ledger.db.gateway`, on the
same `Base`; importing `ledger.db` registers them.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ledger.db.columns import Bytes32, EthAddress, TokenAmount, UtcDateTime, utcnow
from ledger.types import Leaf

# Every constraint and index gets a predictable name, so later revisions can alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SIGNATURE_LENGTH = 65


class Base(DeclarativeBase):
    """Declarative base of every ledger table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # A VARCHAR plus a CHECK of the values, the same on SQLite and PostgreSQL; stores `.value`.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class ChannelRole(enum.StrEnum):
    """Which end of a payment channel this ledger's owner is."""

    CLIENT = "client"  # we deposit and sign vouchers
    SERVER = "server"  # we receive vouchers and redeem them


class ChannelStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"  # reclaimed by the client


class BatchStatus(enum.StrEnum):
    PENDING = "pending"  # sealed locally, root not on-chain yet
    COMMITTED = "committed"  # root on-chain under `chain_batch_id`
    FAILED = "failed"  # the commit transaction failed; may be retried


class TxStatus(enum.StrEnum):
    PENDING = "pending"  # sent, no receipt yet
    MINED = "mined"  # receipt with status 1
    REVERTED = "reverted"  # receipt with status 0
    FAILED = "failed"  # never mined (dropped, replaced, rejected by the node)


class AuditOutcome(enum.StrEnum):
    PASSED = "passed"  # recomputation within tolerance
    FAILED = "failed"  # recomputation disagrees: a mismatch verdict follows
    WITHHELD = "withheld"  # the node did not reveal in time: a withheld verdict follows
    ERROR = "error"  # the audit itself could not run (our side); no verdict


class SlashReason(enum.StrEnum):
    MISMATCH = "mismatch"
    WITHHELD = "withheld"
    EQUIVOCATION = "equivocation"


class Deployment(Base):
    """Where a set of contracts lives: one row per (deployment name, chain)."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("name", "chain_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))  # e.g. "devnet"
    chain_id: Mapped[int] = mapped_column(BigInteger)
    rpc_url: Mapped[str] = mapped_column(String(512))
    contracts: Mapped[dict[str, str]] = mapped_column(JSON)  # contract name -> address
    deployed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ChainBinding(Base):
    """Which chain this ledger's state was recorded on, per chain id: one block of it (the
    first deployment's) and that block's hash. A chain restarted under the same id (a devnet)
    has another block there; its channel ids, batch ids and cursors start over, so the state
    recorded for the old chain must never be taken for the new one's (`ledger.db.binding`)."""

    __tablename__ = "chain_bindings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    block_number: Mapped[int] = mapped_column(BigInteger)  # the anchor block
    block_hash: Mapped[bytes] = mapped_column(Bytes32())  # its hash when the ledger was bound
    bound_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Channel(Base):
    """A payment channel we are party to, and the highest voucher we hold or signed for it."""

    __tablename__ = "channels"
    __table_args__ = (
        UniqueConstraint("chain_id", "contract", "channel_id"),
        Index(None, "server", "status"),
        Index(None, "status", "expiry"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    contract: Mapped[str] = mapped_column(EthAddress())  # the PaymentChannels contract
    channel_id: Mapped[int] = mapped_column(BigInteger)  # on-chain id, from 1
    role: Mapped[ChannelRole] = mapped_column(_enum(ChannelRole, "role"))
    client: Mapped[str] = mapped_column(EthAddress())
    server: Mapped[str] = mapped_column(EthAddress())
    deposit: Mapped[int] = mapped_column(TokenAmount())
    redeemed: Mapped[int] = mapped_column(TokenAmount())
    expiry: Mapped[int] = mapped_column(BigInteger)  # unix seconds, as on-chain
    status: Mapped[ChannelStatus] = mapped_column(_enum(ChannelStatus, "status"))
    voucher_amount: Mapped[int] = mapped_column(TokenAmount())  # 0: no voucher yet
    voucher_signature: Mapped[bytes | None] = mapped_column(LargeBinary(SIGNATURE_LENGTH))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Batch(Base):
    """A batch of leaves under one Merkle root: sealed locally, then committed on-chain."""

    __tablename__ = "batches"
    __table_args__ = (Index(None, "status"), Index(None, "chain_batch_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # local id
    chain_batch_id: Mapped[int | None] = mapped_column(BigInteger)  # set once committed
    node: Mapped[str] = mapped_column(EthAddress())
    model_id: Mapped[bytes] = mapped_column(Bytes32())
    root: Mapped[bytes] = mapped_column(Bytes32(), unique=True)
    leaf_count: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[BatchStatus] = mapped_column(_enum(BatchStatus, "status"))
    tx_hash: Mapped[bytes | None] = mapped_column(Bytes32())
    error: Mapped[str | None] = mapped_column(Text)  # why the last commit failed
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)  # sealed at
    committed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    leaves: Mapped[list[LeafRecord]] = relationship(
        back_populates="batch", order_by="LeafRecord.index_in_batch"
    )


class LeafRecord(Base):
    """One served step's leaf (`ledger.types.Leaf`) and the node's receipt signature over it."""

    __tablename__ = "leaves"
    __table_args__ = (
        UniqueConstraint("batch_id", "index_in_batch"),
        # One leaf per (session, model, span, step): a second one would be equivocation.
        UniqueConstraint(
            "session_id", "model_id", "span_start", "span_end", "step", name="uq_leaves_slot"
        ),
        CheckConstraint("(batch_id IS NULL) = (index_in_batch IS NULL)", name="batch_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id", ondelete="RESTRICT"))
    index_in_batch: Mapped[int | None] = mapped_column(Integer)
    session_id: Mapped[bytes] = mapped_column(Bytes32())
    model_id: Mapped[bytes] = mapped_column(Bytes32())
    span_start: Mapped[int] = mapped_column(Integer)
    span_end: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)  # uint32
    tokens: Mapped[int] = mapped_column(BigInteger)  # uint32
    input_hash: Mapped[bytes] = mapped_column(Bytes32())
    output_hash: Mapped[bytes] = mapped_column(Bytes32())
    sketch_hash: Mapped[bytes] = mapped_column(Bytes32())
    # unix seconds the receipt was signed (uint64 on-chain); 0 on rows from before revision 0006
    issued_at: Mapped[int] = mapped_column(BigInteger)
    leaf_hash: Mapped[bytes] = mapped_column(Bytes32(), unique=True)
    receipt_signature: Mapped[bytes] = mapped_column(LargeBinary(SIGNATURE_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    batch: Mapped[Batch | None] = relationship(back_populates="leaves")

    def to_leaf(self) -> Leaf:
        """The domain value this row stores."""
        return Leaf(
            session_id=self.session_id,
            model_id=self.model_id,
            span_start=self.span_start,
            span_end=self.span_end,
            step=self.step,
            tokens=self.tokens,
            input_hash=self.input_hash,
            output_hash=self.output_hash,
            sketch_hash=self.sketch_hash,
            issued_at=self.issued_at,
        )


class SentTransaction(Base):
    """A transaction we sent, from submission to its receipt (or failure)."""

    __tablename__ = "sent_transactions"
    __table_args__ = (Index(None, "sender", "nonce"), Index(None, "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_hash: Mapped[bytes] = mapped_column(Bytes32(), unique=True)
    sender: Mapped[str] = mapped_column(EthAddress())
    to: Mapped[str | None] = mapped_column(EthAddress())  # None for a contract creation
    function: Mapped[str] = mapped_column(String(64))  # e.g. "commit", "redeem"
    nonce: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[TxStatus] = mapped_column(_enum(TxStatus, "status"))
    gas_used: Mapped[int | None] = mapped_column(BigInteger)
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)  # decoded revert or send error
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Audit(Base):
    """A verifier's audit of one committed leaf and what it measured."""

    __tablename__ = "audits"
    __table_args__ = (Index(None, "node", "created_at"), Index(None, "leaf_hash"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(EthAddress())
    batch_id: Mapped[int] = mapped_column(BigInteger)  # on-chain batch id
    # None only when the node never showed the leaf (withheld before revealing anything)
    leaf_hash: Mapped[bytes | None] = mapped_column(Bytes32())
    leaf_index: Mapped[int | None] = mapped_column(Integer)  # position in the batch, if known
    outcome: Mapped[AuditOutcome] = mapped_column(_enum(AuditOutcome, "outcome"))
    distances: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # measured sketch distances
    detail: Mapped[str | None] = mapped_column(Text)  # human-readable note or error
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Slash(Base):
    """A slash we submitted (verifier, reporter) or suffered (node)."""

    __tablename__ = "slashes"
    __table_args__ = (Index(None, "node"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(EthAddress())
    batch_id: Mapped[int | None] = mapped_column(BigInteger)  # None for equivocation
    leaf_hash: Mapped[bytes] = mapped_column(Bytes32())  # the slashed (or first) leaf
    reason: Mapped[SlashReason] = mapped_column(_enum(SlashReason, "reason"))
    amount: Mapped[int] = mapped_column(TokenAmount())  # stake taken
    bounty: Mapped[int] = mapped_column(TokenAmount())  # paid to the verifiers / reporter
    tx_hash: Mapped[bytes | None] = mapped_column(Bytes32(), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


# --- verifier side: what a verifier must remember beyond its audits and slashes --------------


class AuditTaskStatus(enum.StrEnum):
    PENDING = "pending"  # sampled; no usable reveal yet (retried until its deadline)
    DONE = "done"  # audited: an `Audit` row says how


class AuditTask(Base):
    """A committed leaf a verifier sampled, from sampling until it is audited (a restart
    resumes the pending ones)."""

    __tablename__ = "audit_tasks"
    __table_args__ = (
        UniqueConstraint("batch_id", "leaf_index"),
        Index(None, "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(EthAddress())  # who committed the batch
    batch_id: Mapped[int] = mapped_column(BigInteger)  # on-chain batch id
    leaf_index: Mapped[int] = mapped_column(Integer)  # position of the leaf in the batch
    status: Mapped[AuditTaskStatus] = mapped_column(_enum(AuditTaskStatus, "status"))
    attempts: Mapped[int] = mapped_column(Integer)  # reveal requests made so far
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deadline: Mapped[datetime] = mapped_column(UtcDateTime())  # the node must reveal by then
    last_error: Mapped[str | None] = mapped_column(Text)  # why the last attempt got no reveal
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class VerifierCursor(Base):
    """The last block whose `BatchCommitted` events a verifier has sampled, per contract."""

    __tablename__ = "verifier_cursors"
    __table_args__ = (UniqueConstraint("chain_id", "contract"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    contract: Mapped[str] = mapped_column(EthAddress())  # the Commitments contract
    last_block: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class VerdictRecord(Base):
    """A signed EIP-712 verdict against a leaf: ours, or a peer verifier's we collected
    towards the slasher's quorum."""

    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("leaf_hash", "reason", "signer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(EthAddress())
    batch_id: Mapped[int] = mapped_column(BigInteger)
    leaf_hash: Mapped[bytes] = mapped_column(Bytes32())
    reason: Mapped[SlashReason] = mapped_column(_enum(SlashReason, "reason"))
    signer: Mapped[str] = mapped_column(EthAddress())
    signature: Mapped[bytes] = mapped_column(LargeBinary(SIGNATURE_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


# --- node side: what a serving node must remember beyond leaves and vouchers ----------------


class ServedSession(Base):
    """A session id a node accepted. A node serves each session id once, ever: serving it again
    could make it sign a second, different leaf for one of the session's steps (equivocation)."""

    __tablename__ = "served_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[bytes] = mapped_column(Bytes32(), unique=True)
    channel_id: Mapped[int] = mapped_column(BigInteger)  # the client's channel to this node
    span_start: Mapped[int] = mapped_column(Integer)
    span_end: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class SessionInput(Base):
    """Where the inputs of one served step (hidden states and attention mask) are kept, so the
    node can reveal them to a verifier until the step's challenge window closes."""

    __tablename__ = "session_inputs"
    __table_args__ = (
        UniqueConstraint("session_id", "span_start", "span_end", "step"),
        Index(None, "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[bytes] = mapped_column(Bytes32())
    span_start: Mapped[int] = mapped_column(Integer)
    span_end: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(512))  # relative to the node's inputs directory
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ChannelUsage(Base):
    """What a client owes a serving node on one channel: every token served times its price,
    cumulative (Wei). Vouchers must keep up with it, less the node's credit window."""

    __tablename__ = "channel_usage"
    __table_args__ = (UniqueConstraint("chain_id", "contract", "channel_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    contract: Mapped[str] = mapped_column(EthAddress())  # the PaymentChannels contract
    channel_id: Mapped[int] = mapped_column(BigInteger)
    owed: Mapped[int] = mapped_column(TokenAmount())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


# --- client side: what a paying client keeps of every step it was served ----------------------


class ReceiptStatus(enum.StrEnum):
    """Whether a receipt a client got checked out (`client.receipts.check_receipt`)."""

    VALID = "valid"
    INVALID = "invalid"  # evidence: wrongly signed, or stating something other than happened


class ClientReceipt(Base):
    """A server's signed receipt for one step of a client's session, as received, with what
    the client itself sent and received; invalid ones are the client's evidence."""

    __tablename__ = "client_receipts"
    __table_args__ = (
        Index(None, "server", "status"),
        Index(None, "session_id", "span_start", "step"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    server: Mapped[str] = mapped_column(EthAddress())  # the address the server announced
    peer_id: Mapped[str] = mapped_column(String(128))  # base58 libp2p peer id
    channel_id: Mapped[int] = mapped_column(BigInteger)  # the channel this step was paid through
    # the leaf as the server stated it (ledger.types.Leaf)
    session_id: Mapped[bytes] = mapped_column(Bytes32())
    model_id: Mapped[bytes] = mapped_column(Bytes32())
    span_start: Mapped[int] = mapped_column(Integer)
    span_end: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)  # uint32
    tokens: Mapped[int] = mapped_column(BigInteger)  # uint32
    input_hash: Mapped[bytes] = mapped_column(Bytes32())
    output_hash: Mapped[bytes] = mapped_column(Bytes32())
    sketch_hash: Mapped[bytes] = mapped_column(Bytes32())
    # unix seconds the server says it signed (uint64); 0 on rows from before revision 0006
    issued_at: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[bytes] = mapped_column(LargeBinary(SIGNATURE_LENGTH))
    # what the client saw
    sent_hash: Mapped[bytes] = mapped_column(Bytes32())  # tensor_hash of what it sent
    received_hash: Mapped[bytes] = mapped_column(Bytes32())  # tensor_hash of what it received
    cost: Mapped[int] = mapped_column(TokenAmount())  # Wei paid for this step
    status: Mapped[ReceiptStatus] = mapped_column(_enum(ReceiptStatus, "status"))
    problem: Mapped[str | None] = mapped_column(String(32))  # client.receipts.ReceiptProblem
    detail: Mapped[str | None] = mapped_column(Text)  # what differed, in words
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    def to_leaf(self) -> Leaf:
        """The leaf the server signed."""
        return Leaf(
            session_id=self.session_id,
            model_id=self.model_id,
            span_start=self.span_start,
            span_end=self.span_end,
            step=self.step,
            tokens=self.tokens,
            input_hash=self.input_hash,
            output_hash=self.output_hash,
            sketch_hash=self.sketch_hash,
            issued_at=self.issued_at,
        )
