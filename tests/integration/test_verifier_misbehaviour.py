"""Misbehaviour other than wrong arithmetic, with real node processes on Anvil:

- equivocation: a node started with `--faulty equivocate` serves a step the client sends again
  and signs a second, different receipt for it (an honest node refuses the replay); whoever
  holds both receipts (here a client's ledger, reported with `stakeswarm verifier
  report-equivocation`) slashes it, without verdicts, and earns the bounty;
- withholding: a node whose stored inputs no longer match what it committed shows the leaf
  but cannot reveal its inputs: a withheld verdict and a slash of that leaf. A node that is
  gone shows nothing: by the reveal deadline, withheld verdicts about the positions of its
  leaves, and a `slashWithheld`. Either way one slash per batch: the other leaves of a batch
  already slashed are not slashed again (nor audited, once the slash has landed).

node-0 (blocks 0:3) equivocates, node-1 (3:6) is honest. Everything is reverted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from client.remote import RemoteError
from ledger.contracts import Contracts
from ledger.db import AuditOutcome, audits_of, open_ledger, record_receipt, sqlite_url
from ledger.deployment import Deployment
from ledger.types import Reason
from node.protocol import ErrorCode, SignedReceipt
from stakeswarm.swarm import running_verifier
from tests.integration.nodes import (
    REPO_ROOT,
    NodeProcess,
    NodeSpec,
    PaidSwarm,
    RouteSession,
    chain_snapshot,
    node_home,
    paid_swarm,
    running_nodes,
)
from tests.integration.verifiers import wait_for_status

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "5")


@pytest.fixture(scope="module")
def swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PaidSwarm]:
    chain = deployment.connect()
    specs = [
        NodeSpec("node-0", "0:3", args=(*NODE_ARGS, "--faulty", "equivocate")),
        NodeSpec("node-1", "3:6", args=NODE_ARGS),
    ]
    workdir = tmp_path_factory.mktemp("misbehaviour")
    with (
        chain_snapshot(chain),
        running_nodes(deployment, workdir, model_path, specs) as nodes,
        paid_swarm(deployment, chain, nodes, model_path, workdir) as started,
    ):
        yield started


def hidden_states(seed: int, tokens: int) -> torch.Tensor:
    return torch.randn(1, tokens, 64, generator=torch.Generator().manual_seed(seed))


def replay_last_step(swarm: PaidSwarm, route: RouteSession, hidden: torch.Tensor) -> SignedReceipt:
    """Send the step just served again, with other hidden states."""
    hop, session = route.hops[0], route.sessions[0]
    session.next_step -= 1
    mask = torch.ones(1, 7, dtype=torch.long)
    voucher = swarm.payer.pay(hop.channel, hop.price_per_token)
    _, receipt = swarm.runner.run(session.step(hidden, mask, voucher))
    return receipt


def test_an_equivocating_node_is_slashed_by_whoever_holds_both_receipts(
    swarm: PaidSwarm, tmp_path: Path
) -> None:
    cheat, honest = swarm.hops
    # the honest node refuses to serve a step twice, and the session goes on
    route = swarm.session(honest)
    route.step(hidden_states(0, 6), torch.ones(1, 6, dtype=torch.long))
    route.step(hidden_states(1, 1), torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(RemoteError) as refused:
        replay_last_step(swarm, route, hidden_states(2, 1))
    assert refused.value.code is ErrorCode.OUT_OF_ORDER and refused.value.fatal is False
    route.sessions[0].next_step += 1
    route.step(hidden_states(3, 1), torch.ones(1, 8, dtype=torch.long))
    route.close()

    # the equivocating node serves it again and signs a second receipt for step 1
    route = swarm.session(cheat)
    route.step(hidden_states(0, 6), torch.ones(1, 6, dtype=torch.long))
    route.step(hidden_states(1, 1), torch.ones(1, 7, dtype=torch.long))
    second = replay_last_step(swarm, route, hidden_states(2, 1))
    route.close()
    receipts = [r for step in route.receipts for r in step] + [second]
    _wait_committed(cheat.node)  # its first leaves are on-chain (the next test audits them)
    assert second.leaf.slot() == receipts[1].leaf.slot() and second.leaf != receipts[1].leaf

    # the client kept every receipt in its ledger; it reports the node with the CLI
    ledger_path = tmp_path / "client.sqlite"
    ledger = open_ledger(sqlite_url(ledger_path))
    try:
        with ledger.begin() as db:
            for receipt in receipts:
                record_receipt(
                    db, chain_id=31337, server=cheat.node.address, peer_id=cheat.node.peer_id,
                    channel_id=cheat.channel, leaf=receipt.leaf, signature=receipt.signature,
                    sent_hash=receipt.leaf.input_hash, received_hash=receipt.leaf.output_hash,
                    cost=receipt.leaf.tokens * cheat.price_per_token,
                )  # fmt: skip
    finally:
        ledger.close()
    chain = swarm.deployment.connect()
    contracts = Contracts.from_deployment(chain, swarm.deployment)
    reporter = swarm.deployment.account("client-1").address
    stake = contracts.node_registry.get_node(cheat.node.address).stake
    balance = contracts.token.balance_of(reporter)
    home = node_home(swarm.deployment, tmp_path / "reporter")
    command = [
        sys.executable, "-m", "stakeswarm", "verifier", "report-equivocation",
        "--ledger", str(ledger_path), "--devnet", "--home", str(home), "--account", "client-1",
    ]  # fmt: skip
    listed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "3 receipts, 1 equivocation(s)" in listed.stdout  # steps 0, 1 and 1 again
    assert f"node {cheat.node.address}" in listed.stdout and "step 1" in listed.stdout
    assert contracts.node_registry.get_node(cheat.node.address).stake == stake  # only listed

    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    submitted = subprocess.run(
        [*command, "--submit"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert submitted.returncode == 0, submitted.stderr
    assert f"slashed {cheat.node.address}" in submitted.stdout
    (event,) = contracts.slasher.events(
        "EquivocationSlashed", from_block=swarm.deployment.deploy_block
    )
    params = contracts.slasher.params()
    assert event.args["node"] == cheat.node.address and event.args["reporter"] == reporter
    amount, bounty = int(event.args["amount"]), int(event.args["bounty"])
    assert amount == stake * params.slash_bps // 10_000
    assert bounty == amount * params.bounty_bps // 10_000 > 0
    assert contracts.node_registry.get_node(cheat.node.address).stake == stake - amount
    assert contracts.token.balance_of(reporter) == balance + bounty
    # the same two receipts cannot slash it twice
    again = subprocess.run(
        [*command, "--submit"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert again.returncode == 0 and "SlasherAlreadySlashed" in again.stdout


def test_inputs_that_no_longer_match_are_withheld_and_slashed(
    swarm: PaidSwarm, tmp_path: Path
) -> None:
    cheat, honest = swarm.hops
    route = swarm.session(honest)
    route.step(hidden_states(10, 5), torch.ones(1, 5, dtype=torch.long))
    route.step(hidden_states(11, 1), torch.ones(1, 6, dtype=torch.long))
    route.close()
    session_id = route.receipts[0][0].leaf.session_id
    _wait_committed(honest.node)
    # the node's copy of step 0's inputs changes under it (lost, rewritten, or a lie)
    stored = (
        honest.node.home / "node" / honest.node.address / "inputs" / session_id.hex() / "3-6"
        / "0.safetensors"
    )  # fmt: skip
    tensors = load_file(str(stored))
    tensors["hidden"] = tensors["hidden"] + 0.5
    save_file(tensors, str(stored))
    # the equivocating node leaves: its committed leaves can no longer be revealed at all
    assert cheat.node.stop() == 0

    chain = swarm.deployment.connect()
    contracts = Contracts.from_deployment(chain, swarm.deployment)
    start_block = chain.block_number()
    batches = contracts.commitments.batches_committed(from_block=swarm.deployment.deploy_block)
    committed = sum(b.leaf_count for b in batches)
    gone_positions = sorted(
        (b.batch_id, index)
        for b in batches
        if b.node == cheat.node.address
        for index in range(b.leaf_count)
    )
    gone_batches = sorted({batch for batch, _ in gone_positions})
    stake = contracts.node_registry.get_node(honest.node.address).stake
    gone_stake = contracts.node_registry.get_node(cheat.node.address).stake
    peers = honest.node.maddrs
    with running_verifier(
        swarm.deployment, tmp_path, swarm.model_path, "verifier-1", peers,
        args=("--reveal-deadline", "10", "--reveal-timeout", "5"),
    ) as verifier:  # fmt: skip
        status = wait_for_status(
            verifier,
            "every committed leaf audited or skipped, one slash per batch recorded",
            lambda s: (
                s["audits"]["done"] + s["queue"]["dropped"] >= committed
                and s["audits"]["pending"] == 0
                and s["slashes"]["recorded"] >= 1 + len(gone_batches)
            ),
            timeout=180,
        )
    slashes = contracts.slasher.leaves_slashed(from_block=start_block)
    # the leaves of the rewritten session (each reveal needs step 0's inputs), once per batch
    assert slashes
    assert {(s.node, s.reason) for s in slashes} == {(honest.node.address, Reason.WITHHELD)}
    assert len({s.batch_id for s in slashes}) == len(slashes)
    assert contracts.node_registry.get_node(honest.node.address).stake < stake
    # the node that left, by position (it never showed a leaf), once per batch
    withheld_slashes = contracts.slasher.leaves_withheld_slashed(from_block=start_block)
    assert {(w.batch_id, w.leaf_index) for w in withheld_slashes} <= set(gone_positions)
    assert sorted(w.batch_id for w in withheld_slashes) == gone_batches
    assert {w.node for w in withheld_slashes} == {cheat.node.address}
    assert contracts.node_registry.get_node(cheat.node.address).stake < gone_stake
    assert status["slashes"]["recorded"] == status["slashes"]["withheld"]
    assert 1 + len(gone_batches) <= status["slashes"]["recorded"]
    assert status["slashes"]["recorded"] <= len(slashes) + len(withheld_slashes)

    ledger = open_ledger(
        sqlite_url(verifier.home / "verifier" / verifier.address / "ledger.sqlite")
    )
    try:
        with ledger.begin() as db:
            gone = audits_of(db, cheat.node.address)
            served = audits_of(db, honest.node.address)
    finally:
        ledger.close()
    # the node that left showed nothing: withheld, no leaf, slashed by position (a leaf of a
    # batch already slashed is recorded without a verdict, or not audited at all)
    assert gone and all(a.outcome is AuditOutcome.WITHHELD and a.leaf_hash is None for a in gone)
    assert {(a.batch_id, a.leaf_index) for a in gone} <= set(gone_positions)
    assert {(w.batch_id, w.leaf_index) for w in withheld_slashes} <= {
        (a.batch_id, a.leaf_index) for a in gone if "a withheld verdict" in (a.detail or "")
    }
    withheld = [a for a in served if a.outcome is AuditOutcome.WITHHELD]
    assert {s.leaf for s in slashes} <= {a.leaf_hash for a in withheld}
    assert all("inputHash" in (a.detail or "") for a in withheld)
    # its other sessions (the replay test's) still pass
    assert {a.outcome for a in served} == {AuditOutcome.WITHHELD, AuditOutcome.PASSED}


def _wait_committed(node: NodeProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while node.status()["commitments"]["pending_leaves"]:
        assert time.monotonic() < deadline, "leaves not committed"
        time.sleep(0.5)
