"""A client cannot get an honest node slashed by sending it tiny hidden states (issue 11).

One honest float32 node serves both blocks of a 2-block tiny Llama on Anvil. A paying client
(the Python client library) sends hidden states scaled down to ~1e-12 through both blocks (the
node's outputs then fall into float16's subnormal range, where sketches keep values only to
steps of ~6e-8), then a step of ~1e-6; the node commits its leaves and a real `stakeswarm
verifier run` process at audit rate 1 audits every one of them: all pass, nothing is slashed,
the node keeps its stake. A step holding a component beyond float16's largest value (65504)
is refused before it is paid for: the client sees why, the node's earnings do not move, and
the session goes on. Everything done on-chain is reverted afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account import Account

from client.errors import SessionStateError
from client.model import DistributedModelForCausalLM
from ledger.contracts import Contracts
from ledger.db import AuditOutcome, audits_of, open_ledger, sqlite_url, verifier_totals
from ledger.deployment import Deployment
from node.sketch import FP16_MAX
from stakeswarm.swarm import running_verifier
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.nodes import NodeProcess, NodeSpec, wait_committed
from tests.integration.verifiers import wait_for_status

pytestmark = pytest.mark.timeout(300)

NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "5")
PROMPT = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 2)


@pytest.fixture(scope="module")
def node_specs() -> list[NodeSpec]:
    return [NodeSpec("node-0", "0:2", args=NODE_ARGS)]


def scaled(hidden: torch.Tensor, largest: float) -> torch.Tensor:
    """`hidden` [batch, tokens, hidden_size] scaled so its largest |value| is `largest`."""
    return hidden * (largest / hidden.abs().max())


def unredeemed(node: NodeProcess) -> int:
    """What the node's accepted vouchers owe it (nothing is redeemed in this test)."""
    return int(node.status()["earnings"]["unredeemed_base_units"])


def test_tiny_inputs_pass_their_audits_and_huge_ones_are_refused_before_payment(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path
) -> None:
    chain = deployment.connect()
    contracts = Contracts.from_deployment(chain, deployment)
    node = nodes[0]
    stake = contracts.node_registry.get_node(node.address).stake

    with running_verifier(deployment, tmp_path, model_path, "verifier-0", node.maddrs) as verifier:
        wallet = Account.from_key(deployment.account("client-0").private_key)
        model = DistributedModelForCausalLM.from_pretrained(
            model_path, initial_peers=node.maddrs, wallet=wallet, deployment=deployment,
            home=tmp_path / "client",
        )  # fmt: skip
        try:
            # hidden: [1, 7, 64], the prompt's embeddings; the last position is the decode step
            hidden = model.head.embed(PROMPT)
            with model.inference_session(max_length=PROMPT.shape[1] + 2) as session:
                tiny = scaled(hidden, 1e-12)
                out = session.step(tiny[:, :-1])  # prefill of 6 positions
                assert 0 < float(out.abs().max()) < 1e-5  # float16's subnormal range
                session.step(tiny[:, -1:])
                paid = unredeemed(node)
                huge = scaled(model.head.embed(PROMPT[:, :1]), 2 * FP16_MAX)
                with pytest.raises(SessionStateError, match="bad_tensor.*65504"):
                    session.step(huge)
                assert unredeemed(node) == paid  # refused before the voucher was accepted
                session.step(scaled(hidden[:, :1], 1e-6))  # the session goes on
                assert unredeemed(node) > paid
        finally:
            model.close()

        wait_committed(node, 3)
        wait_for_status(
            verifier,
            "every committed leaf audited",
            lambda s: s["audits"]["done"] >= 3 and s["audits"]["pending"] == 0,
            timeout=120,
        )

    # the verifier has stopped: the chain and its ledger are read at one fixed point
    slashes = contracts.slasher.leaves_slashed(from_block=deployment.deploy_block)
    assert [s for s in slashes if s.node == node.address] == []
    assert contracts.node_registry.get_node(node.address).stake == stake
    ledger = open_ledger(
        sqlite_url(verifier.home / "verifier" / verifier.address / "ledger.sqlite")
    )
    try:
        with ledger.begin() as db:
            totals = verifier_totals(db, verifier.address)
            outcomes = [a.outcome for a in audits_of(db, node.address)]
    finally:
        ledger.close()
    assert outcomes == [AuditOutcome.PASSED] * 3
    assert totals.failed == totals.slashes == 0
