"""The verifier's records in a real, migrated ledger (SQLite and PostgreSQL): the event cursor,
sampled leaves waiting for their reveal, verdicts towards a quorum, and the totals its status
shows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from eth_account import Account
from eth_utils import keccak

from ledger import db
from ledger.db import AuditTaskStatus, Ledger, SlashReason, TxStatus
from ledger.db.columns import utcnow
from ledger.errors import LedgerDbError
from ledger.types import Reason, Verdict

CHAIN = 31337
COMMITMENTS = "0x1000000000000000000000000000000000000001"
NODE = "0x90F79bf6EB2c4F870365E785982E1f101E93b906"
ME = Account.create().address
PEER = Account.create().address


@pytest.fixture
def ledger(ledger_db_url: str) -> Iterator[Ledger]:
    opened = db.open_ledger(ledger_db_url)
    yield opened
    opened.close()


def test_the_cursor_starts_empty_and_only_moves_forward(ledger: Ledger) -> None:
    with ledger.begin() as session:
        assert db.get_cursor(session, CHAIN, COMMITMENTS) is None
        db.set_cursor(session, CHAIN, COMMITMENTS, 10)
        db.set_cursor(session, CHAIN, COMMITMENTS, 7)  # an older read never moves it back
    with ledger.begin() as session:
        assert db.get_cursor(session, CHAIN, COMMITMENTS) == 10
        assert db.get_cursor(session, CHAIN, NODE) is None  # per contract
        db.set_cursor(session, CHAIN, COMMITMENTS, 12)
    with ledger.begin() as session:
        assert db.get_cursor(session, CHAIN, COMMITMENTS) == 12


def test_sampled_leaves_wait_until_audited_or_retried(ledger: Ledger) -> None:
    now = utcnow()
    deadline = now + timedelta(minutes=10)
    with ledger.begin() as session:
        first = db.add_audit_task(
            session, node=NODE, batch_id=3, leaf_index=1, deadline=deadline, not_before=now
        )
        assert first is not None
        # sampling the same leaf again (a restart re-reading events) queues nothing
        assert (
            db.add_audit_task(session, node=NODE, batch_id=3, leaf_index=1, deadline=deadline)
            is None
        )
        later = db.add_audit_task(
            session, node=NODE, batch_id=3, leaf_index=2, deadline=deadline,
            not_before=now + timedelta(minutes=1),
        )  # fmt: skip
        assert later is not None
        first_id, later_id = first.id, later.id
    with ledger.begin() as session:
        assert [t.id for t in db.due_audit_tasks(session, now=now)] == [first_id]
        db.retry_audit_task(session, first_id, at=now + timedelta(seconds=30), error="refused")
        assert db.due_audit_tasks(session, now=now) == []
        assert db.pending_audit_count(session) == 2
    with ledger.begin() as session:
        due = db.due_audit_tasks(session, now=now + timedelta(minutes=2))
        assert [t.id for t in due] == [first_id, later_id]
        assert due[0].attempts == 1 and due[0].last_error == "refused"
        db.finish_audit_task(session, first_id)
    with ledger.begin() as session:
        assert [t.id for t in db.due_audit_tasks(session, now=deadline)] == [later_id]
        assert session.get(db.AuditTask, first_id).status is AuditTaskStatus.DONE
        assert db.pending_audit_count(session) == 1
        with pytest.raises(LedgerDbError, match="no audit task"):
            db.finish_audit_task(session, 999)


def verdict(
    signer: str, reason: Reason = Reason.MISMATCH, leaf: bytes = keccak(b"leaf")
) -> Verdict:
    return Verdict(NODE, 3, leaf, reason, signer, bytes([len(signer) % 251]) * 65)


def test_verdicts_are_kept_once_per_signer_and_reason(ledger: Ledger) -> None:
    leaf = keccak(b"leaf")
    with ledger.begin() as session:
        assert db.record_verdict(session, verdict(ME))
        assert not db.record_verdict(session, verdict(ME))  # the same one, shared again
        assert db.record_verdict(session, verdict(PEER))
        assert db.record_verdict(session, verdict(PEER, Reason.WITHHELD))
        with pytest.raises(LedgerDbError, match="mismatch or withheld"):
            db.record_verdict(session, verdict(ME, Reason.NONE))
    with ledger.begin() as session:
        mismatch = db.verdicts_for(session, leaf, Reason.MISMATCH)
        assert sorted(v.signer for v in mismatch) == sorted([ME, PEER])
        assert all(v.reason is Reason.MISMATCH and v.leaf == leaf for v in mismatch)
        assert [v.signer for v in db.verdicts_for(session, leaf, Reason.WITHHELD)] == [PEER]
        assert db.verdicts_for(session, keccak(b"other"), Reason.MISMATCH) == []


def test_a_withheld_audit_may_lack_the_leaf_nothing_else_may(ledger: Ledger) -> None:
    with ledger.begin() as session:
        audit = db.record_audit(
            session, node=NODE, batch_id=3, leaf_hash=None, leaf_index=4, outcome="withheld",
            detail="never answered",
        )  # fmt: skip
        assert audit.leaf_hash is None and audit.leaf_index == 4
        with pytest.raises(LedgerDbError, match="only a withheld audit"):
            db.record_audit(session, node=NODE, batch_id=3, leaf_hash=None, outcome="failed")


def test_totals_count_audits_slashes_bounties_and_our_submissions(ledger: Ledger) -> None:
    with ledger.begin() as session:
        for index, outcome in enumerate(["passed", "passed", "failed", "withheld", "error"]):
            db.record_audit(
                session, node=NODE, batch_id=1, leaf_hash=keccak(bytes([index])),
                leaf_index=index, outcome=outcome,
            )  # fmt: skip
        db.add_audit_task(session, node=NODE, batch_id=2, leaf_index=0, deadline=utcnow())
        db.record_verdict(session, verdict(ME))
        db.record_verdict(session, verdict(PEER))
        slashes = [(SlashReason.MISMATCH, 10**21, 10**20), (SlashReason.WITHHELD, 5 * 10**20, 0)]
        for n, (reason, amount, bounty) in enumerate(slashes):
            db.record_slash(
                session, node=NODE, batch_id=1, leaf_hash=keccak(bytes([n])),
                reason=reason, amount=amount, bounty=bounty, tx_hash=keccak(b"tx%d" % n),
            )  # fmt: skip
        db.record_tx(
            session, tx_hash=keccak(b"tx0"), sender=ME, to=COMMITMENTS, function="Slasher.slash",
            nonce=0,
        )  # fmt: skip
        db.update_tx(session, keccak(b"tx0"), status=TxStatus.MINED)
        db.record_tx(
            session, tx_hash=keccak(b"tx9"), sender=ME, to=COMMITMENTS, function="Slasher.slash",
            nonce=1,
        )  # fmt: skip
        db.update_tx(session, keccak(b"tx9"), status=TxStatus.REVERTED)
        db.record_tx(
            session, tx_hash=keccak(b"tx1"), sender=ME, to=COMMITMENTS,
            function="Slasher.slashWithheld", nonce=2,
        )  # fmt: skip
        db.update_tx(session, keccak(b"tx1"), status=TxStatus.MINED)
    with ledger.begin() as session:
        totals = db.verifier_totals(session, ME)
        assert db.is_slash_recorded(session, keccak(b"tx1"))
        assert not db.is_slash_recorded(session, keccak(b"tx9"))
    assert (totals.audits, totals.passed, totals.failed) == (5, 2, 1)
    assert (totals.withheld, totals.errors, totals.pending) == (1, 1, 1)
    # the reverted one is not counted; a withheld slash counts like any other
    assert (totals.slashes, totals.submitted, totals.withheld_slashes) == (2, 2, 1)
    assert totals.slashed == 15 * 10**20 and totals.bounties == 10**20
    assert totals.verdicts_signed == 1
