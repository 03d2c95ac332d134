"""A node killed while its commit transaction is pending commits the batch once (issue 12,
finding 1).

A real `python -m node serve` process on the session's Anvil, switched to mining nothing until
told (then a block every 2 s) so the node's commit transaction can be caught sent and not mined:
the node serves a paid session, sends its commit, is killed (kill -9) before the transaction is
mined, and is started again on the same home, where it must send nothing while that transaction
is pending. The root must land once on-chain, and every batch in the node's ledger must name
the on-chain batch of its root (a verifier sampling a batch the ledger
does not know gets `not_found`, which is slashed as withheld).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account.signers.local import LocalAccount

from ledger.chain import Chain, ContractRevert, TxFate
from ledger.contracts import Contracts
from ledger.contracts.commitments import ROOT_ALREADY_COMMITTED
from ledger.db import (
    add_leaf,
    get_batch,
    mark_batch_failed,
    open_ledger,
    pending_leaves,
    seal_batch,
    sqlite_url,
)
from ledger.deployment import Deployment
from ledger.types import BlockIndex, Leaf, Wei, model_id
from node.commits import Committer
from tests.integration.nodes import (
    Hop,
    NodeProcess,
    NodeSpec,
    Payer,
    RouteSession,
    chain_snapshot,
    client_p2p,
    mining_paused,
    running_nodes,
)

pytestmark = pytest.mark.timeout(300)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "2")
BLOCK_TIME = 2  # seconds between blocks once the node was killed
COMMIT = "Commitments.commit"
MODEL = model_id("tiny-llama")
PEER = b"\x00\x24\x08\x01\x12\x20" + b"\x09" * 32  # libp2p peer id bytes (never dialled)


def _ledger_rows(node: NodeProcess, query: str) -> list[tuple[Any, ...]]:
    """Rows of `query` on the node's ledger, read beside the running node (SQLite, WAL)."""
    path = node.home / "node" / node.address / "ledger.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return db.execute(query).fetchall()


def _wait_for_sent_commit(node: NodeProcess, chain: Chain, timeout: float = 60) -> str:
    """The hash of the node's commit transaction once it is recorded and in Anvil's pool."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _ledger_rows(
            node, f"SELECT tx_hash, status FROM sent_transactions WHERE function = '{COMMIT}'"
        )
        if rows:
            assert len(rows) == 1 and rows[0][1] == "pending", rows
            tx_hash = "0x" + bytes(rows[0][0]).hex()
            assert chain.transaction(tx_hash)["blockNumber"] is None  # sent, not mined
            return tx_hash
        assert time.monotonic() < deadline, f"{node.name} sent no commit:\n{node.logs()}"
        time.sleep(0.2)


def _first_commit_round(node: NodeProcess, chain: Chain, timeout: float = 60) -> int:
    """Wait until the restarted node, with nothing mined, either says its commit is pending or
    sends another transaction; how many of its transactions then wait in Anvil's pool."""
    deadline = time.monotonic() + timeout
    while True:
        pooled = chain.nonce(node.address, "pending") - chain.nonce(node.address, "latest")
        if pooled > 1 or "is still pending" in node.stderr.read_text(errors="replace"):
            return pooled
        assert time.monotonic() < deadline, f"{node.name} did not try to commit:\n{node.logs()}"
        time.sleep(0.2)


