"""A verifier's ledger is bound to its chain, as a node's and a client's are (issue 13): one
left by a devnet that was restarted in the same home (same chain id, same contract addresses,
another genesis) is set aside, so its event cursor cannot make the verifier skip the new
chain's batches. A real `stakeswarm verifier run` process on the session's Anvil.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.db import sqlite_url
from ledger.db.binding import open_chain_ledger
from ledger.db.verifier import get_cursor, set_cursor
from ledger.deployment import Deployment
from stakeswarm.swarm import process_home, running_verifier

pytestmark = pytest.mark.timeout(300)


def test_a_verifier_sets_aside_a_ledger_of_a_vanished_chain(
    deployment: Deployment, chain: Chain, model_path: Path, tmp_path: Path
) -> None:
    address = deployment.account("verifier-0").address
    commitments = Contracts.from_deployment(chain, deployment).commitments.address
    home = process_home(deployment, tmp_path / "verifier-0" / "home")
    folder = home / "verifier" / address
    folder.mkdir(parents=True)
    # the ledger of an earlier chain with this chain id: its cursor is far ahead of this one's
    ahead = chain.w3.eth.block_number + 1_000_000
    old = open_chain_ledger(
        sqlite_url(folder / "ledger.sqlite"),
        chain_id=chain.chain_id,
        anchor_block=0,
        block_hash=lambda number: b"\x42" * 32,  # not this chain's genesis
    )
    try:
        with old.begin() as db:
            set_cursor(db, chain.chain_id, commitments, ahead)
    finally:
        old.close()

    with running_verifier(deployment, tmp_path, model_path, "verifier-0", []) as verifier:
        log = verifier.stderr.read_text(errors="replace")
        with sqlite3.connect(f"file:{folder / 'ledger.sqlite'}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT last_block FROM verifier_cursors").fetchall()
    assert verifier.home == home
    stale = list(folder.glob("ledger.stale-*.sqlite"))
    assert len(stale) == 1, sorted(p.name for p in folder.iterdir())
    assert "Moved it to" in log and "started a fresh ledger" in log
    # the fresh ledger samples this chain from its own blocks
    assert all(last < ahead for (last,) in rows), rows
    aside = open_chain_ledger(
        sqlite_url(stale[0]),
        chain_id=chain.chain_id,
        anchor_block=0,
        block_hash=lambda n: b"\x42" * 32,
    )
    try:
        with aside.begin() as db:
            assert get_cursor(db, chain.chain_id, commitments) == ahead  # kept, not lost
    finally:
        aside.close()
