"""Alembic revisions of the ledger database (a package so that wheels ship them)."""
