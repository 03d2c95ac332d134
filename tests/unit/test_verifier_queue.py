"""The audit queue: the order nodes are audited in, the tasks it drops, and the rate and the
estimate a person reads in `verifier status` and the log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from eth_utils import to_checksum_address

from ledger.db import AuditOutcome, Ledger, add_audit_task, open_ledger, record_audit, sqlite_url
from verifier.queue import (
    NodeQueue,
    NodeStanding,
    audit_rate,
    drain_estimate,
    drop_tasks,
    due_tasks_of,
    format_duration,
    node_queues,
    order_nodes,
    progress_line,
    queue_report,
)
from verifier.worth import Worth

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
A, B, C, D = (str(to_checksum_address(f"0x{i:040x}")) for i in (0xA, 0xB, 0xC, 0xD))


def standing(node: str, stake: int, *, active: bool = True, worth: bool = True) -> NodeStanding:
    return NodeStanding(node, active, Worth(worth, stake, stake // 10, stake // 10, 1))


def test_nodes_worth_slashing_come_first_active_then_by_stake_then_age() -> None:
    queues = [
        NodeQueue(A, 5, 5, T0),  # the oldest, but its stake is dust
        NodeQueue(B, 5, 5, T0 + timedelta(seconds=3)),  # inactive (slashed below its span)
        NodeQueue(C, 5, 5, T0 + timedelta(seconds=2)),
        NodeQueue(D, 5, 5, T0 + timedelta(seconds=1)),
    ]
    standings: dict[str, NodeStanding] = {
        A: standing(A, 17, worth=False),
        B: standing(B, 100, active=False),
        C: standing(C, 40),
        D: standing(D, 40),
    }
    # C and D stake the same: the older queue first; B has the most stake but is inactive
    assert [q.node for q in order_nodes(queues, standings)] == [D, C, B, A]
    standings[C] = standing(C, 41)
    assert [q.node for q in order_nodes(queues, standings)] == [C, D, B, A]


def test_the_rate_counts_the_recent_audits_over_the_time_they_took() -> None:
    now = T0 + timedelta(minutes=10)
    # 60 audits in the last 30 s, and some older than the window
    times = [now - timedelta(seconds=s / 2) for s in range(60)]
    times += [now - timedelta(minutes=7)] * 10
    rate = audit_rate(times, now)
    assert rate is not None and abs(rate - 60 / 29.5) < 1e-9
    assert audit_rate([now], now) is None  # one audit is no rate
    assert audit_rate([now, now], now) == 2 / 5  # a burst counts over at least 5 s
    assert drain_estimate(756, 2.1) == pytest.approx(360)
    assert drain_estimate(0, None) == 0.0
    assert drain_estimate(5, None) is None


def test_durations_read_as_a_person_says_them() -> None:
    assert format_duration(None) == "unknown"
    assert format_duration(12.2) == "~13 s"
    assert format_duration(360) == "~6 min"
    assert format_duration(3 * 3600) == "~3.0 h"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = open_ledger(sqlite_url(tmp_path / "verifier.sqlite"))
    try:
        yield opened
    finally:
        opened.close()


def test_the_queue_report_shows_pending_per_node_and_the_time_to_drain(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    deadline = now + timedelta(hours=1)
    with ledger.begin() as db:
        for index in range(6):
            add_audit_task(db, node=A, batch_id=1, leaf_index=index, deadline=deadline)
        for index in range(3):
            add_audit_task(db, node=B, batch_id=2, leaf_index=index, deadline=deadline,
                           not_before=now + timedelta(minutes=5))  # fmt: skip
        for index in range(4):
            record_audit(db, node=C, batch_id=3, leaf_hash=bytes([index]) * 32, leaf_index=index,
                         outcome=AuditOutcome.PASSED, detail="ok")  # fmt: skip
    with ledger.begin() as db:
        report = queue_report(db, skipped={D: "stake 0.000000000017 SWARM pays ..."})
    assert report.pending == 9 and report.done == 4 and report.done_recent == 4
    assert [(q.node, q.pending, q.due) for q in report.per_node] == [(A, 6, 6), (B, 3, 0)]
    assert report.rate == pytest.approx(4 / 5)  # four audits just now: over the 5 s minimum
    assert report.estimate == pytest.approx(9 / 0.8)
    assert progress_line(report, report.done) == "audits: 4 done, 9 queued (~12 s at 0.8/s)"

    with ledger.begin() as db:
        assert [t.leaf_index for t in due_tasks_of(db, A, limit=4)] == [0, 1, 2, 3]
        assert due_tasks_of(db, B, limit=4) == []  # not due yet
        assert drop_tasks(db, A, batch_id=99) == 0
        assert drop_tasks(db, A, batch_id=1) == 6
        assert [q.node for q in node_queues(db)] == [B]
        assert drop_tasks(db, B) == 3
        assert node_queues(db) == []
        report = queue_report(db)
    assert (report.pending, report.dropped, report.done) == (0, 9, 4)
    assert progress_line(report, report.done).startswith("audits: 4 done, 9 skipped, 0 queued")
