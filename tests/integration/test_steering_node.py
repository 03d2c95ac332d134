"""A last node that steers the answer (`--faulty steer`), with real node processes on Anvil.

The node computes every step honestly and signs the sketch of the honest output, but sends its
client another tensor (pushed towards the tokens it wants) and puts that tensor's hash in the
receipt's outputHash. A verifier re-running the span finds the committed sketch right, so only
the client, which holds the tensor, can catch it: it recomputes the sketch of what it received
and refuses a receipt whose sketchHash differs, before it pays the next step.

node-0 serves blocks 0:2 honestly, node-1 steers 2:4. First node-1 is the only server of 2:4:
the client refuses its first receipt (kept as evidence, with the tensor it received), pays it for nothing more and cannot
finish. Then an honest node-2 joins on 2:4 and the client's greedy text is the local one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account import Account
from safetensors.torch import load_file

from client.errors import NoRouteError
from client.model import DistributedModelForCausalLM
from ledger.db import ReceiptStatus, client_channels, open_ledger, receipts_of, sqlite_url
from ledger.deployment import Deployment
from node.sketch import sketch
from node.tensors import tensor_hash
from stakeswarm.tiny_models import load_reference_model, make_tiny_model
from tests.integration.nodes import NodeSpec, chain_snapshot, running_nodes, start_nodes

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "2", "--redeem-interval", "3600", "--announce-interval", "2")
PROMPT = torch.tensor([[1, 17, 42, 99, 7]])


def _client(deployment: Deployment, model_path: Path, peers: list[str], home: Path):  # noqa: ANN202
    wallet = Account.from_key(deployment.account("client-0").private_key)
    return DistributedModelForCausalLM.from_pretrained(
        model_path, initial_peers=peers, wallet=wallet, deployment=deployment, home=home
    )


def test_a_node_that_sends_another_output_than_it_committed_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    model_path = make_tiny_model(tmp_path / "model", "llama", 4)
    reference = load_reference_model(model_path)
    local = reference.generate(PROMPT, max_new_tokens=4, do_sample=False)
    chain = deployment.connect()
    workdir, home = tmp_path / "swarm", tmp_path / "client"
    specs = [
        NodeSpec("node-0", "0:2", args=NODE_ARGS),
        NodeSpec("node-1", "2:4", args=(*NODE_ARGS, "--faulty", "steer")),
    ]
    with chain_snapshot(chain), running_nodes(deployment, workdir, model_path, specs) as nodes:
        steering = nodes[1]
        model = _client(deployment, model_path, [m for n in nodes for m in n.maddrs], home)
        try:
            with pytest.raises(NoRouteError):
                model.generate(PROMPT, max_new_tokens=4, do_sample=False)
        finally:
            model.close()

        wallet = Account.from_key(deployment.account("client-0").private_key)
        ledger = open_ledger(sqlite_url(home / "client" / wallet.address / "ledger.sqlite"))
        try:
            with ledger.begin() as db:
                kept = receipts_of(db, server=steering.address)
                contract = deployment.contracts.payment_channels
                channels = client_channels(db, deployment.chain_id, contract, wallet.address)
                channel = next(c for c in channels if c.server == steering.address)
        finally:
            ledger.close()
        # the steered step's receipt is evidence, and the node was paid for that step only
        assert kept and all(r.status is ReceiptStatus.INVALID for r in kept)
        assert {r.problem for r in kept} == {"sketch_hash"}
        assert all(r.step == 0 for r in kept)
        assert channel.voucher_amount == sum(r.cost for r in kept)
        assert "committed to another output" in (kept[0].detail or "")
        # ... with the tensor received: it hashes to the signed outputHash, its sketch is not
        # the signed sketchHash, which anyone can check
        leaf = kept[0].to_leaf()
        name = f"{leaf.session_id.hex()}-{leaf.span_start}-{leaf.span_end}-{leaf.step}"
        evidence = home / "client" / wallet.address / "evidence" / f"{name}.safetensors"
        output = load_file(evidence)["output"]
        assert tensor_hash(output) == leaf.output_hash
        assert sketch(output).hash() != leaf.sketch_hash

        # an honest server of 2:4 joins: the client's text is the model's, not the node's
        (spare,) = start_nodes(
            deployment, workdir, model_path, [NodeSpec("node-2", "2:4", args=NODE_ARGS)],
            initial_peers=nodes[0].maddrs,
        )  # fmt: skip
        try:
            peers = [m for n in (*nodes, spare) for m in n.maddrs]
            model = _client(deployment, model_path, peers, tmp_path / "client-2")
            try:
                remote = model.generate(PROMPT, max_new_tokens=4, do_sample=False)
            finally:
                model.close()
        finally:
            spare.stop()
        assert remote.tolist() == local.tolist()
