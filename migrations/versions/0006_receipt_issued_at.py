"""Receipts carry the time they were signed: `issued_at` on the node's leaves and on the
receipts a client keeps (the last field of `ISlasher.Leaf`, `uint64 issuedAt`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Hand-reviewed. BigInteger (unix seconds; a leaf's uint64 beyond 2**63 - 1 is refused before it
gets here). Rows stored before this revision get 0: their receipts were signed without a time
(the old 9-field leaf), so no real time can be restored for them, and 0 marks them as such.
The column is added with a server default for those rows, which is then dropped so that every
new row states its time. SQLite alters the tables by copying them (batch mode).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("leaves", "client_receipts")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(
            table,
            sa.Column("issued_at", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        )
        with op.batch_alter_table(table) as batch:
            batch.alter_column("issued_at", existing_type=sa.BigInteger(), server_default=None)


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("issued_at")
