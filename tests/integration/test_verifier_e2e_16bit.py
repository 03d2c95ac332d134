"""The verifier end to end in bfloat16: three real nodes on Anvil serving `--dtype bfloat16`, the
middle one adding 1% noise to its outputs (`--faulty noise`: the cheat one float32 pass over a
bfloat16 node never saw), the last one serving int8 weights (`--quantize int8`, a precision of
its own), a client paying in bfloat16 that accepts any weights, and a real `stakeswarm verifier
run` auditing every leaf block by block from the block states each node commits
(`node.states`, `verifier.blockwise`; the int8 node's in bfloat16+int8). The cheat is slashed;
every audit of the honest nodes passes, with a block error of zero (same CPU, bit for bit).
Everything done on-chain is reverted afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account import Account

from client.errors import NoRouteError
from client.model import DistributedModelForCausalLM
from ledger.contracts import Contracts
from ledger.db import AuditOutcome, audits_of, open_ledger, sqlite_url
from ledger.deployment import Deployment
from ledger.types import Reason
from stakeswarm.swarm import running_verifier
from tests.integration.nodes import NodeProcess, NodeSpec
from tests.integration.verifiers import wait_for_status
from verifier.thresholds import BFLOAT16_BLOCK_TOLERANCE

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = (
    "--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "5",
    "--dtype", "bfloat16",
)  # fmt: skip
PROMPT = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def node_specs() -> list[NodeSpec]:
    return [
        NodeSpec("node-0", "0:2", args=NODE_ARGS),
        NodeSpec("node-1", "2:4", args=(*NODE_ARGS, "--faulty", "noise")),
        NodeSpec("node-2", "4:6", args=(*NODE_ARGS, "--quantize", "int8")),
    ]


def test_a_bfloat16_node_adding_1_percent_noise_is_slashed(
    deployment: Deployment,
    nodes: list[NodeProcess],
    model_path: Path,
    tmp_path: Path,
) -> None:
    chain = deployment.connect()
    contracts = Contracts.from_deployment(chain, deployment)
    registry = contracts.node_registry
    stakes = {n.address: registry.get_node(n.address).stake for n in nodes}
    cheat = nodes[1]
    peers = [m for n in nodes for m in n.maddrs]

    with running_verifier(deployment, tmp_path, model_path, "verifier-0", peers) as verifier:
        wallet = Account.from_key(deployment.account("client-0").private_key)
        # a client that uses full weights only (the default) has no server for blocks 4-5
        full_only = DistributedModelForCausalLM.from_pretrained(
            model_path, initial_peers=peers, wallet=wallet, deployment=deployment,
            home=tmp_path / "full-only", dtype="bfloat16",
        )  # fmt: skip
        try:
            with pytest.raises(NoRouteError, match="serves bfloat16\\+int8, this client uses full"):
                full_only.generate(PROMPT, max_new_tokens=1, do_sample=False)
        finally:
            full_only.close()
        model = DistributedModelForCausalLM.from_pretrained(
            model_path, initial_peers=peers, wallet=wallet, deployment=deployment,
            home=tmp_path / "client", dtype="bfloat16", weights="any",
        )  # fmt: skip
        try:
            generated = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
        finally:
            model.close()
        assert generated.shape == (1, PROMPT.shape[1] + NEW_TOKENS)  # every receipt checked

        status = wait_for_status(
            verifier, "a slash", lambda s: s["slashes"]["recorded"] >= 1, timeout=180
        )
        assert status["device"]["recompute"]["bfloat16"].startswith("block by block")
        assert status["device"]["recompute"]["bfloat16+int8"].startswith("block by block")
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

    slashes = contracts.slasher.leaves_slashed(from_block=deployment.deploy_block)
    assert slashes and {s.node for s in slashes} == {cheat.address}
    assert all(s.reason is Reason.MISMATCH for s in slashes)
    assert registry.get_node(cheat.address).stake < stakes[cheat.address]
    for honest in (nodes[0], nodes[2]):
        assert registry.get_node(honest.address).stake == stakes[honest.address]
    ledger = open_ledger(
        sqlite_url(verifier.home / "verifier" / verifier.address / "ledger.sqlite")
    )
    try:
        with ledger.begin() as db:
            audits = {n.address: audits_of(db, n.address) for n in nodes}
    finally:
        ledger.close()
    assert {a.outcome for a in audits[cheat.address]} == {AuditOutcome.FAILED}
    for honest, precision in ((nodes[0], "bfloat16"), (nodes[2], "bfloat16+int8")):
        assert audits[honest.address], "every honest node was audited"
        for audit in audits[honest.address]:
            assert audit.outcome is AuditOutcome.PASSED
            measured = audit.distances or {}
            assert measured["dtype"] == precision
            assert measured["block_error"] == measured["ulp_share"] == 0.0
    for audit in audits[cheat.address]:  # the noise is added after its span's last block
        measured = audit.distances or {}
        assert measured["worst_block"] == 3
        assert measured["ulp_share"] > BFLOAT16_BLOCK_TOLERANCE.max_ulp_share
