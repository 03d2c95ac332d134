"""The audit queue: which sampled leaves are audited first, which are dropped, and how long the
rest will take.

Order: the pending tasks are grouped by node; nodes worth slashing (`verifier.worth`) come
first, active ones before inactive ones, then by slashable stake (the most at risk first), then
by their oldest task; within a node, oldest task first. Tasks are dropped (closed without an
audit) when their node is not worth a slash any more, or when a slash of the node for the same
batch already landed: one slash per batch is enough, and another would find the node's stake
already cut.

The rate is the audits recorded in the last `RATE_WINDOW` seconds (over the part of the window
the verifier was auditing), and the estimate is the pending count at that rate. The pure
functions (`order_nodes`, `audit_rate`, `drain_estimate`, `format_duration`) are what the tests
pin; the `Session` functions are the ledger reads and writes behind them (the caller owns the
transaction).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, case, exists, func, select, update
from sqlalchemy.orm import Session

from ledger.db import Audit, AuditTask, AuditTaskStatus
from ledger.db.columns import utcnow
from ledger.units import format_time
from verifier.worth import Worth

RATE_WINDOW = 300.0  # seconds of recent audits the rate is measured over
RATE_MIN_AUDITS = 2  # audits in the window the rate needs (fewer: no estimate)
RATE_MIN_SPAN = 5.0  # seconds the measured span is at least (a burst is not a rate)


@dataclass(frozen=True)
class NodeStanding:
    """What the queue knows of a node: whether it is active and what a slash of it pays."""

    node: str
    active: bool  # NodeRegistry.isActive
    worth: Worth  # one more slash against its gas


@dataclass(frozen=True)
class NodeQueue:
    """A node's pending tasks."""

    node: str
    pending: int  # tasks not audited yet
    due: int  # of those, due now
    oldest: datetime  # when its oldest pending task was sampled


def priority(standing: NodeStanding, queue: NodeQueue) -> tuple[bool, bool, int, datetime, str]:
    """Sort key of a node's tasks: worth slashing first, then active, then the most slashable
    stake, then the oldest task (the address breaks ties, for a stable order)."""
    return (
        not standing.worth.worth,
        not standing.active,
        -standing.worth.stake,
        queue.oldest,
        standing.node,
    )


def order_nodes(queues: Iterable[NodeQueue], standings: dict[str, NodeStanding]) -> list[NodeQueue]:
    """`queues` in audit order (`priority`); every node must have a standing."""
    return sorted(queues, key=lambda q: priority(standings[q.node], q))


def audit_rate(
    times: Sequence[datetime], now: datetime, window: float = RATE_WINDOW
) -> float | None:
    """Audits per second over the part of the last `window` seconds since the first audit in
    it (at least `RATE_MIN_SPAN`); None with fewer than `RATE_MIN_AUDITS` audits in it."""
    recent = [t for t in times if (now - t).total_seconds() <= window]
    if len(recent) < RATE_MIN_AUDITS:
        return None
    span = max((now - min(recent)).total_seconds(), RATE_MIN_SPAN)
    return len(recent) / span


def drain_estimate(pending: int, rate: float | None) -> float | None:
    """Seconds to audit `pending` tasks at `rate` per second (0 when none); None without a rate."""
    if pending == 0:
        return 0.0
    if rate is None or rate <= 0:
        return None
    return pending / rate


def format_duration(seconds: float | None) -> str:
    """A rough duration for a person ("~40 s", "~6 min", "~2.5 h"; "unknown" for None)."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"~{math.ceil(seconds)} s"
    if seconds < 90 * 60:
        return f"~{math.ceil(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class QueueReport:
    """The queue as `verifier status` and the progress log show it."""

    done: int  # audits recorded, ever
    dropped: int  # tasks closed without an audit (node not worth a slash, batch slashed)
    pending: int  # tasks not audited yet
    per_node: list[NodeQueue]
    done_recent: int  # audits recorded in the last `window` seconds
    window: float
    rate: float | None  # audits per second, recently
    estimate: float | None  # seconds to drain the queue at that rate
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why its audits are dropped


# --- ledger reads and writes --------------------------------------------------------------------


def node_queues(session: Session, *, now: datetime | None = None) -> list[NodeQueue]:
    """Pending tasks per node (how many, how many due, the oldest), unordered."""
    now = utcnow() if now is None else now
    due = func.sum(case((AuditTask.next_attempt_at <= now, 1), else_=0))
    rows = session.execute(
        select(AuditTask.node, func.count(AuditTask.id), due, func.min(AuditTask.created_at))
        .where(AuditTask.status == AuditTaskStatus.PENDING)
        .group_by(AuditTask.node)
    )
    return [NodeQueue(node, int(count), int(due or 0), oldest) for node, count, due, oldest in rows]


def due_tasks_of(
    session: Session, node: str, *, limit: int, now: datetime | None = None
) -> list[AuditTask]:
    """`node`'s pending tasks that are due, oldest first."""
    now = utcnow() if now is None else now
    return list(
        session.scalars(
            select(AuditTask)
            .where(
                AuditTask.status == AuditTaskStatus.PENDING,
                AuditTask.node == node,
                AuditTask.next_attempt_at <= now,
            )
            .order_by(AuditTask.created_at, AuditTask.id)
            .limit(limit)
        )
    )


