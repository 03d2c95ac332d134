"""Ledgers in PostgreSQL (`node serve --db postgresql://...`, `client ... --db ...`), on the
session's Anvil and its throwaway PostgreSQL server (`tests/postgres_server.py`):

- a node and a paying client (`client generate --db ...`, `client channels --db ...`) each keep
  their ledger in a database of their own: the node holds the client's last voucher and
  commits every leaf, the client keeps every receipt, `chain node earnings --db ...` reads
  what is owed from the node's, and no SQLite ledger file appears;
- a database it cannot reach stops the start before `ready` with one error line that names
  the database, its password hidden, and no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.db import (
    client_channels,
    commitment_counts,
    held_vouchers,
    open_ledger,
    receipts_of,
)
from ledger.deployment import Deployment
from stakeswarm.swarm import process_home
from tests.integration.nodes import (
    NodeSpec,
    chain_snapshot,
    running_nodes,
    start_node,
    wait_committed,
)
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "2")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "stakeswarm", *args, "--devnet", "--home", str(home)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_node_and_a_client_keep_their_ledgers_in_postgresql(
    deployment: Deployment,
    chain: Chain,
    model_path: Path,
    tmp_path: Path,
    postgres_server: PostgresServer,
) -> None:
    node_db, client_db = postgres_server.create_database(), postgres_server.create_database()
    spec = NodeSpec("node-0", "0:6", args=(*NODE_ARGS, "--db", node_db))
    home = process_home(deployment, tmp_path / "client-home")
    client = deployment.account("client-0").address
    with chain_snapshot(chain):
        with running_nodes(deployment, tmp_path, model_path, [spec]) as (node,):
            peers = [arg for maddr in node.maddrs for arg in ("--initial-peers", maddr)]
            generated = _cli(
                home, "client", "generate", "Hello", "--model", str(model_path), "--max-new-tokens", "3",
                *peers, "--db", client_db,
            )  # fmt: skip
            assert generated.returncode == 0, generated.stderr
            assert "Paid this run" in generated.stdout
            wait_committed(node, 3)  # the prompt's step and two decode steps
            assert node.status()["ledger"] == {"ok": True, "failure": None}
        listed = _cli(home, "client", "channels", "--db", client_db)
        earnings = _cli(
            node.home, "chain", "node", "earnings", "--account", "node-0", "--db", node_db
        )
        channels = Contracts.from_deployment(chain, deployment).payment_channels.address
        node_ledger, client_ledger = open_ledger(node_db), open_ledger(client_db)
        try:
            with node_ledger.begin() as db:
                counts = commitment_counts(db)
                vouchers = held_vouchers(db, chain.chain_id, channels)
            with client_ledger.begin() as db:
                receipts = receipts_of(db, server=node.address)
                (channel,) = client_channels(db, chain.chain_id, channels, client)
        finally:
            node_ledger.close()
            client_ledger.close()
    assert listed.returncode == 0, listed.stderr
    assert node.address in listed.stdout and "open" in listed.stdout
    assert earnings.returncode == 0, earnings.stderr
    assert "owed" in earnings.stdout and "unknown" not in earnings.stdout, earnings.stdout
    assert counts.committed_leaves == 3 and counts.committed_batches >= 1
    # what the node holds is what the client signed, and the client kept every receipt
    assert vouchers == {channel.channel_id: channel.voucher_amount} and channel.voucher_amount > 0
    assert len(receipts) == 3 and sum(r.cost for r in receipts) == channel.voucher_amount
    assert not list((node.home / "node" / node.address).glob("ledger*.sqlite*"))
    assert not list((home / "client").glob("*/ledger*.sqlite*"))


def test_a_node_whose_database_cannot_be_reached_names_it(
    deployment: Deployment, model_path: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://operator:hunter2-secret@127.0.0.1:{port}/ledger"
    node = start_node(
        NodeSpec("node-1", "0:4", args=("--db", url)), deployment, tmp_path, model_path
    )
    try:
        deadline = time.monotonic() + 120
        while node.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not node.alive(), f"{node.name} neither exited nor failed:\n{node.logs()}"
    finally:
        node.stop()
    err = node.stderr.read_text(errors="replace")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    shown = f"postgresql+psycopg://operator:***@127.0.0.1:{port}/ledger"
    assert f"cannot connect to the ledger database {shown}" in errors[0]
    assert "hunter2-secret" not in err and "Traceback" not in err
    assert "ready" not in node.output()
