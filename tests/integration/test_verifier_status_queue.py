"""`stakeswarm verifier status` on the session devnet: the audit queue a verifier's ledger holds
(pending per node, the recent audit rate and the time to drain it) and its slashes in tokens,
as a newcomer reads them, through typer's CliRunner."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eth_account import Account
from typer.testing import CliRunner

from ledger.db import (
    AuditOutcome,
    SlashReason,
    add_audit_task,
    open_ledger,
    record_audit,
    record_slash,
    sqlite_url,
)
from ledger.deployment import TOKEN, Deployment
from ledger.units import format_time
from stakeswarm.cli import app
from stakeswarm.swarm import process_home
from tests.integration.verifiers import status_field
from verifier.queue import drop_tasks, format_duration

BUSY, IDLE = Account.create().address, Account.create().address


def test_status_shows_the_queue_per_node_the_rate_and_the_time_to_drain_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    home = process_home(deployment, tmp_path / "home")
    address = deployment.account("verifier-1").address
    folder = home / "verifier" / address
    folder.mkdir(parents=True)
    ledger = open_ledger(sqlite_url(folder / "ledger.sqlite"))
    now = datetime.now(UTC)
    try:
        with ledger.begin() as db:
            for index in range(12):
                add_audit_task(db, node=BUSY, batch_id=1, leaf_index=index,
                               deadline=now + timedelta(hours=1))  # fmt: skip
            add_audit_task(db, node=IDLE, batch_id=2, leaf_index=0,
                           deadline=now + timedelta(hours=1))  # fmt: skip
            # a leaf of a batch already slashed: dropped, never audited
            add_audit_task(db, node=BUSY, batch_id=4, leaf_index=1,
                           deadline=now + timedelta(hours=1))  # fmt: skip
            drop_tasks(db, BUSY, batch_id=4)
            for index in range(10):
                record_audit(db, node=IDLE, batch_id=3, leaf_hash=bytes([index + 1]) * 32,
                             leaf_index=index, outcome=AuditOutcome.PASSED, detail="ok")  # fmt: skip
            record_slash(db, node=BUSY, batch_id=4, leaf_hash=b"\x09" * 32,
                         reason=SlashReason.MISMATCH, amount=20 * TOKEN, bounty=4 * TOKEN,
                         tx_hash=b"\x0a" * 32)  # fmt: skip
    finally:
        ledger.close()
    command = ["verifier", "status", "--devnet", "--home", str(home), "--account", "verifier-1"]

    shown = CliRunner().invoke(app, command)

    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert status_field(text, "queued") == "13"
    assert status_field(text, "audits skipped") == "1"
    assert status_field(text, "audited recently") == "10 in the last 5 min"
    # ten audits just now: counted over at least 5 s, so at most 2/s, 13 queued in ~7 s or more
    rate = float(status_field(text, "audit rate").removesuffix("/s"))
    assert 0 < rate <= 2
    shown_rates = (rate - 0.005, rate, rate + 0.005)  # the rate is shown rounded
    assert status_field(text, "time to drain") in {format_duration(13 / r) for r in shown_rates}
    assert f"{BUSY}  12 (12 due, oldest sampled {format_time(int(now.timestamp()))[:10]}" in text
    assert f"{IDLE}  1 (1 due, oldest sampled " in text
    assert status_field(text, "stake slashed") == "20 SWARM"
    assert status_field(text, "bounties earned") == "4 SWARM"

    as_json = CliRunner().invoke(app, [*command, "--json"])
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    assert document["slashes"]["stake_taken_base_units"] == str(20 * TOKEN)
    assert document["queue"]["pending"] == 13
    assert [n["node"] for n in document["queue"]["per_node"]] == [BUSY, IDLE]