def _wait_settled(node: NodeProcess, chain: Chain, timeout: float = 90) -> None:
    """Wait until the node's ledger holds only committed batches and none of its transactions
    waits in Anvil's pool."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = {s for (s,) in _ledger_rows(node, "SELECT status FROM batches")}
        idle = chain.nonce(node.address, "pending") == chain.nonce(node.address, "latest")
        if statuses == {"committed"} and idle:
            return
        assert time.monotonic() < deadline, f"batches {statuses}, idle {idle}:\n{node.logs()}"
        time.sleep(0.5)


def test_a_node_killed_with_its_commit_pending_commits_the_batch_once(
    deployment: Deployment, chain: Chain, model_path: Path, tmp_path: Path
) -> None:
    spec = NodeSpec("node-0", "0:4", args=NODE_ARGS)
    contracts = Contracts.from_deployment(chain, deployment)
    with chain_snapshot(chain):
        start = chain.block_number()
        with running_nodes(deployment, tmp_path, model_path, [spec]) as (node,):
            payer = Payer(deployment, chain)
            price = int(node.status()["price_per_token_per_block"])
            hop = Hop(node, payer.open_channel(node.address), price)
            with mining_paused(chain), client_p2p(node.maddrs) as (runner, p2p):
                route = RouteSession(runner, p2p, payer, [hop]).open(16)
                generator = torch.Generator().manual_seed(0)
                route.step(torch.randn(1, 5, 64, generator=generator), torch.ones(1, 5).long())
                route.step(torch.randn(1, 1, 64, generator=generator), torch.ones(1, 6).long())
                route.close()
                _wait_for_sent_commit(node, chain)
                os.killpg(node.pid, signal.SIGKILL)  # a crash while the commit is pending
                node.process.wait(30)

                with running_nodes(deployment, tmp_path, model_path, [spec]) as (again,):
                    pooled = _first_commit_round(again, chain)
                    assert pooled == 1, f"{pooled} commit transactions wait: it sent it again"
                    chain.rpc("evm_setIntervalMining", [BLOCK_TIME])
                    _wait_settled(again, chain)
                    batches = _ledger_rows(again, "SELECT chain_batch_id, root FROM batches")
        events = contracts.commitments.batches_committed(from_block=start, node=node.address)
        assert len(batches) == 1, batches
        ((chain_batch_id, root),) = batches
        landed = [e.batch_id for e in events if e.root == root]
        assert landed == [chain_batch_id], f"the root was committed as batches {landed}"
        assert {e.root for e in events} == {root}, "a batch the ledger does not know"
        assert contracts.commitments.get_batch(chain_batch_id, from_block=start).root == root


def test_a_batch_whose_commit_landed_unseen_is_recorded_and_not_sent_again(
    chain: Chain,
    contracts_as: Callable[[str], Contracts],
    dev_account: Callable[[str], LocalAccount],
    tmp_path: Path,
) -> None:
    node = contracts_as("node-1")
    address = dev_account("node-1").address
    node.node_registry.register_with_approve(
        MODEL, BlockIndex(0), BlockIndex(2), Wei(1), PEER, node.node_registry.required_stake(0, 2)
    )
    ledger = open_ledger(sqlite_url(tmp_path / "ledger.sqlite"))
    with ledger.begin() as db:
        for step in range(2):
            digest = bytes([step + 1]) * 32
            leaf = Leaf(b"\x05" * 32, MODEL, 0, 2, step, 1, digest, digest, digest, 1)
            add_leaf(db, leaf, b"\x01" * 65)
        batch = seal_batch(db, pending_leaves(db), node=address)
        root, count = batch.root, batch.leaf_count
        mark_batch_failed(db, batch, "not mined after 120 s")
    # the transaction the node gave up on was mined after all
    landed = node.commitments.committed_batch_id(node.commitments.commit(MODEL, root, count))

    committer = Committer(ledger, node.commitments, node=address, model_id=MODEL, max_leaves=16)
    assert committer.commit_pending() == [landed]
    assert committer.committed_batches == 0, "sent again"
    with ledger.begin() as db:
        recorded = get_batch(db, chain_batch_id=landed)
        assert recorded is not None and recorded.root == root
    assert [e.batch_id for e in node.commitments.batches_committed(node=address)] == [landed]
    with pytest.raises(ContractRevert) as refused:
        node.commitments.commit(MODEL, root, count)
    assert refused.value.name == ROOT_ALREADY_COMMITTED
    assert refused.value.arguments["batchId"] == landed


def test_reconcile_tells_mined_pending_and_dropped_transactions_apart(
    chain: Chain, dev_account: Callable[[str], LocalAccount]
) -> None:
    account = dev_account("client-2")
    sender = chain.sender(account)
    nonce = chain.nonce(account.address, "pending")
    fields: dict[str, Any] = {
        "to": account.address,
        "value": 0,
        "gas": 21_000,
        "maxFeePerGas": 10**11,
        "maxPriorityFeePerGas": 1,
        "nonce": nonce,
        "chainId": chain.chain_id,
        "type": 2,
    }
    never_sent = "0x" + bytes(account.sign_transaction(fields).hash).hex()
    assert sender.reconcile(never_sent, nonce, action="transfer").fate is TxFate.DROPPED
    mined = sender.transfer_eth(account.address, 1)  # takes that nonce
    outcome = sender.reconcile(never_sent, nonce, action="transfer")
    assert outcome.fate is TxFate.DROPPED and "used by another" in outcome.detail
    outcome = sender.reconcile(mined.tx_hash, nonce, action="transfer")
    assert outcome.fate is TxFate.MINED and outcome.result is not None
    assert outcome.result.block_number == mined.block_number

    chain.rpc("evm_setAutomine", [False])
    try:
        signed = account.sign_transaction({**fields, "nonce": nonce + 1})
        chain.w3.eth.send_raw_transaction(signed.raw_transaction)
        pending = "0x" + bytes(signed.hash).hex()
        assert sender.reconcile(pending, nonce + 1, action="transfer").fate is TxFate.PENDING
    finally:
        chain.rpc("evm_setAutomine", [True])
    chain.rpc("evm_mine")
    assert sender.reconcile(pending, nonce + 1, action="transfer").fate is TxFate.MINED
