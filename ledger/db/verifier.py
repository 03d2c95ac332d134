"""The verifier's own records: which blocks it has sampled, the leaves waiting for a reveal,
the verdicts it signed or collected, and the summaries its status shows.

A verifier samples each committed batch once (`get_cursor`/`set_cursor` remember the last
block whose `BatchCommitted` events it sampled), queues every sampled leaf as an `AuditTask`
(`add_audit_task`) until it is audited or its reveal deadline passes, keeps every signed
verdict about a leaf (`record_verdict`; its own and its peers', towards the quorum), and
counts audits, slashes and bounties (`verifier_totals`). Functions take a `Session` and
never commit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ledger.db.columns import check_address, check_bytes, check_int, check_time, utcnow
from ledger.db.models import (
    Audit,
    AuditOutcome,
    AuditTask,
    AuditTaskStatus,
    SentTransaction,
    Slash,
    SlashReason,
    TxStatus,
    VerdictRecord,
    VerifierCursor,
)
from ledger.errors import LedgerDbError
from ledger.types import Reason, Verdict

# how `ledger.chain.Sender` names slash transactions in the sent-transactions table
SLASH_FUNCTIONS = ("Slasher.slash", "Slasher.slashWithheld", "Slasher.slashEquivocation")
_REASONS = {Reason.MISMATCH: SlashReason.MISMATCH, Reason.WITHHELD: SlashReason.WITHHELD}

# --- the event cursor -------------------------------------------------------------------------


def get_cursor(session: Session, chain_id: int, contract: str) -> int | None:
    """The last block sampled on `contract` (the Commitments address), None before the first."""
    row = session.scalars(
        select(VerifierCursor).where(
            VerifierCursor.chain_id == check_int(chain_id, "chain id", low=1),
            VerifierCursor.contract == check_address(contract, "contract"),
        )
    ).one_or_none()
    return None if row is None else row.last_block


def set_cursor(session: Session, chain_id: int, contract: str, last_block: int) -> None:
    """Remember that every block up to `last_block` was sampled; it never moves back."""
    last_block = check_int(last_block, "last block")
    row = session.scalars(
        select(VerifierCursor)
        .where(
            VerifierCursor.chain_id == check_int(chain_id, "chain id", low=1),
            VerifierCursor.contract == check_address(contract, "contract"),
        )
        .with_for_update()  # PostgreSQL: a concurrent move waits, so it never moves back
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        session.add(VerifierCursor(chain_id=chain_id, contract=contract, last_block=last_block))
    elif last_block > row.last_block:
        row.last_block = last_block
        row.updated_at = utcnow()
    session.flush()


# --- sampled leaves waiting for their audit -----------------------------------------------------


def add_audit_task(
    session: Session,
    *,
    node: str,
    batch_id: int,
    leaf_index: int,
    deadline: datetime,
    not_before: datetime | None = None,
) -> AuditTask | None:
    """Queue leaf `leaf_index` of batch `batch_id` for audit, due at `not_before` (now) and
    to be revealed by `deadline`; None when it is already queued (sampling is idempotent)."""
    batch_id = check_int(batch_id, "batch id", low=1)
    leaf_index = check_int(leaf_index, "leaf index", high=2**32 - 1)
    existing = session.scalars(
        select(AuditTask).where(AuditTask.batch_id == batch_id, AuditTask.leaf_index == leaf_index)
    ).one_or_none()
    if existing is not None:
        return None
    task = AuditTask(
        node=check_address(node, "node"),
        batch_id=batch_id,
        leaf_index=leaf_index,
        status=AuditTaskStatus.PENDING,
        attempts=0,
        next_attempt_at=utcnow() if not_before is None else check_time(not_before, "not_before"),
        deadline=check_time(deadline, "deadline"),
    )
    session.add(task)
    session.flush()
    return task


def due_audit_tasks(
    session: Session, *, now: datetime | None = None, limit: int = 16
) -> list[AuditTask]:
    """Pending tasks whose next attempt is due, oldest first."""
    now = utcnow() if now is None else check_time(now, "now")
    query = (
        select(AuditTask)
        .where(AuditTask.status == AuditTaskStatus.PENDING, AuditTask.next_attempt_at <= now)
        .order_by(AuditTask.next_attempt_at, AuditTask.id)
        .limit(check_int(limit, "limit", low=1))
    )
    return list(session.scalars(query))


def _task(session: Session, task_id: int) -> AuditTask:
    # locked (PostgreSQL) and re-read: `attempts += 1` counts every attempt once
    task = session.get(AuditTask, task_id, with_for_update=True)
    if task is None:
        raise LedgerDbError(f"no audit task {task_id}")
    return task


def retry_audit_task(session: Session, task_id: int, *, at: datetime, error: str) -> AuditTask:
    """One more attempt got no usable reveal (`error`); try again at `at`."""
    task = _task(session, task_id)
    task.attempts += 1
    task.next_attempt_at = check_time(at, "at")
    task.last_error = error[:2000]
    session.flush()
    return task


def finish_audit_task(session: Session, task_id: int) -> AuditTask:
    """The task's leaf was audited (an `Audit` row records how)."""
    task = _task(session, task_id)
    task.attempts += 1
    task.status = AuditTaskStatus.DONE
    session.flush()
    return task


