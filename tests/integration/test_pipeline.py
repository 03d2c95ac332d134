"""Pipelined routes end to end: three real node processes serving a tiny Llama in three spans
on Anvil; each pushes its output straight to the next server, and every server is still paid,
signs and commits its own step, with the chain of custody intact in the client's ledger.

Nodes: node-0 serves blocks 0:2, node-1 2:4, node-2 4:6. Everything they and the clients did
on-chain is reverted afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from hivemind.p2p import P2P

from client.model import DistributedModelForCausalLM
from client.network import EventLoopThread
from ledger.db import ReceiptStatus, open_ledger, receipts_of, sqlite_url
from ledger.deployment import Deployment
from ledger.eip712 import sign_receipt
from ledger.types import Leaf
from node.protocol import ErrorCode, ProtocolError, PushRequest, SignedReceipt
from node.push import push_input
from stakeswarm.tiny_models import load_reference_model, make_tiny_model
from tests.integration.nodes import NodeProcess, NodeSpec, chain_snapshot, running_nodes

pytestmark = pytest.mark.timeout(600)

PROMPT = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])
NEW_TOKENS = 6
NODE_ARGS = ("--commit-interval", "2", "--redeem-interval", "3600")


@dataclass
class Swarm:
    deployment: Deployment
    nodes: list[NodeProcess]
    model_path: Path
    workdir: Path

    def client(self, name: str, **options: Any) -> tuple[DistributedModelForCausalLM, Path]:
        """A client of its own home, and its ledger's path."""
        home = self.workdir / "clients" / name
        wallet = Account.from_key(self.deployment.account("client-0").private_key)
        model = DistributedModelForCausalLM.from_pretrained(
            self.model_path,
            initial_peers=[m for n in self.nodes for m in n.maddrs],
            wallet=wallet,
            deployment=self.deployment,
            home=home,
            **options,
        )
        return model, home / "client" / wallet.address / "ledger.sqlite"


@pytest.fixture(scope="module")
def swarm(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    model_path = make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 6)
    workdir = tmp_path_factory.mktemp("pipeline-swarm")
    specs = [
        NodeSpec("node-0", "0:2", args=NODE_ARGS),
        NodeSpec("node-1", "2:4", args=NODE_ARGS),
        NodeSpec("node-2", "4:6", args=NODE_ARGS),
    ]
    chain = deployment.connect()
    with chain_snapshot(chain), running_nodes(deployment, workdir, model_path, specs) as nodes:
        yield Swarm(deployment, nodes, model_path, workdir)


@pytest.fixture(scope="module")
def local(swarm: Swarm) -> list[int]:
    reference = load_reference_model(swarm.model_path)
    return reference.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist()


def _generate(model: DistributedModelForCausalLM) -> tuple[list[int], Any]:
    with model.inference_session(max_length=PROMPT.shape[1] + NEW_TOKENS) as session:
        out = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, session=session, do_sample=False)
    return out[0].tolist(), session


def _receipts(ledger_path: Path) -> list[Any]:
    ledger = open_ledger(sqlite_url(ledger_path))
    try:
        with ledger.begin() as db:
            return list(receipts_of(db))
    finally:
        ledger.close()


def test_servers_push_to_each_other_and_each_is_paid_and_chained(
    swarm: Swarm, local: list[int]
) -> None:
    pipelined, pipelined_ledger = swarm.client("pipelined")
    mediated, mediated_ledger = swarm.client("mediated", pipeline=False)
    try:
        tokens, session = _generate(pipelined)
        mediated_tokens, mediated_session = _generate(mediated)
    finally:
        pipelined.close()
        mediated.close()
    assert tokens == mediated_tokens == local
    steps = sum(1 for r in _receipts(pipelined_ledger) if r.span_start == 0)
    assert steps >= NEW_TOKENS
    assert session.pushed == 2 * steps  # node-1 and node-2 got every input from a server
    assert mediated_session.pushed == 0
    assert session.failovers == mediated_session.failovers == 0
    # each server paid exactly what the client-mediated route pays it
    paid = {a: (s.tokens, s.cost) for a, s in session.served.items()}
    assert paid == {a: (s.tokens, s.cost) for a, s in mediated_session.served.items()}
    assert len(paid) == 3
    # every step has a valid receipt from each server, and each server's input is the previous
    # server's output (the chain of custody), as in the client-mediated route
    for ledger_path in (pipelined_ledger, mediated_ledger):
        rows = _receipts(ledger_path)
        assert len(rows) == 3 * steps
        assert all(r.status != ReceiptStatus.INVALID for r in rows)
        by_slot = {(r.session_id, r.span_start): r for r in rows}
        for row in rows:
            if row.span_start > 0:
                (upstream,) = [
                    r for r in rows if r.span_end == row.span_start and r.step == row.step
                ]
                assert upstream.output_hash == row.input_hash
        assert len(by_slot) == 3  # one session per server


