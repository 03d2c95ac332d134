"""A node slashed below its span's stake stops serving, and clients stop paying it.

Three real nodes on Anvil serve a tiny Llama: node-0 blocks 0:3, node-1 and node-2 both 3:6.
A client generates; the node that carried blocks 3:6 is slashed on-chain (a verdict signed
with a verifier's dev key against a leaf it committed, quorum 1). The node notices: its
`/status` says inactive and OFFLINE, and it refuses new sessions with `node_inactive`. The
same client's next generation goes through the spare for blocks 3:6, paying the slashed node
nothing more. Once `stakeswarm chain node add-stake` covers its span again, it is ONLINE and
routable again. Everything done on-chain is reverted afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from eth_account import Account
from typer.testing import CliRunner

from client.model import DistributedModelForCausalLM
from client.remote import RemoteError
from ledger.contracts import Contracts
from ledger.db import (
    BatchStatus,
    batches_with_status,
    leaf_proof,
    open_ledger,
    receipts_of,
    sqlite_url,
)
from ledger.deployment import TOKEN, Deployment
from ledger.eip712 import sign_verdict
from ledger.types import BatchId, Reason, Verdict
from node.protocol import ErrorCode
from stakeswarm.cli import app
from tests.integration.nodes import NodeProcess, NodeSpec

pytestmark = pytest.mark.timeout(600)

# --announce-interval is also how often a node re-reads its standing in the registry
NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "2")
PROMPT = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def node_specs() -> list[NodeSpec]:
    return [
        NodeSpec("node-0", "0:3", args=NODE_ARGS),
        NodeSpec("node-1", "3:6", args=NODE_ARGS),
        NodeSpec("node-2", "3:6", args=NODE_ARGS),
    ]


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _servers_of_blocks(ledger_path: Path, span: tuple[int, int]) -> list[str]:
    """The server of every receipt the client kept for `span`, in order."""
    ledger = open_ledger(sqlite_url(ledger_path))
    try:
        with ledger.begin() as db:
            return [r.server for r in receipts_of(db) if (r.span_start, r.span_end) == span]
    finally:
        ledger.close()


def _slash(deployment: Deployment, node: NodeProcess) -> None:
    """Slash `node` for the first leaf of a batch it committed, as verifier-0 (quorum 1)."""
    ledger = open_ledger(sqlite_url(node.home / "node" / node.address / "ledger.sqlite"))
    try:
        with ledger.begin() as db:
            batch = batches_with_status(db, BatchStatus.COMMITTED)[0]
            row = batch.leaves[0]
            leaf, proof = row.to_leaf(), leaf_proof(row)
            assert batch.chain_batch_id is not None
            batch_id = BatchId(batch.chain_batch_id)
    finally:
        ledger.close()
    key = deployment.account("verifier-0").private_key
    chain = deployment.connect()
    verifier = Contracts.from_deployment(chain, deployment, chain.sender(Account.from_key(key)))
    verifier.verifier_registry.register_with_approve(deployment.params.min_verifier_stake)
    verdict = Verdict(node.address, batch_id, leaf.hash(), Reason.MISMATCH)
    signature = sign_verdict(verifier.slasher.domain(), verdict, Account.from_key(key))
    verifier.slasher.slash(
        leaf,
        verifier.commitments.get_batch(batch_id, from_block=deployment.deploy_block),
        0,
        proof,
        Reason.MISMATCH,
        [Verdict(node.address, batch_id, leaf.hash(), Reason.MISMATCH, signature=signature)],
    )


def test_a_slashed_node_stops_serving_and_clients_route_around_it(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path
) -> None:
    chain = deployment.connect()
    registry = Contracts.from_deployment(chain, deployment).node_registry
    wallet = Account.from_key(deployment.account("client-0").private_key)
    ledger_path = tmp_path / "client" / "client" / wallet.address / "ledger.sqlite"
    model = DistributedModelForCausalLM.from_pretrained(
        model_path, initial_peers=[m for n in nodes for m in n.maddrs], wallet=wallet,
        deployment=deployment, home=tmp_path / "client",
    )  # fmt: skip
    try:
        first = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
        carried = set(_servers_of_blocks(ledger_path, (3, 6)))
        assert len(carried) == 1
        slashed = next(n for n in nodes[1:] if n.address in carried)
        spare = next(n for n in nodes[1:] if n is not slashed)
        _wait_for(
            "its leaves to be committed",
            lambda: (
                (c := slashed.status()["commitments"])["committed_leaves"] > 0
                and c["pending_leaves"] == 0
            ),
        )
        assert slashed.status()["registry"]["active"] is True

        _slash(deployment, slashed)
        assert not registry.is_active(slashed.address)

        # the node notices by itself: not active, OFFLINE, unhealthy, refusing sessions
        status = _wait_for(
            "the node to see it is inactive",
            lambda: (s := slashed.status())["registry"]["active"] is False and s,
        )
        assert status["state"] == "offline"
        stake = registry.get_node(slashed.address).stake
        assert status["registry"]["stake"] == str(stake)
        assert int(status["registry"]["required_stake"]) == 3 * 10 * TOKEN > stake
        assert httpx.get(f"{slashed.http_url}/health", timeout=10).status_code == 503
        assert "stakeswarm_registry_active 0.0" in slashed.metrics()
        channel = next(
            c for c in model.client.payments.known_channels() if c.server == slashed.address
        )
        with pytest.raises(RemoteError) as refused:
            model.client.network.open_session(
                slashed.peer_id, session_id=os.urandom(32), span=(3, 6), max_length=16,
                batch_size=1, channel_id=channel.channel_id, dtype="float32", timeout=30,
            )  # fmt: skip
        assert refused.value.code is ErrorCode.NODE_INACTIVE
        assert "add-stake" in refused.value.message
        assert "is not active in the NodeRegistry" in slashed.logs(200)

        # the same client, at once: blocks 3:6 go through the spare, the same text comes out,
        # and the slashed node is paid nothing more
        before, paid = len(_servers_of_blocks(ledger_path, (3, 6))), channel.signed
        second = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert second.tolist() == first.tolist()
        after = _servers_of_blocks(ledger_path, (3, 6))[before:]
        assert after and set(after) == {spare.address}
        assert channel.signed == paid

        # staked again through the CLI: active and ONLINE at its next check, routable again
        missing = 3 * 10 * TOKEN - stake
        topped = CliRunner().invoke(
            app,
            ["chain", "node", "add-stake", "--amount", str(Decimal(missing) / TOKEN), "--devnet",
             "--home", str(slashed.home), "--account", slashed.name],
        )  # fmt: skip
        assert topped.exit_code == 0, topped.output
        assert registry.is_active(slashed.address)
        status = _wait_for(
            "the node to serve again",
            lambda: (s := slashed.status())["registry"]["active"] is True and s,
        )
        assert status["state"] == "online"
        assert httpx.get(f"{slashed.http_url}/health", timeout=10).status_code == 200
        _wait_for(
            "clients to see it again",
            lambda: (
                slashed.peer_id
                in {c.peer_id for c in model.client.router.candidates(refresh=True)[0]}
            ),
        )
    finally:
        model.close()
