"""Plain records in the ledger: deployments, sent transactions, audits and slashes.

Functions take a `Session` and never commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.db.columns import (
    check_address,
    check_amount,
    check_bytes,
    check_int,
    check_time,
    utcnow,
)
from ledger.db.models import (
    Audit,
    AuditOutcome,
    Deployment,
    SentTransaction,
    Slash,
    SlashReason,
    TxStatus,
)
from ledger.errors import LedgerDbError

_E = TypeVar("_E", TxStatus, AuditOutcome, SlashReason)


def _member(cls: type[_E], value: _E | str) -> _E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise LedgerDbError(f"{value!r} is not one of: {allowed}") from None


def _text(value: object, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise LedgerDbError(f"{what} must be a non-empty string of at most {max_length} chars")
    return value


# --- deployments ------------------------------------------------------------------------------


def record_deployment(
    session: Session,
    *,
    name: str,
    chain_id: int,
    rpc_url: str,
    contracts: Mapping[str, str],
    deployed_at: datetime | None = None,
) -> Deployment:
    """Record where deployment `name` lives on `chain_id` (replacing an earlier record of the
    same name and chain, e.g. a devnet deployed afresh)."""
    name = _text(name, "deployment name", 64)
    chain_id = check_int(chain_id, "chain id", low=1)
    rpc_url = _text(rpc_url, "rpc url", 512)
    addresses = {
        _text(contract, "contract name", 64): check_address(address, f"address of {contract}")
        for contract, address in contracts.items()
    }
    deployed_at = utcnow() if deployed_at is None else check_time(deployed_at, "deployed_at")
    deployment = get_deployment(session, name, chain_id)
    if deployment is None:
        deployment = Deployment(name=name, chain_id=chain_id)
        session.add(deployment)
    deployment.rpc_url = rpc_url
    deployment.contracts = addresses
    deployment.deployed_at = deployed_at
    session.flush()
    return deployment


def get_deployment(session: Session, name: str, chain_id: int | None = None) -> Deployment | None:
    """Deployment `name` on `chain_id`, or its latest on any chain when `chain_id` is None."""
    query = select(Deployment).where(Deployment.name == name)
    if chain_id is not None:
        query = query.where(Deployment.chain_id == check_int(chain_id, "chain id", low=1))
    return session.scalars(query.order_by(Deployment.deployed_at.desc()).limit(1)).one_or_none()


# --- sent transactions ------------------------------------------------------------------------


def record_tx(
    session: Session,
    *,
    tx_hash: bytes,
    sender: str,
    to: str | None,
    function: str,
    nonce: int,
) -> SentTransaction:
    """Record a transaction just sent, as pending."""
    tx_hash = check_bytes(tx_hash, "tx hash")
    if get_tx(session, tx_hash) is not None:
        raise LedgerDbError(f"transaction 0x{tx_hash.hex()} is already recorded")
    tx = SentTransaction(
        tx_hash=tx_hash,
        sender=check_address(sender, "sender"),
        to=None if to is None else check_address(to, "to"),
        function=_text(function, "function name", 64),
        nonce=check_int(nonce, "nonce"),
        status=TxStatus.PENDING,
    )
    session.add(tx)
    session.flush()
    return tx


def get_tx(session: Session, tx_hash: bytes) -> SentTransaction | None:
    """The recorded transaction `tx_hash`, if any."""
    tx_hash = check_bytes(tx_hash, "tx hash")
    return session.scalars(
        select(SentTransaction).where(SentTransaction.tx_hash == tx_hash)
    ).one_or_none()


def update_tx(
    session: Session,
    tx_hash: bytes,
    *,
    status: TxStatus | str,
    gas_used: int | None = None,
    block_number: int | None = None,
    error: str | None = None,
) -> SentTransaction:
    """Record what became of transaction `tx_hash` (its receipt, or why it failed)."""
    tx = get_tx(session, tx_hash)
    if tx is None:
        raise LedgerDbError(f"no transaction 0x{bytes(tx_hash).hex()} recorded")
    tx.status = _member(TxStatus, status)
    if gas_used is not None:
        tx.gas_used = check_int(gas_used, "gas used")
    if block_number is not None:
        tx.block_number = check_int(block_number, "block number")
    if error is not None:
        tx.error = str(error)
    tx.updated_at = utcnow()
    session.flush()
    return tx


def pending_txs(session: Session, sender: str | None = None) -> list[SentTransaction]:
    """Transactions still waiting for a receipt, by sender and nonce."""
    query = select(SentTransaction).where(SentTransaction.status == TxStatus.PENDING)
    if sender is not None:
        query = query.where(SentTransaction.sender == check_address(sender, "sender"))
    order = (SentTransaction.sender, SentTransaction.nonce, SentTransaction.id)
    return list(session.scalars(query.order_by(*order)))


# --- audits (verifier side) -------------------------------------------------------------------


def record_audit(
    session: Session,
    *,
    node: str,
    batch_id: int,
    leaf_hash: bytes | None,
    outcome: AuditOutcome | str,
    distances: Mapping[str, Any] | None = None,
    detail: str | None = None,
    leaf_index: int | None = None,
) -> Audit:
    """Record the audit of leaf `leaf_hash` (at `leaf_index`, when known) of on-chain batch
    `batch_id` by `node`, with the measured sketch distances (a JSON object: names to numbers
    or lists). `leaf_hash` is None only for a withheld audit: the node never showed the leaf."""
    outcome = _member(AuditOutcome, outcome)
    if leaf_hash is None and outcome is not AuditOutcome.WITHHELD:
        raise LedgerDbError("only a withheld audit may lack the leaf hash")
    if distances is not None:
        try:
            # Round trip: only plain JSON (no NaN, which PostgreSQL's JSON refuses) is stored.
            distances = json.loads(json.dumps(dict(distances), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise LedgerDbError(f"audit distances must be plain JSON: {exc}") from None
    audit = Audit(
        node=check_address(node, "node"),
        batch_id=check_int(batch_id, "batch id", low=1),
        leaf_hash=None if leaf_hash is None else check_bytes(leaf_hash, "leaf hash"),
        leaf_index=None if leaf_index is None else check_int(leaf_index, "leaf index"),
        outcome=outcome,
        distances=distances,
        detail=detail,
    )
    session.add(audit)
    session.flush()
    return audit


def audits_of(
    session: Session, node: str, *, outcome: AuditOutcome | str | None = None
) -> list[Audit]:
    """Audits of `node` (optionally with one outcome), oldest first."""
    query = select(Audit).where(Audit.node == check_address(node, "node"))
    if outcome is not None:
        query = query.where(Audit.outcome == _member(AuditOutcome, outcome))
    return list(session.scalars(query.order_by(Audit.created_at, Audit.id)))


def is_audited(session: Session, leaf_hash: bytes) -> bool:
    """True once any audit of `leaf_hash` was recorded (so it is not sampled twice)."""
    leaf_hash = check_bytes(leaf_hash, "leaf hash")
    return (
        session.scalars(select(Audit.id).where(Audit.leaf_hash == leaf_hash).limit(1)).first()
        is not None
    )


# --- slashes ----------------------------------------------------------------------------------


def record_slash(
    session: Session,
    *,
    node: str,
    batch_id: int | None,
    leaf_hash: bytes,
    reason: SlashReason | str,
    amount: int,
    bounty: int,
    tx_hash: bytes | None = None,
) -> Slash:
    """Record a slash of `node`: for leaf `leaf_hash` of on-chain batch `batch_id`, or with
    `batch_id` None and reason equivocation for two conflicting receipts."""
    reason = _member(SlashReason, reason)
    if (batch_id is None) != (reason is SlashReason.EQUIVOCATION):
        raise LedgerDbError("a batch id is given exactly for mismatch and withheld slashes")
    amount, bounty = check_amount(amount, "slashed amount"), check_amount(bounty, "bounty")
    if bounty > amount:
        raise LedgerDbError(f"bounty {bounty} exceeds the slashed amount {amount}")
    slash = Slash(
        node=check_address(node, "node"),
        batch_id=None if batch_id is None else check_int(batch_id, "batch id", low=1),
        leaf_hash=check_bytes(leaf_hash, "leaf hash"),
        reason=reason,
        amount=amount,
        bounty=bounty,
        tx_hash=None if tx_hash is None else check_bytes(tx_hash, "tx hash"),
    )
    session.add(slash)
    session.flush()
    return slash


def slashes_of(session: Session, node: str) -> list[Slash]:
    """Slashes of `node`, oldest first."""
    query = select(Slash).where(Slash.node == check_address(node, "node"))
    return list(session.scalars(query.order_by(Slash.created_at, Slash.id)))
