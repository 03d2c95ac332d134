"""The verifier end to end: three real nodes on Anvil, the middle one cheating (`--faulty
noise`), a paying client generating through all three, and a real `stakeswarm verifier run`
process auditing every leaf. The cheat is slashed on-chain and the verifier is paid its
bounty; the honest nodes' leaves pass their audits and they keep their stake; the client's
generation completes. Everything done on-chain is reverted afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account import Account

from client.model import DistributedModelForCausalLM
from ledger.contracts import Contracts
from ledger.db import AuditOutcome, audits_of, open_ledger, sqlite_url, verifier_totals
from ledger.deployment import Deployment
from ledger.types import Reason
from stakeswarm.swarm import running_verifier
from tests.integration.nodes import NodeProcess, NodeSpec
from tests.integration.verifiers import status_cli, status_field, wait_for_status

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "5")
PROMPT = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def node_specs() -> list[NodeSpec]:
    return [
        NodeSpec("node-0", "0:2", args=NODE_ARGS),
        NodeSpec("node-1", "2:4", args=(*NODE_ARGS, "--faulty", "noise")),
        NodeSpec("node-2", "4:6", args=NODE_ARGS),
    ]


def test_a_cheating_node_is_slashed_and_the_verifier_paid(
    deployment: Deployment,
    nodes: list[NodeProcess],
    model_path: Path,
    tmp_path: Path,
) -> None:
    chain = deployment.connect()
    contracts = Contracts.from_deployment(chain, deployment)
    registry, token = contracts.node_registry, contracts.token
    stakes = {n.address: registry.get_node(n.address).stake for n in nodes}
    cheat = nodes[1]
    peers = [m for n in nodes for m in n.maddrs]

    with running_verifier(deployment, tmp_path, model_path, "verifier-0", peers) as verifier:
        balance = token.balance_of(verifier.address)  # after registering (its stake is out)
        assert contracts.verifier_registry.is_active(verifier.address)

        wallet = Account.from_key(deployment.account("client-0").private_key)
        model = DistributedModelForCausalLM.from_pretrained(
            model_path, initial_peers=peers, wallet=wallet, deployment=deployment,
            home=tmp_path / "client",
        )  # fmt: skip
        try:
            generated = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
        finally:
            model.close()
        assert generated.shape == (1, PROMPT.shape[1] + NEW_TOKENS)  # the client got its text

        status = wait_for_status(
            verifier,
            "a slash with its bounty",
            lambda s: s["slashes"]["recorded"] >= 1,
            timeout=180,
        )
        # where it recomputes: this machine's CPU, a float32 node in float32, with its memory
        assert status["device"]["name"] == "cpu"
        assert status["device"]["recompute"]["float32"].startswith("one float32 pass")
        assert (
            0
            < status["device"]["memory"]["free_bytes"]
            <= status["device"]["memory"]["total_bytes"]
        )
        # at rate 1 every committed leaf is audited (the cheat commits nothing once slashed
        # below its span's stake: the registry no longer takes its commits)
        committed = sum(
            b.leaf_count
            for b in contracts.commitments.batches_committed(from_block=deployment.deploy_block)
        )
        wait_for_status(
            verifier,
            "every committed leaf audited (or skipped: its batch already slashed)",
            lambda s: (
                s["audits"]["done"] + s["queue"]["dropped"] >= committed
                and s["audits"]["pending"] == 0
            ),
            timeout=180,
        )

    # The verifier has stopped, so no slash lands any more: the chain, the verifier's ledger
    # (what its /status reported) and its balance are compared at one fixed point.
    slashes = contracts.slasher.leaves_slashed(from_block=deployment.deploy_block)
    assert slashes and {s.node for s in slashes} == {cheat.address}
    assert len({s.batch_id for s in slashes}) == len(slashes)  # once per batch
    assert all(s.reason is Reason.MISMATCH for s in slashes)
    assert registry.get_node(cheat.address).stake < stakes[cheat.address]
    for honest in (nodes[0], nodes[2]):
        assert registry.get_node(honest.address).stake == stakes[honest.address]

    earned = sum(s.bounty_per_verifier for s in slashes)
    assert earned > 0
    assert token.balance_of(verifier.address) == balance + earned
    ledger = open_ledger(
        sqlite_url(verifier.home / "verifier" / verifier.address / "ledger.sqlite")
    )
    try:
        with ledger.begin() as db:
            totals = verifier_totals(db, verifier.address)
            # every audit of the cheat failed, every audit of an honest node passed
            outcomes = {n.address: {a.outcome for a in audits_of(db, n.address)} for n in nodes}
    finally:
        ledger.close()
    assert totals.submitted == totals.slashes == len(slashes)
    assert totals.bounties == earned
    assert totals.withheld == totals.errors == 0
    assert outcomes[cheat.address] == {AuditOutcome.FAILED}
    assert outcomes[nodes[0].address] == outcomes[nodes[2].address] == {AuditOutcome.PASSED}

    # the CLI reads the same from the verifier's ledger once it has stopped
    shown = status_cli(verifier)
    assert f"verifier {verifier.address}" in shown
    assert status_field(shown, "audits done") == str(totals.audits)
    assert status_field(shown, "failed") == str(totals.failed)
    assert status_field(shown, "slashes submitted") == str(len(slashes))
