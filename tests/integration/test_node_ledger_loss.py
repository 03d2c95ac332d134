"""A node whose ledger was lost or damaged does not start blind (issue 12, findings 3 and 4).

Real `python -m node serve` processes on the session's Anvil:

- a node serves a paid session and commits it, is killed (kill -9), and its ledger is deleted
  with its -wal and -shm: started again it refuses, saying which channels and batches it can no
  longer redeem or reveal; with `--new-ledger` it starts, with that warning;
- a node's ledger with overwritten middle pages, or with a garbage write-ahead log, stops the
  start before `ready` with one error line that names the file and what to do;
- a node restarted on a backup older than its last commits starts, and warns which committed
  batches its ledger no longer holds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.deployment import Deployment
from tests.integration.nodes import (
    NodeProcess,
    NodeSpec,
    Payer,
    chain_snapshot,
    client_p2p,
    running_nodes,
    serve_two_steps,
    start_node,
    wait_committed,
)

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "2")
PAGE = 4096


def _ledger(node: NodeProcess) -> Path:
    return node.home / "node" / node.address / "ledger.sqlite"


def _refused(node: NodeProcess, timeout: float = 120) -> str:
    """Wait for `node` to exit without ever printing `ready`; its stderr."""
    deadline = time.monotonic() + timeout
    while node.alive():
        assert "ready" not in node.output(), f"{node.name} started:\n{node.logs()}"
        assert time.monotonic() < deadline, f"{node.name} neither exited nor started"
        time.sleep(0.2)
    node.stop()
    assert "ready" not in node.output(), node.logs()
    assert node.process.returncode != 0, node.logs()
    return node.stderr.read_text(errors="replace")


def _restart(spec: NodeSpec, deployment: Deployment, workdir: Path, model: Path) -> NodeProcess:
    return start_node(spec, deployment, workdir, model)


def test_a_node_refuses_to_start_on_a_lost_ledger_unless_told(
    deployment: Deployment, chain: Chain, model_path: Path, tmp_path: Path
) -> None:
    spec = NodeSpec("node-0", "0:4", args=NODE_ARGS)
    with chain_snapshot(chain):
        with running_nodes(deployment, tmp_path, model_path, [spec]) as (node,):
            with client_p2p(node.maddrs) as (runner, p2p):
                serve_two_steps(runner, p2p, Payer(deployment, chain), node)
            wait_committed(node, 2)
            os.killpg(node.pid, signal.SIGKILL)  # a crash: no last redemption
            node.process.wait(30)
        ledger = _ledger(node)
        for suffix in ("", "-wal", "-shm"):
            ledger.with_name(ledger.name + suffix).unlink(missing_ok=True)

        again = _restart(spec, deployment, tmp_path, model_path)
        err = _refused(again)
        assert f"the ledger {ledger} is new, but the chain shows node {node.address}" in err
        assert "1 channel(s) still hold 10 SWARM for this node" in err
        channel = r"channel \d+ from 0x[0-9a-fA-F]{40}: deposit 10 SWARM, redeemed 0 SWARM, "
        assert re.search(channel + r"expires 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC", err)
        assert "batch(es) of 2 leaves were committed by this node" in err
        assert "--new-ledger" in err and "Traceback" not in err
        assert not ledger.exists()  # no empty ledger left where a backup goes

        told = NodeSpec("node-0", "0:4", args=(*NODE_ARGS, "--new-ledger"))
        with running_nodes(deployment, tmp_path, model_path, [told]) as (node,):
            assert node.status()["ledger"] == {"ok": True, "failure": None}
            log = node.stderr.read_text(errors="replace")
            assert "WARN node.recovery: STARTING ON A NEW LEDGER (--new-ledger)" in log
            assert "batch(es) of 2 leaves" in log


def test_a_damaged_ledger_stops_the_start_with_one_clear_line(
    deployment: Deployment, chain: Chain, model_path: Path, tmp_path: Path
) -> None:
    spec = NodeSpec("node-1", "0:4", args=NODE_ARGS)
    with chain_snapshot(chain):
        with running_nodes(deployment, tmp_path, model_path, [spec]) as (node,):
            pass  # registered, ledger written and closed cleanly (checkpointed)
        ledger = _ledger(node)
        good = tmp_path / "good.sqlite"
        shutil.copy(ledger, good)
        size = ledger.stat().st_size
        assert size > 8 * PAGE

        with ledger.open("r+b") as file:  # middle pages overwritten
            file.seek(size // 2 // PAGE * PAGE)
            file.write(os.urandom(2 * PAGE))
        err = _refused(_restart(spec, deployment, tmp_path, model_path))
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err
        assert f"the ledger {ledger} is damaged" in errors[0]
        assert "restore the ledger from a backup" in errors[0] and "--new-ledger" in errors[0]
        assert "Traceback" not in err

        shutil.copy(good, ledger)  # sound file, garbage write-ahead log beside it
        ledger.with_name(ledger.name + "-wal").write_bytes(os.urandom(16 * PAGE))
        err = _refused(_restart(spec, deployment, tmp_path, model_path))
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err
        assert f"the ledger {ledger} is damaged" in errors[0] and "write-ahead log" in errors[0]
        assert "already exists" not in err and "Traceback" not in err

        # --new-ledger moves the damaged ledger aside and starts
        told = NodeSpec("node-1", "0:4", args=(*NODE_ARGS, "--new-ledger"))
        with running_nodes(deployment, tmp_path, model_path, [told]) as (node,):
            assert node.status()["ledger"]["ok"] is True
        assert len(list(ledger.parent.glob("ledger.damaged-*.sqlite"))) == 1


def test_a_ledger_restored_from_an_older_backup_starts_with_what_it_lost_named(
    deployment: Deployment, chain: Chain, model_path: Path, tmp_path: Path
) -> None:
    """Issue 12: a ledger restored from an old backup started as if nothing had happened,
    though the chain shows batches it cannot reveal."""
    spec = NodeSpec("node-2", "0:4", args=NODE_ARGS)
    backup = tmp_path / "backup.sqlite"
    with chain_snapshot(chain):
        with running_nodes(deployment, tmp_path, model_path, [spec]) as (node,):
            payer = Payer(deployment, chain)
            with client_p2p(node.maddrs) as (runner, p2p):
                serve_two_steps(runner, p2p, payer, node)
                wait_committed(node, 2)
                # the operator's backup, as docs/operator.md says: SQLite's online backup
                with sqlite3.connect(_ledger(node)) as live, sqlite3.connect(backup) as copy:
                    live.backup(copy)
                serve_two_steps(runner, p2p, payer, node)
                wait_committed(node, 4)
            contracts = Contracts.from_deployment(chain, deployment)
            committed = {
                b.batch_id
                for b in contracts.commitments.batches_committed(
                    from_block=deployment.deploy_block, node=node.address
                )
            }
            os.killpg(node.pid, signal.SIGKILL)
            node.process.wait(30)
        ledger = _ledger(node)
        for suffix in ("-wal", "-shm"):
            ledger.with_name(ledger.name + suffix).unlink(missing_ok=True)
        shutil.copy(backup, ledger)

        with running_nodes(deployment, tmp_path, model_path, [spec]) as (again,):
            log = again.stderr.read_text(errors="replace")
        assert "STALE LEDGER" in log and "restored from an older backup?" in log, log
        # the second session's two leaves, committed after the backup
        assert "batch(es) of 2 leaves committed by this node are not in the ledger" in log
        lost = re.findall(r"  batch (\d+) \((\d+) leaves\) committed", log)
        assert lost and {int(n) for n, _ in lost} < committed, (lost, committed)
        assert sum(int(leaves) for _, leaves in lost) == 2
        assert "Traceback" not in log
