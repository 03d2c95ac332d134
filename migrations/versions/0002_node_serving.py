"""Node side: served session ids, stored step inputs, what each channel owes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Hand-reviewed. Types as in 0001: hashes LargeBinary(32), addresses String(42), amounts
String(78), times DateTime(timezone=True); names follow the metadata naming convention.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "served_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("span_start", sa.Integer(), nullable=False),
        sa.Column("span_end", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_served_sessions")),
        sa.UniqueConstraint("session_id", name=op.f("uq_served_sessions_session_id")),
    )
    op.create_table(
        "session_inputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("span_start", sa.Integer(), nullable=False),
        sa.Column("span_end", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_inputs")),
        sa.UniqueConstraint(
            "session_id",
            "span_start",
            "span_end",
            "step",
            name=op.f("uq_session_inputs_session_id_span_start_span_end_step"),
        ),
    )
    op.create_index(op.f("ix_session_inputs_created_at"), "session_inputs", ["created_at"])
    op.create_table(
        "channel_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("owed", sa.String(length=78), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_usage")),
        sa.UniqueConstraint(
            "chain_id",
            "contract",
            "channel_id",
            name=op.f("uq_channel_usage_chain_id_contract_channel_id"),
        ),
    )


def downgrade() -> None:
    op.drop_table("channel_usage")
    op.drop_table("session_inputs")
    op.drop_table("served_sessions")
