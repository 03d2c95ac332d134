"""Verifier side: sampled leaves waiting for a reveal, the event cursor, collected verdicts;
audits may name the leaf's index and lack its hash (a node that showed nothing).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

Hand-reviewed. Types as in 0001: hashes LargeBinary(32), addresses String(42), signatures
LargeBinary(65), times DateTime(timezone=True); status and reason enums are VARCHAR(16) with a
CHECK; names follow the metadata naming convention. SQLite alters `audits` by copying it
(batch mode), keeping its indexes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _time(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("audits") as batch:
        batch.alter_column("leaf_hash", existing_type=sa.LargeBinary(length=32), nullable=True)
        batch.add_column(sa.Column("leaf_index", sa.Integer(), nullable=True))

    op.create_table(
        "audit_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("leaf_index", sa.Integer(), nullable=False),
        sa.Column("status", _enum("status", "pending", "done"), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _time("next_attempt_at"),
        _time("deadline"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_tasks")),
        sa.UniqueConstraint(
            "batch_id", "leaf_index", name=op.f("uq_audit_tasks_batch_id_leaf_index")
        ),
    )
    op.create_index(
        op.f("ix_audit_tasks_status_next_attempt_at"), "audit_tasks", ["status", "next_attempt_at"]
    )

    op.create_table(
        "verifier_cursors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("last_block", sa.BigInteger(), nullable=False),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verifier_cursors")),
        sa.UniqueConstraint(
            "chain_id", "contract", name=op.f("uq_verifier_cursors_chain_id_contract")
        ),
    )

    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column(
            "reason", _enum("reason", "mismatch", "withheld", "equivocation"), nullable=False
        ),
        sa.Column("signer", sa.String(length=42), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=65), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdicts")),
        sa.UniqueConstraint(
            "leaf_hash", "reason", "signer", name=op.f("uq_verdicts_leaf_hash_reason_signer")
        ),
    )


def downgrade() -> None:
    op.drop_table("verdicts")
    op.drop_table("verifier_cursors")
    op.drop_index(op.f("ix_audit_tasks_status_next_attempt_at"), "audit_tasks")
    op.drop_table("audit_tasks")
    # Audits without a leaf hash cannot go back to a NOT NULL column.
    op.execute("DELETE FROM audits WHERE leaf_hash IS NULL")
    with op.batch_alter_table("audits") as batch:
        batch.drop_column("leaf_index")
        batch.alter_column("leaf_hash", existing_type=sa.LargeBinary(length=32), nullable=False)
