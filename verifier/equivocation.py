"""Equivocation: two receipts one node signed for the same (session, model, span, step) with
different content. Anyone holding both gets the node slashed (`Slasher.slashEquivocation`, no
verdicts needed) and earns the bounty.

    found = find_equivocations(receipts, domain)      # e.g. a client's ledger's receipts
    outcome = submit_equivocation(slasher, found[0])

Receipts are checked off-chain first: both signatures must recover to the same address (the
node slashed), so a forged or mangled receipt is never sent to the contract.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.chain import TxResult
from ledger.contracts import Slasher
from ledger.db import ClientReceipt
from ledger.eip712 import Domain, recover_receipt_signer
from ledger.errors import SignatureError, TypedDataError
from node.protocol import SignedReceipt


@dataclass(frozen=True)
class Equivocation:
    """Two different receipts of `node` for one slot."""

    node: str  # who signed both (checksummed)
    a: SignedReceipt
    b: SignedReceipt


def _signer(domain: Domain, receipt: SignedReceipt) -> str | None:
    try:
        return recover_receipt_signer(domain, receipt.leaf, receipt.signature)
    except (SignatureError, TypedDataError):
        return None


def find_equivocations(receipts: Iterable[SignedReceipt], domain: Domain) -> list[Equivocation]:
    """Every slot for which one signer signed two different leaves (one pair per slot and
    signer), in the order the receipts came."""
    first: dict[tuple[str, tuple], SignedReceipt] = {}
    found: dict[tuple[str, tuple], Equivocation] = {}
    for receipt in receipts:
        signer = _signer(domain, receipt)
        if signer is None:
            continue
        key = (signer, receipt.leaf.slot())
        seen = first.setdefault(key, receipt)
        if seen.leaf.hash() != receipt.leaf.hash() and key not in found:
            found[key] = Equivocation(signer, seen, receipt)
    return list(found.values())


def receipts_in_ledger(session: Session) -> list[SignedReceipt]:
    """The receipts a client kept in its ledger (valid and invalid alike), oldest first."""
    rows = session.scalars(select(ClientReceipt).order_by(ClientReceipt.id))
    return [SignedReceipt(row.to_leaf(), row.signature) for row in rows]


@dataclass(frozen=True)
class EquivocationOutcome:
    """An equivocation slash that went through."""

    tx: TxResult
    amount: int  # stake taken from the node
    bounty: int  # paid to the sender


def submit_equivocation(slasher: Slasher, found: Equivocation) -> EquivocationOutcome:
    """Slash `found.node` with both receipts (sent by the slasher wrapper's sender, who gets
    the bounty). Raises `ContractRevert` as the contract refuses (e.g. already slashed)."""
    tx = slasher.slash_equivocation(
        found.node, found.a.leaf, found.a.signature, found.b.leaf, found.b.signature
    )
    event = tx.event("EquivocationSlashed")
    return EquivocationOutcome(tx, int(event.args["amount"]), int(event.args["bounty"]))