def pending_audit_count(session: Session) -> int:
    return len(
        session.scalars(
            select(AuditTask.id).where(AuditTask.status == AuditTaskStatus.PENDING)
        ).all()
    )


# --- verdicts -----------------------------------------------------------------------------------


def record_verdict(session: Session, verdict: Verdict) -> bool:
    """Keep a signed mismatch or withheld verdict (ours or a peer's); False if the same
    signer's verdict about that leaf and reason is already kept. The caller has checked the
    signature."""
    try:
        reason = _REASONS[Reason(verdict.reason)]
    except (KeyError, ValueError):
        raise LedgerDbError(
            f"a verdict's reason is mismatch or withheld, not {verdict.reason!r}"
        ) from None
    leaf = check_bytes(verdict.leaf, "verdict leaf")
    signer = check_address(verdict.signer, "verdict signer")
    exists = session.scalars(
        select(VerdictRecord.id).where(
            VerdictRecord.leaf_hash == leaf,
            VerdictRecord.reason == reason,
            VerdictRecord.signer == signer,
        )
    ).first()
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                VerdictRecord(
                    node=check_address(verdict.node, "verdict node"),
                    batch_id=check_int(verdict.batch_id, "batch id", low=1),
                    leaf_hash=leaf,
                    reason=reason,
                    signer=signer,
                    signature=check_bytes(verdict.signature, "verdict signature", 65),
                )
            )
    except IntegrityError:
        return False
    return True


def verdicts_for(session: Session, leaf_hash: bytes, reason: Reason) -> list[Verdict]:
    """Every kept verdict about `leaf_hash` for `reason`, by signer address."""
    rows = session.scalars(
        select(VerdictRecord)
        .where(
            VerdictRecord.leaf_hash == check_bytes(leaf_hash, "leaf hash"),
            VerdictRecord.reason == _REASONS[Reason(reason)],
        )
        .order_by(VerdictRecord.signer)
    )
    return [
        Verdict(
            node=row.node,
            batch_id=row.batch_id,
            leaf=row.leaf_hash,
            reason=Reason(reason),
            signer=row.signer,
            signature=row.signature,
        )
        for row in rows
    ]


# --- what the status shows ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifierTotals:
    """A verifier's counts, for its status."""

    audits: int  # audits done (any outcome)
    passed: int
    failed: int  # recomputation disagreed
    withheld: int  # no valid reveal by the deadline
    errors: int  # the audit could not run on our side
    pending: int  # sampled leaves still waiting for a reveal
    slashes: int  # slashes recorded (submitted by us, or by a peer with our verdict)
    withheld_slashes: int  # of those, for a leaf (or its inputs) not revealed in time
    submitted: int  # slash transactions we sent that were mined
    slashed: int  # stake those slashes took, token base units
    bounties: int  # what they paid us, token base units
    verdicts_signed: int  # verdicts we signed


def verifier_totals(session: Session, verifier: str) -> VerifierTotals:
    """Counts of audits by outcome, pending tasks, recorded slashes and bounties, and the
    verdicts `verifier` signed."""
    verifier = check_address(verifier, "verifier")
    outcomes = Counter(session.scalars(select(Audit.outcome)))
    slashes = list(session.scalars(select(Slash)))
    signed = session.scalars(select(VerdictRecord.id).where(VerdictRecord.signer == verifier)).all()
    submitted = session.scalars(
        select(SentTransaction.id).where(
            SentTransaction.sender == verifier,
            SentTransaction.function.in_(SLASH_FUNCTIONS),
            SentTransaction.status == TxStatus.MINED,
        )
    ).all()
    return VerifierTotals(
        audits=sum(outcomes.values()),
        passed=outcomes[AuditOutcome.PASSED],
        failed=outcomes[AuditOutcome.FAILED],
        withheld=outcomes[AuditOutcome.WITHHELD],
        errors=outcomes[AuditOutcome.ERROR],
        pending=pending_audit_count(session),
        slashes=len(slashes),
        withheld_slashes=sum(s.reason is SlashReason.WITHHELD for s in slashes),
        submitted=len(submitted),
        slashed=sum(s.amount for s in slashes),
        bounties=sum(s.bounty for s in slashes),
        verdicts_signed=len(signed),
    )


def is_slash_recorded(session: Session, tx_hash: bytes) -> bool:
    """True once a slash transaction `tx_hash` is in the ledger."""
    return (
        session.scalars(
            select(Slash.id).where(Slash.tx_hash == check_bytes(tx_hash, "tx hash"))
        ).first()
        is not None
    )
