"""The ledger's journal of sent transactions: `ledger.txjournal.TxJournal` over the
sent-transactions table.

Each report is its own database transaction, committed before the sender goes on: the row of a
transaction must be durable before it is sent, so that a node that stops while it is in flight
finds it pending after a restart (`pending_txs`) and asks the chain what became of it.
"""

from __future__ import annotations

from hexbytes import HexBytes
from sqlalchemy.orm import Session, sessionmaker

from ledger.db.records import record_tx, update_tx
from ledger.txjournal import SettledStatus

__all__ = ["LedgerTxJournal"]


class LedgerTxJournal:
    """Records a sender's transactions in the ledger (`record_tx`, then `update_tx`)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def sent(self, tx_hash: str, *, sender: str, to: str | None, function: str, nonce: int) -> None:
        """Record `tx_hash` as pending; `LedgerDbError` if it is already recorded."""
        with self.sessions.begin() as session:
            record_tx(
                session,
                tx_hash=HexBytes(tx_hash),
                sender=sender,
                to=to,
                function=function,
                nonce=nonce,
            )

    def settled(
        self,
        tx_hash: str,
        status: SettledStatus,
        *,
        gas_used: int | None = None,
        block_number: int | None = None,
        error: str | None = None,
    ) -> None:
        """Record what became of `tx_hash`; `LedgerDbError` if it was never recorded."""
        with self.sessions.begin() as session:
            update_tx(
                session,
                HexBytes(tx_hash),
                status=status,
                gas_used=gas_used,
                block_number=block_number,
                error=error,
            )
