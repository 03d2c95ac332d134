"""The gateway's API keys: name, hash of the secret, budget and spending of each.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Hand-reviewed. Types as in 0001: amounts String(78) (`TokenAmount`), hashes LargeBinary(32),
times DateTime(timezone=True); names follow the metadata naming convention. A new table only:
the downgrade drops it (and with it every key and what it spent).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("budget", sa.String(length=78), nullable=False),
        sa.Column("spent", sa.String(length=78), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_keys")),
        sa.UniqueConstraint("name", name=op.f("uq_gateway_keys_name")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_gateway_keys_key_hash")),
    )


def downgrade() -> None:
    op.drop_table("gateway_keys")
