"""What a transaction sender tells whoever keeps its record of sent transactions.

`ledger.chain.Sender` takes a `TxJournal` and reports each transaction twice: once just before
it is sent (`sent`: its hash and nonce, so a process that dies while it is in flight can look
it up again after a restart) and once when its fate is known (`settled`). The transport knows
nothing of where the record lives; the ledger's own journal is `ledger.db.LedgerTxJournal`.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["SettledStatus", "TxJournal"]

# what became of a sent transaction: receipt status 1, receipt status 0, or never mined
# (refused by the node, not mined in time, or dropped)
SettledStatus = Literal["mined", "reverted", "failed"]


class TxJournal(Protocol):
    """A record of the transactions one sender sent, keyed by their 0x-hex hash."""

    def sent(self, tx_hash: str, *, sender: str, to: str | None, function: str, nonce: int) -> None:
        """Record `tx_hash`, about to be sent, as pending; `to` is None for a deployment and
        `function` names the action (at most 64 characters). Raises `LedgerError` when it
        cannot be recorded: the sender then does not send it."""
        ...

    def settled(
        self,
        tx_hash: str,
        status: SettledStatus,
        *,
        gas_used: int | None = None,
        block_number: int | None = None,
        error: str | None = None,
    ) -> None:
        """Record what became of `tx_hash`: its receipt's gas and block, or why it failed.
        Raises `LedgerError` when it cannot be recorded (the sender logs it and goes on)."""
        ...
