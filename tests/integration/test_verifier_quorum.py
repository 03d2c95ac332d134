"""A quorum of 2 of 3 verifiers: contracts deployed with quorum 2 on the test Anvil, three
active verifiers, a node that skips a block, and real `stakeswarm verifier run` processes.

One verifier alone finds the cheat but cannot slash: it shares its signed verdict in the DHT.
When a second verifier starts (sampling nothing of its own), it reads the shared verdict,
audits that leaf itself, agrees and shares its own; with two valid verdicts the slash goes
through and both signers are paid the same bounty. The third verifier, registered but not
running, signs nothing and is paid nothing.

The same for a node that withholds (`--faulty withhold`, refusing every reveal): the first
verifier's withheld findings are not enough; the second asks the node itself until its own
deadline, co-signs, and `slashWithheld` goes through with both signatures.

Either way one slash per batch: once a batch's slash lands, its other leaves are not slashed
(nor, if not audited yet, audited) again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from eth_account import Account

from ledger.compile import PROJECT_ROOT, compile_contracts
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment, DeploymentParams, deploy_all
from ledger.types import Reason, Wei
from stakeswarm.swarm import running_verifier
from tests.integration.nodes import (
    NodeProcess,
    NodeSpec,
    Payer,
    chain_snapshot,
    client_p2p,
    running_nodes,
    serve_two_steps,
    wait_committed,
)
from tests.integration.verifiers import wait_for_status

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "5")
VERIFIERS = ("verifier-0", "verifier-1", "client-2")  # the third: any funded key may verify


@dataclass
class QuorumSwarm:
    deployment: Deployment
    contracts: Contracts
    node: NodeProcess
    model_path: Path
    workdir: Path


@pytest.fixture(scope="module")
def swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuorumSwarm]:
    chain = deployment.connect()
    with chain_snapshot(chain):
        deployer = Account.from_key(deployment.account("deployer").private_key)
        sender = chain.sender(deployer)
        quorum2 = deploy_all(
            chain,
            sender,
            DeploymentParams(quorum=2),
            compile_contracts(PROJECT_ROOT),
            deployment.abi_dir,
        )
        quorum2 = replace(quorum2, accounts=deployment.accounts)
        contracts = Contracts.from_deployment(chain, quorum2, sender)
        for name in ("node-0", "node-1", "client-0", *VERIFIERS):
            contracts.token.transfer(quorum2.account(name).address, Wei(10_000 * TOKEN))
        # the third verifier registers but never runs
        third = Account.from_key(quorum2.account(VERIFIERS[2]).private_key)
        registry = contracts.verifier_registry.with_sender(chain.sender(third))
        registry.register_with_approve(registry.min_stake())

        workdir = tmp_path_factory.mktemp("quorum")
        spec = NodeSpec("node-0", "0:3", args=(*NODE_ARGS, "--faulty", "skip-block"))
        with running_nodes(quorum2, workdir, model_path, [spec]) as nodes:
            yield QuorumSwarm(quorum2, Contracts.from_deployment(chain, quorum2), nodes[0],
                              model_path, workdir)  # fmt: skip


def serve_one_session(swarm: QuorumSwarm, node: NodeProcess | None = None) -> None:
    """A paying client steps a short session through the cheating node (or `node`)."""
    node = node or swarm.node
    with client_p2p(node.maddrs) as (runner, p2p):
        serve_two_steps(runner, p2p, Payer(swarm.deployment, swarm.deployment.connect()), node)
    wait_committed(node, 2)


def test_two_of_three_verifiers_slash_together_and_share_the_bounty(
    swarm: QuorumSwarm, tmp_path: Path
) -> None:
    contracts, node = swarm.contracts, swarm.node
    assert contracts.slasher.params().quorum == 2
    serve_one_session(swarm)
    batches = {
        b.batch_id
        for b in contracts.commitments.batches_committed(from_block=swarm.deployment.deploy_block)
    }
    stake = contracts.node_registry.get_node(node.address).stake
    third = swarm.deployment.account(VERIFIERS[2]).address
    third_balance = contracts.token.balance_of(third)
    peers = node.maddrs

    with running_verifier(
        swarm.deployment, tmp_path, swarm.model_path, VERIFIERS[0], peers
    ) as first:
        first_balance = contracts.token.balance_of(first.address)
        wait_for_status(
            first,
            "its own verdicts",
            lambda s: s["audits"]["failed"] == 2 and s["verdicts_signed"] == 2,
        )
        time.sleep(3)  # alone it cannot reach the quorum, however long it waits
        assert contracts.slasher.leaves_slashed(from_block=swarm.deployment.deploy_block) == []
        assert contracts.node_registry.get_node(node.address).stake == stake

        with running_verifier(
            swarm.deployment, tmp_path, swarm.model_path, VERIFIERS[1], peers,
            sample_rate=1e-9,  # samples nothing itself: it audits what the first one shared
        ) as second:  # fmt: skip
            second_balance = contracts.token.balance_of(second.address)
            second_status = wait_for_status(
                second,
                "one slash per batch recorded",
                lambda s: s["slashes"]["recorded"] == len(batches),
            )
            first_status = wait_for_status(
                first,
                "one slash per batch recorded",
                lambda s: s["slashes"]["recorded"] == len(batches),
            )

    slashes = contracts.slasher.leaves_slashed(from_block=swarm.deployment.deploy_block)
    assert sorted(s.batch_id for s in slashes) == sorted(batches)
    assert all(s.node == node.address for s in slashes)
    assert all(s.reason is Reason.MISMATCH for s in slashes)
    assert contracts.node_registry.get_node(node.address).stake < stake
    bounty = sum(s.bounty_per_verifier for s in slashes)
    params = contracts.slasher.params()
    for s in slashes:  # the bounty share is split between exactly two signers
        assert s.bounty_per_verifier == s.amount * params.bounty_bps // 10_000 // 2 > 0
    assert contracts.token.balance_of(first.address) == first_balance + bounty
    assert contracts.token.balance_of(second.address) == second_balance + bounty
    assert contracts.token.balance_of(third) == third_balance
    # the second verifier audited the shared leaves itself before signing (a leaf of a batch
    # already slashed it may leave unaudited)
    assert second_status["audits"]["failed"] >= len(batches)
    assert second_status["verdicts_signed"] >= len(batches)
    assert int(first_status["slashes"]["bounties_earned_base_units"]) == bounty
    assert int(second_status["slashes"]["bounties_earned_base_units"]) == bounty
    submitted = first_status["slashes"]["submitted"] + second_status["slashes"]["submitted"]
    assert submitted == len(batches)


def test_two_of_three_verifiers_slash_a_withholding_node_together(
    swarm: QuorumSwarm, tmp_path: Path
) -> None:
    contracts = swarm.contracts
    start_block = swarm.deployment.connect().block_number() + 1  # after the first test's work
    spec = NodeSpec("node-1", "3:6", args=(*NODE_ARGS, "--faulty", "withhold"))
    with running_nodes(swarm.deployment, tmp_path / "nodes", swarm.model_path, [spec]) as nodes:
        node = nodes[0]
        serve_one_session(swarm, node)
        batches = {
            b.batch_id for b in contracts.commitments.batches_committed(from_block=start_block)
        }
        stake = contracts.node_registry.get_node(node.address).stake
        third = swarm.deployment.account(VERIFIERS[2]).address
        third_balance = contracts.token.balance_of(third)
        # only what was committed from here on, with a short reveal deadline
        args = ("--from-block", str(start_block), "--reveal-deadline", "6", "--reveal-timeout", "5")

        with running_verifier(
            swarm.deployment, tmp_path, swarm.model_path, VERIFIERS[0], node.maddrs, args=args
        ) as first:
            first_balance = contracts.token.balance_of(first.address)
            wait_for_status(
                first,
                "its own withheld findings",
                lambda s: s["audits"]["withheld"] == 2 and s["verdicts_signed"] == 2,
            )
            time.sleep(3)  # alone it cannot reach the quorum, however long it waits
            assert contracts.slasher.leaves_withheld_slashed(from_block=start_block) == []
            assert contracts.node_registry.get_node(node.address).stake == stake

            with running_verifier(
                swarm.deployment, tmp_path, swarm.model_path, VERIFIERS[1], node.maddrs,
                sample_rate=1e-9, args=args,  # samples nothing: it checks what was shared
            ) as second:  # fmt: skip
                second_balance = contracts.token.balance_of(second.address)
                second_status = wait_for_status(
                    second,
                    "one withheld slash per batch recorded",
                    lambda s: s["slashes"]["withheld"] == len(batches),
                )
                first_status = wait_for_status(
                    first,
                    "one withheld slash per batch recorded",
                    lambda s: s["slashes"]["withheld"] == len(batches),
                )

    slashes = contracts.slasher.leaves_withheld_slashed(from_block=start_block)
    positions = sorted(
        (b.batch_id, index)
        for b in contracts.commitments.batches_committed(from_block=start_block)
        for index in range(b.leaf_count)
    )
    assert {(s.batch_id, s.leaf_index) for s in slashes} <= set(positions)
    assert sorted(s.batch_id for s in slashes) == sorted(batches)
    assert {s.node for s in slashes} == {node.address}
    assert contracts.node_registry.get_node(node.address).stake < stake
    params = contracts.slasher.params()
    for s in slashes:  # the bounty share is split between exactly two signers
        assert s.bounty_per_verifier == s.amount * params.bounty_bps // 10_000 // 2 > 0
    bounty = sum(s.bounty_per_verifier for s in slashes)
    assert contracts.token.balance_of(first.address) == first_balance + bounty
    assert contracts.token.balance_of(second.address) == second_balance + bounty
    assert contracts.token.balance_of(third) == third_balance
    # the second verifier asked the node itself before it signed
    assert second_status["audits"]["withheld"] >= len(batches)
    assert second_status["verdicts_signed"] >= len(batches)
    assert int(first_status["slashes"]["bounties_earned_base_units"]) == bounty
    assert int(second_status["slashes"]["bounties_earned_base_units"]) == bounty
    submitted = first_status["slashes"]["submitted"] + second_status["slashes"]["submitted"]
    assert submitted == len(batches)
