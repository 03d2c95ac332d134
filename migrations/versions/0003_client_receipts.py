"""Client side: the receipts a paying client was given, valid ones and invalid ones as evidence.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

Hand-reviewed. Types as in 0001: hashes LargeBinary(32), addresses String(42), amounts
String(78), signatures LargeBinary(65), times DateTime(timezone=True); the status enum is a
VARCHAR(16) with a CHECK; names follow the metadata naming convention.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "client_receipts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("server", sa.String(length=42), nullable=False),
        sa.Column("peer_id", sa.String(length=128), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("model_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("span_start", sa.Integer(), nullable=False),
        sa.Column("span_end", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("input_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("output_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("sketch_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=65), nullable=False),
        sa.Column("sent_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("received_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("cost", sa.String(length=78), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "valid",
                "invalid",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("problem", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_receipts")),
    )
    op.create_index(
        op.f("ix_client_receipts_server_status"), "client_receipts", ["server", "status"]
    )
    op.create_index(
        op.f("ix_client_receipts_session_id_span_start_step"),
        "client_receipts",
        ["session_id", "span_start", "step"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_client_receipts_session_id_span_start_step"), "client_receipts")
    op.drop_index(op.f("ix_client_receipts_server_status"), "client_receipts")
    op.drop_table("client_receipts")