def drop_tasks(session: Session, node: str, *, batch_id: int | None = None) -> int:
    """Close `node`'s pending tasks (of batch `batch_id` only, when given) without an audit;
    how many were closed."""
    query = update(AuditTask).where(
        AuditTask.status == AuditTaskStatus.PENDING, AuditTask.node == node
    )
    if batch_id is not None:
        query = query.where(AuditTask.batch_id == batch_id)
    result = session.execute(query.values(status=AuditTaskStatus.DONE))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def pending_batches(session: Session) -> set[tuple[str, int]]:
    """The (node, batch id) pairs with pending tasks."""
    rows = session.execute(
        select(AuditTask.node, AuditTask.batch_id)
        .where(AuditTask.status == AuditTaskStatus.PENDING)
        .distinct()
    )
    return {(node, int(batch_id)) for node, batch_id in rows}


def dropped_count(session: Session) -> int:
    """Tasks closed without an audit of their leaf (`drop_tasks`)."""
    audited = exists().where(
        and_(Audit.batch_id == AuditTask.batch_id, Audit.leaf_index == AuditTask.leaf_index)
    )
    query = select(func.count(AuditTask.id)).where(
        AuditTask.status == AuditTaskStatus.DONE, ~audited
    )
    return int(session.scalar(query) or 0)


def recent_audit_times(
    session: Session, *, now: datetime | None = None, window: float = RATE_WINDOW
) -> list[datetime]:
    """When the audits of the last `window` seconds were recorded."""
    now = utcnow() if now is None else now
    since = now - timedelta(seconds=window)
    return list(session.scalars(select(Audit.created_at).where(Audit.created_at >= since)))


def queue_report(
    session: Session,
    *,
    now: datetime | None = None,
    window: float = RATE_WINDOW,
    skipped: dict[str, str] | None = None,
) -> QueueReport:
    """The queue, the recent audits and the estimate, read from the ledger."""
    now = utcnow() if now is None else now
    queues = sorted(node_queues(session, now=now), key=lambda q: (-q.pending, q.node))
    times = recent_audit_times(session, now=now, window=window)
    pending = sum(q.pending for q in queues)
    rate = audit_rate(times, now, window)
    return QueueReport(
        done=int(session.scalar(select(func.count(Audit.id))) or 0),
        dropped=dropped_count(session),
        pending=pending,
        per_node=queues,
        done_recent=len(times),
        window=window,
        rate=rate,
        estimate=drain_estimate(pending, rate),
        skipped=dict(skipped or {}),
    )


def queue_document(report: QueueReport) -> dict[str, object]:
    """The `queue` section of `/status` and `verifier status --json`."""
    return {
        "done": report.done,
        "dropped": report.dropped,
        "pending": report.pending,
        "per_node": [
            {
                "node": q.node,
                "pending": q.pending,
                "due": q.due,
                "oldest": q.oldest.isoformat(),
                "oldest_utc": format_time(int(q.oldest.timestamp())),
            }
            for q in report.per_node
        ],
        "skipped": [{"node": node, "reason": why} for node, why in sorted(report.skipped.items())],
        "done_recent": report.done_recent,
        "window_s": report.window,
        "rate_per_s": report.rate,
        "estimate_s": report.estimate,
        "estimate": format_duration(report.estimate),
    }


def progress_line(report: QueueReport, done: int) -> str:
    """The periodic log line: "audits: 120 done, 756 queued (~6 min at 2.1/s)"."""
    rate = "no rate yet" if report.rate is None else f"{report.rate:.1f}/s"
    dropped = f", {report.dropped} skipped" if report.dropped else ""
    return (
        f"audits: {done} done{dropped}, {report.pending} queued "
        f"({format_duration(report.estimate)} at {rate})"
    )