class _Stranger:
    """A peer of the swarm that is neither the client nor a server of the route."""

    def __init__(self, peers: list[str]) -> None:
        self.runner = EventLoopThread("stranger")
        self.p2p = self.runner.run(P2P.create(initial_peers=peers), 60)

    def push(self, peer_id: str, request: PushRequest, hidden: torch.Tensor) -> None:
        self.runner.run(push_input(self.p2p, peer_id, request, hidden, timeout=10, max_bytes=2**24))

    def close(self) -> None:
        self.runner.run(self.p2p.shutdown(), 30)
        self.runner.close()


def test_a_hop_whose_push_fails_gets_its_input_from_the_client_and_strangers_are_refused(
    swarm: Swarm, local: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """node-0 is told a wrong session for node-1, so its pushes are refused; the client pushes
    node-1's input itself. Meanwhile a stranger tries to push into node-1's waiting step and is
    refused, with no receipt, with a receipt not signed by node-0, and with node-0's key over
    another tensor."""
    import client.session as client_session

    model, ledger_path = swarm.client("misdirected")
    node0, node1 = swarm.nodes[0], swarm.nodes[1]
    real_target = client_session.PushTarget

    def misdirected(peer_id: str, session_id: bytes, step: int) -> Any:
        if peer_id == node1.peer_id:
            session_id = os.urandom(32)  # node-1 has no such session: UNKNOWN_SESSION
        return real_target(peer_id, session_id, step)

    monkeypatch.setattr(client_session, "PushTarget", misdirected)
    stranger = _Stranger([m for n in swarm.nodes for m in n.maddrs])
    network = model.client.network
    real_push = network.push
    refusals: list[ErrorCode] = []
    domain = model.client.parts.receipt_domain

    def push(peer_id: str, request: PushRequest, hidden: torch.Tensor, **limits: Any) -> None:
        if not refusals:  # node-1 waits for this step's input: a stranger tries first
            key = Account.from_key(swarm.deployment.account(node0.spec.account).private_key)
            other = Account.create()
            leaf = Leaf(
                request.session_id, b"\x00" * 32, 0, 2, 0, hidden.shape[0] * hidden.shape[1],
                b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, 1,
            )  # fmt: skip
            for receipt in (
                None,
                SignedReceipt(leaf, sign_receipt(domain, leaf, other)),
                SignedReceipt(leaf, sign_receipt(domain, leaf, key)),  # not this tensor's hash
            ):
                forged = PushRequest(request.session_id, request.step, receipt)
                with pytest.raises(ProtocolError) as refused:
                    stranger.push(peer_id, forged, hidden + 1)
                refusals.append(refused.value.code)
        real_push(peer_id, request, hidden, **limits)

    monkeypatch.setattr(network, "push", push)
    try:
        tokens, session = _generate(model)
    finally:
        model.close()
        stranger.close()
    assert tokens == local
    assert refusals == [ErrorCode.UNAUTHORIZED, ErrorCode.UNAUTHORIZED, ErrorCode.BAD_TENSOR]
    assert session.failovers == 0  # no one was replaced, no one banned
    rows = _receipts(ledger_path)
    steps = sum(1 for r in rows if r.span_start == 0)
    assert session.pushed == steps  # node-2 still got its inputs from node-1
    backoff = model.client.router.backoff
    assert all(backoff.failures(n.peer_id) == 0 for n in swarm.nodes)
    assert len(rows) == 3 * steps and all(r.status != ReceiptStatus.INVALID for r in rows)
