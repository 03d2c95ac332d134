"""Chain bindings: which chain (per chain id, one block and its hash) a ledger's state was
recorded on, so a ledger outliving a restarted devnet is recognised and set aside.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Hand-reviewed. Types as in 0001: hashes LargeBinary(32), times DateTime(timezone=True); names
follow the metadata naming convention.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_bindings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("bound_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_bindings")),
        sa.UniqueConstraint("chain_id", name=op.f("uq_chain_bindings_chain_id")),
    )


def downgrade() -> None:
    op.drop_table("chain_bindings")
