"""A node that serves but never reveals is slashed for withholding, on the devnet (quorum 1).

node-0 (blocks 0:3) runs with `--faulty withhold`: it serves, signs receipts and commits its
leaves like an honest node, but refuses every reveal. node-1 (3:6) is honest. A client pays one
short session through each; then a real `stakeswarm verifier run` process audits every leaf.
It asks node-0 again and again until its reveal deadline, signs a `Withheld(node, batch, index)`
verdict, and slashes node-0 with `Slasher.slashWithheld`, once for the batch its two withheld
leaves share (a second slash for the same batch is not sent); node-1 reveals, passes, and keeps
its stake. Everything is reverted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.contracts import Contracts
from ledger.db import AuditOutcome, audits_of, open_ledger, sqlite_url
from ledger.deployment import Deployment
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
from tests.integration.verifiers import status_cli, status_field, wait_for_status

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "5")
# a short deadline, so the test does not wait the default half hour
VERIFIER_ARGS = ("--reveal-deadline", "6", "--reveal-timeout", "5")


@dataclass
class Swarm:
    deployment: Deployment
    contracts: Contracts
    withholding: NodeProcess
    honest: NodeProcess
    model_path: Path
    start_block: int  # before anything was served


@pytest.fixture(scope="module")
def swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Swarm]:
    chain = deployment.connect()
    specs = [
        NodeSpec("node-0", "0:3", args=(*NODE_ARGS, "--faulty", "withhold")),
        NodeSpec("node-1", "3:6", args=NODE_ARGS),
    ]
    workdir = tmp_path_factory.mktemp("withheld")
    with chain_snapshot(chain), running_nodes(deployment, workdir, model_path, specs) as nodes:
        start_block = chain.block_number()
        with client_p2p([m for n in nodes for m in n.maddrs]) as (runner, p2p):
            payer = Payer(deployment, chain)
            for node in nodes:
                serve_two_steps(runner, p2p, payer, node)
        for node in nodes:
            wait_committed(node, 2)
        contracts = Contracts.from_deployment(chain, deployment)
        yield Swarm(deployment, contracts, nodes[0], nodes[1], model_path, start_block)


def test_a_node_that_refuses_every_reveal_is_slashed_for_withholding(
    swarm: Swarm, tmp_path: Path
) -> None:
    contracts, withholding, honest = swarm.contracts, swarm.withholding, swarm.honest
    registry, slasher = contracts.node_registry, contracts.slasher
    positions = sorted(
        (b.batch_id, index)
        for b in contracts.commitments.batches_committed(from_block=swarm.start_block)
        if b.node == withholding.address
        for index in range(b.leaf_count)
    )
    assert len(positions) == 2
    stakes = {n.address: registry.get_node(n.address).stake for n in (withholding, honest)}
    peers = [m for n in (withholding, honest) for m in n.maddrs]

    with running_verifier(
        swarm.deployment, tmp_path, swarm.model_path, "verifier-0", peers, args=VERIFIER_ARGS
    ) as verifier:
        balance = contracts.token.balance_of(verifier.address)  # after it staked
        status = wait_for_status(
            verifier,
            "every leaf audited, the withholding node slashed once for its batch",
            lambda s: (
                s["audits"]["done"] + s["queue"]["dropped"] == 4
                and s["audits"]["pending"] == 0
                and s["slashes"]["withheld"] == 1
            ),
            timeout=180,
        )

    # on-chain: one slashWithheld for the batch (its first withheld position), no slash of a
    # shown leaf
    assert len({batch for batch, _ in positions}) == 1
    events = slasher.leaves_withheld_slashed(from_block=swarm.start_block)
    assert [(e.batch_id, e.leaf_index) for e in events] == positions[:1]
    assert {e.node for e in events} == {withholding.address}
    assert slasher.leaves_slashed(from_block=swarm.start_block) == []
    assert not slasher.is_withheld_slashed(*positions[1])
    # each slash took slash_bps of what was left; the verifier got each bounty
    params = contracts.slasher.params()
    left = stakes[withholding.address]
    for event in sorted(events, key=lambda e: e.block_number):
        assert event.amount == left * params.slash_bps // 10_000
        assert event.bounty_per_verifier == event.amount * params.bounty_bps // 10_000 > 0
        left -= event.amount
    assert registry.get_node(withholding.address).stake == left
    bounties = sum(e.bounty_per_verifier for e in events)
    assert contracts.token.balance_of(verifier.address) == balance + bounties
    # the honest node revealed, passed and keeps its stake
    assert registry.get_node(honest.address).stake == stakes[honest.address]

    # what the verifier says about it: /status, its ledger, the CLI
    assert status["slashes"]["recorded"] == status["slashes"]["submitted"] == 1
    assert int(status["slashes"]["bounties_earned_base_units"]) == bounties
    # the other leaf of the slashed batch: recorded as withheld without a verdict, or dropped
    # unaudited once the slash had landed
    assert status["audits"]["withheld"] + status["queue"]["dropped"] == 2
    assert status["audits"]["passed"] == 2
    assert status["verdicts_signed"] == 1  # none for a batch already slashed
    ledger = open_ledger(
        sqlite_url(verifier.home / "verifier" / verifier.address / "ledger.sqlite")
    )
    try:
        with ledger.begin() as db:
            withheld = audits_of(db, withholding.address)
            passed = audits_of(db, honest.address)
    finally:
        ledger.close()
    assert [(a.batch_id, a.leaf_index) for a in withheld] == positions[: len(withheld)]
    assert all(a.outcome is AuditOutcome.WITHHELD and a.leaf_hash is None for a in withheld)
    assert all("not available" in (a.detail or "") for a in withheld)  # the node's refusal
    assert all("already slashed for batch" in (a.detail or "") for a in withheld[1:])
    assert {a.outcome for a in passed} == {AuditOutcome.PASSED}
    shown = status_cli(verifier)
    assert status_field(shown, "slashes for withholding") == "1"
    assert status_field(shown, "withheld") == str(len(withheld))
