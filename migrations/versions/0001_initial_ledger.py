"""Initial ledger: deployments, channels, batches and leaves, sent transactions, audits, slashes.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Hand-reviewed. Column types are the plain SQL types behind `ledger.db.columns`:
amounts String(78) (zero-padded uint256 decimals), hashes LargeBinary(32), addresses
String(42), signatures LargeBinary(65), times DateTime(timezone=True). Constraint names follow
`ledger.db.models.NAMING_CONVENTION` (Alembic applies it from the target metadata).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _address(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length=42), nullable=nullable)


def _bytes32(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.LargeBinary(length=32), nullable=nullable)


def _amount(name: str) -> sa.Column:
    return sa.Column(name, sa.String(length=78), nullable=False)


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("rpc_url", sa.String(length=512), nullable=False),
        sa.Column("contracts", sa.JSON(), nullable=False),
        _time("deployed_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("name", "chain_id", name=op.f("uq_deployments_name_chain_id")),
    )

    op.create_table(
        "channels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        _address("contract"),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("role", _enum("role", "client", "server"), nullable=False),
        _address("client"),
        _address("server"),
        _amount("deposit"),
        _amount("redeemed"),
        sa.Column("expiry", sa.BigInteger(), nullable=False),
        sa.Column("status", _enum("status", "open", "closed"), nullable=False),
        _amount("voucher_amount"),
        sa.Column("voucher_signature", sa.LargeBinary(length=65), nullable=True),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint(
            "chain_id",
            "contract",
            "channel_id",
            name=op.f("uq_channels_chain_id_contract_channel_id"),
        ),
    )
    op.create_index(op.f("ix_channels_server_status"), "channels", ["server", "status"])
    op.create_index(op.f("ix_channels_status_expiry"), "channels", ["status", "expiry"])

    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_batch_id", sa.BigInteger(), nullable=True),
        _address("node"),
        _bytes32("model_id"),
        _bytes32("root"),
        sa.Column("leaf_count", sa.Integer(), nullable=False),
        sa.Column("token_count", sa.BigInteger(), nullable=False),
        sa.Column("status", _enum("status", "pending", "committed", "failed"), nullable=False),
        _bytes32("tx_hash", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _time("created_at"),
        _time("committed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("root", name=op.f("uq_batches_root")),
    )
    op.create_index(op.f("ix_batches_chain_batch_id"), "batches", ["chain_batch_id"])
    op.create_index(op.f("ix_batches_status"), "batches", ["status"])

    op.create_table(
        "leaves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("index_in_batch", sa.Integer(), nullable=True),
        _bytes32("session_id"),
        _bytes32("model_id"),
        sa.Column("span_start", sa.Integer(), nullable=False),
        sa.Column("span_end", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        _bytes32("input_hash"),
        _bytes32("output_hash"),
        _bytes32("sketch_hash"),
        _bytes32("leaf_hash"),
        sa.Column("receipt_signature", sa.LargeBinary(length=65), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leaves")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_leaves_batch_id_batches"),
            ondelete="RESTRICT",
        ),
        # A leaf is either pending (no batch, no index) or sealed (both).
        sa.CheckConstraint(
            "(batch_id IS NULL) = (index_in_batch IS NULL)", name=op.f("ck_leaves_batch_index")
        ),
        sa.UniqueConstraint(
            "batch_id", "index_in_batch", name=op.f("uq_leaves_batch_id_index_in_batch")
        ),
        sa.UniqueConstraint("leaf_hash", name=op.f("uq_leaves_leaf_hash")),
        # One leaf per (session, model, span, step): a second would be equivocation.
        sa.UniqueConstraint(
            "session_id", "model_id", "span_start", "span_end", "step", name="uq_leaves_slot"
        ),
    )

    op.create_table(
        "sent_transactions",
        sa.Column("id", sa.Integer(), nullable=False),
        _bytes32("tx_hash"),
        _address("sender"),
        _address("to", nullable=True),
        sa.Column("function", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column(
            "status", _enum("status", "pending", "mined", "reverted", "failed"), nullable=False
        ),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sent_transactions")),
        sa.UniqueConstraint("tx_hash", name=op.f("uq_sent_transactions_tx_hash")),
    )
    op.create_index(
        op.f("ix_sent_transactions_sender_nonce"), "sent_transactions", ["sender", "nonce"]
    )
    op.create_index(op.f("ix_sent_transactions_status"), "sent_transactions", ["status"])

    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), nullable=False),
        _address("node"),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        _bytes32("leaf_hash"),
        sa.Column(
            "outcome", _enum("outcome", "passed", "failed", "withheld", "error"), nullable=False
        ),
        sa.Column("distances", sa.JSON(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audits")),
    )
    op.create_index(op.f("ix_audits_node_created_at"), "audits", ["node", "created_at"])
    op.create_index(op.f("ix_audits_leaf_hash"), "audits", ["leaf_hash"])

    op.create_table(
        "slashes",
        sa.Column("id", sa.Integer(), nullable=False),
        _address("node"),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        _bytes32("leaf_hash"),
        sa.Column(
            "reason", _enum("reason", "mismatch", "withheld", "equivocation"), nullable=False
        ),
        _amount("amount"),
        _amount("bounty"),
        _bytes32("tx_hash", nullable=True),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slashes")),
        sa.UniqueConstraint("tx_hash", name=op.f("uq_slashes_tx_hash")),
    )
    op.create_index(op.f("ix_slashes_node"), "slashes", ["node"])


def downgrade() -> None:
    # Reverse order of creation; dropping a table drops its indexes and constraints.
    op.drop_table("slashes")
    op.drop_table("audits")
    op.drop_table("sent_transactions")
    op.drop_table("leaves")
    op.drop_table("batches")
    op.drop_table("channels")
    op.drop_table("deployments")
