"""Every receipt is enforceable: a node that is paid but never commits what it served is slashed
through its client's receipt challenge; an honest node answers and keeps its stake.

node-0 (blocks 0:3) is honest. node-1 (3:6) runs with `--faulty no-commit`: it computes, signs
receipts and is paid like an honest node, but never commits a leaf, so no verifier could ever
sample what it served. A client generates through both (from Python, its receipts kept in its
ledger). Once the receipts' commit deadline has passed on the chain, `stakeswarm client
check-receipts --rate 1` challenges every receipt: node-0 answers each challenge by itself with
the leaf's batch, position and Merkle proof and earns the bonds; node-1 cannot. After the
response window, a second `check-receipts` slashes node-1 once per unanswered receipt and pays
the client the bounty and its bonds back. Everything is reverted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from eth_account import Account

from client.model import DistributedModelForCausalLM
from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.contracts.slasher import ChallengeStatus
from ledger.db import open_ledger, receipts_of, sqlite_url
from ledger.deployment import Deployment
from tests.integration.nodes import (
    REPO_ROOT,
    NodeProcess,
    NodeSpec,
    chain_snapshot,
    node_home,
    running_nodes,
    wait_committed,
)

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = (
    "--commit-interval", "1",
    "--redeem-interval", "3600",
    "--announce-interval", "5",
    "--challenge-interval", "1",
)  # fmt: skip
PROMPT = torch.tensor([[1, 17, 42, 99, 7]])
NEW_TOKENS = 3


@dataclass
class Swarm:
    deployment: Deployment
    contracts: Contracts
    honest: NodeProcess
    cheat: NodeProcess
    home: Path  # the client's home: its ledger holds the receipts


@pytest.fixture(scope="module")
def swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Swarm]:
    chain = deployment.connect()
    specs = [
        NodeSpec("node-0", "0:3", args=NODE_ARGS),
        NodeSpec("node-1", "3:6", args=(*NODE_ARGS, "--faulty", "no-commit")),
    ]
    workdir = tmp_path_factory.mktemp("receipts")
    home = node_home(deployment, workdir / "client-home")  # with the devnet's deployment file
    with chain_snapshot(chain), running_nodes(deployment, workdir, model_path, specs) as nodes:
        wallet = Account.from_key(deployment.account("client-0").private_key)
        model = DistributedModelForCausalLM.from_pretrained(
            model_path,
            initial_peers=[m for node in nodes for m in node.maddrs],
            wallet=wallet,
            deployment=deployment,
            home=home,
        )
        try:
            model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
        finally:
            model.close()
        wait_committed(nodes[0], NEW_TOKENS)
        yield Swarm(deployment, Contracts.from_deployment(chain, deployment), *nodes, home)


def check_receipts(swarm: Swarm, rate: str = "1") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [
            sys.executable, "-m", "stakeswarm", "client", "check-receipts", "--rate", rate,
            "--devnet", "--account", "client-0", "--home", str(swarm.home),
        ],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def last_issued(swarm: Swarm) -> int:
    """When the latest receipt in the client's ledger was signed (its `issued_at`)."""
    (path,) = (swarm.home / "client").glob("*/ledger.sqlite")
    ledger = open_ledger(sqlite_url(path))
    try:
        with ledger.begin() as db:
            return max(receipt.issued_at for receipt in receipts_of(db))
    finally:
        ledger.close()


def move_chain_to(chain: Chain, timestamp: int) -> None:
    """Mine the next block at `timestamp` (the chain's time, which the deadlines count in)."""
    chain.rpc("evm_setNextBlockTimestamp", [timestamp])
    chain.rpc("evm_mine")


def test_a_node_that_never_commits_is_slashed_through_its_receipts(swarm: Swarm) -> None:
    contracts, honest, cheat = swarm.contracts, swarm.honest, swarm.cheat
    chain = contracts.token.chain
    slasher, registry, token = contracts.slasher, contracts.node_registry, contracts.token
    params = slasher.params()
    client = swarm.deployment.account("client-0").address
    stake = {node.name: registry.get_node(node.address).stake for node in (honest, cheat)}
    honest_balance = token.balance_of(honest.address)

    early = check_receipts(swarm)  # before the commit deadline nothing is challengeable
    move_chain_to(chain, last_issued(swarm) + params.commit_deadline + 1)
    challenged = check_receipts(swarm)

    assert early.returncode == 0, early.stderr
    assert "0 receipts in their challenge window" in early.stdout
    assert challenged.returncode == 0, challenged.stderr
    ids = list(range(1, slasher.challenge_count() + 1))
    by_node = {node.address: [] for node in (honest, cheat)}
    for challenge_id in ids:
        by_node[slasher.get_challenge(challenge_id).node].append(challenge_id)
    # one receipt per step: the prefill and NEW_TOKENS - 1 decode steps, at each node
    assert [len(by_node[n.address]) for n in (honest, cheat)] == [NEW_TOKENS, NEW_TOKENS]
    assert f"challenged {2 * NEW_TOKENS} now" in challenged.stdout

    # the honest node answers by itself, within its poll interval
    deadline = time.monotonic() + 60
    while not all(
        slasher.get_challenge(i).status is ChallengeStatus.ANSWERED for i in by_node[honest.address]
    ):
        assert time.monotonic() < deadline, "the honest node did not answer its challenges"
        time.sleep(0.5)
    assert token.balance_of(honest.address) == honest_balance + NEW_TOKENS * params.challenge_bond
    assert all(
        slasher.get_challenge(i).status is ChallengeStatus.OPEN for i in by_node[cheat.address]
    )

    before = token.balance_of(client)
    move_chain_to(chain, max(slasher.get_challenge(i).answer_by for i in ids) + 1)
    settled = check_receipts(swarm)

    assert settled.returncode == 0, settled.stderr
    assert (
        f"{NEW_TOKENS} answered" in settled.stdout and f"{NEW_TOKENS} slashed now" in settled.stdout
    )
    assert all(
        slasher.get_challenge(i).status is ChallengeStatus.SLASHED for i in by_node[cheat.address]
    )
    left = registry.get_node(cheat.address).stake
    expected = stake[cheat.name]
    for _ in range(NEW_TOKENS):  # each slash takes slashBps of what is left
        expected -= expected * params.slash_bps // 10_000
    assert left == expected
    assert registry.get_node(honest.address).stake == stake[honest.name]
    taken = stake[cheat.name] - left
    assert token.balance_of(client) > before + NEW_TOKENS * params.challenge_bond
    assert token.balance_of(client) <= (
        before + NEW_TOKENS * params.challenge_bond + taken * params.bounty_bps // 10_000
    )

    again = check_receipts(swarm)  # nothing left to challenge or slash
    assert again.returncode == 0, again.stderr
    assert "challenged 0 now" in again.stdout and "0 slashed now" in again.stdout


def test_a_sample_rate_outside_zero_to_one_is_one_clear_error(swarm: Swarm) -> None:
    result = check_receipts(swarm, rate="1.5")

    assert result.returncode != 0
    assert result.stderr.strip() == "error: --rate must be between 0 and 1, got 1.5"
