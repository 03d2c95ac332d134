"""Three real node processes serving a tiny Llama over loopback, staked and paid on Anvil.

The nodes (blocks 0:2, 2:4, 4:6) are shared by the module's tests, in file order; the last
test stops and restarts one. Everything the nodes did on-chain is reverted afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from eth_account import Account
from eth_account.messages import encode_defunct
from hivemind.p2p import PeerID
from hivemind.proto import runtime_pb2

from client.remote import RemoteError, RemoteSpanSession, remote_forward, remote_info
from ledger.contracts import Contracts
from ledger.db import commitment_counts, open_ledger, sqlite_url
from ledger.db.models import SentTransaction
from ledger.deployment import Deployment
from ledger.eip712 import recover_receipt_signer, sign_voucher
from ledger.merkle import verify
from ledger.types import BatchId, ChannelId, Voucher
from node.blocks import SPAN_FP32_ATOL, load_client_head
from node.protocol import (
    RPC_INFERENCE,
    ErrorCode,
    ForwardRequest,
    Frame,
    RevealRequest,
    StepRequest,
    encode_frame,
    read_frame,
    reveal_message,
)
from node.tensors import tensor_hash
from stakeswarm.tiny_models import load_reference_model
from tests.integration.nodes import (
    NodeProcess,
    NodeSpec,
    PaidSwarm,
    RouteSession,
    chain_snapshot,
    greedy_generate,
    paid_swarm,
    running_nodes,
    start_node,
)
from verifier.errors import RevealUnavailableError
from verifier.reveal import send_reveal

pytestmark = pytest.mark.timeout(900)

IDLE_TIMEOUT = 6  # seconds: short, so expiry is testable
MAX_FORWARD_TOKENS = 16  # small, so a forward over the cap stays a tiny tensor
NODE_ARGS = (
    "--commit-interval", "2",
    "--redeem-interval", "3600",
    "--idle-timeout", str(IDLE_TIMEOUT),
    "--cache-tokens", "4096",
    "--max-frame-mb", "2",
    "--announce-interval", "5",
    "--max-forward-tokens", str(MAX_FORWARD_TOKENS),
    # what an operator gets by asking for nothing in particular: on this CPU, float32; on a GPU
    # machine `--dtype auto` would serve 16-bit, which this module's float32 clients do not
    # route to (tests/integration/test_cuda.py covers that), so there it stays float32
    "--device", "auto",
    "--dtype", "float32" if torch.cuda.is_available() else "auto",
)  # fmt: skip
EXPECTED_DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"
PROMPT = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])


@pytest.fixture(scope="module")
def swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PaidSwarm]:
    chain = deployment.connect()
    workdir = tmp_path_factory.mktemp("nodes")
    specs = [NodeSpec(f"node-{i}", f"{2 * i}:{2 * i + 2}", args=NODE_ARGS) for i in range(3)]
    with chain_snapshot(chain):
        verifier = Account.from_key(deployment.account("verifier-0").private_key)
        as_verifier = Contracts.from_deployment(chain, deployment, chain.sender(verifier))
        as_verifier.verifier_registry.register_with_approve(
            as_verifier.verifier_registry.min_stake()
        )
        with (
            running_nodes(deployment, workdir, model_path, specs) as nodes,
            paid_swarm(deployment, chain, nodes, model_path, workdir) as started,
        ):
            yield started


@pytest.fixture(scope="module")
def reference(model_path: Path):  # noqa: ANN201
    return load_reference_model(model_path)


def test_a_chain_of_spans_gives_the_local_models_hidden_states(swarm: PaidSwarm, reference) -> None:
    head = load_client_head(swarm.model_path)
    route = swarm.route()
    hidden = head.embed(PROMPT)
    outputs = []
    mask = torch.ones_like(PROMPT)
    for hop, session in zip(route.hops, route.sessions, strict=True):
        voucher = swarm.payer.pay(hop.channel, PROMPT.numel() * hop.price_per_token)
        hidden, _ = swarm.runner.run(session.step(hidden, mask, voucher))
        outputs.append(hidden)
    route.close()
    with torch.no_grad():
        expected = reference(PROMPT, output_hidden_states=True)
    # hidden_states[k] is the input of block k; the last one has the final norm applied
    torch.testing.assert_close(outputs[0], expected.hidden_states[2], atol=SPAN_FP32_ATOL, rtol=0)
    torch.testing.assert_close(outputs[1], expected.hidden_states[4], atol=SPAN_FP32_ATOL, rtol=0)
    torch.testing.assert_close(
        head.logits(outputs[2]), expected.logits, atol=SPAN_FP32_ATOL * 10, rtol=0
    )


def test_greedy_generation_through_servers_equals_local_generation(
    swarm: PaidSwarm, reference
) -> None:
    head = load_client_head(swarm.model_path)
    route = swarm.route()
    remote = greedy_generate(route, head, PROMPT, new_tokens=8)
    route.close()
    local = reference.generate(
        PROMPT, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(PROMPT)
    )
    assert remote.tolist() == local.tolist()

    # Receipts: signed by each node, and the chain of custody holds hop to hop.
    slasher_domain = Contracts.from_deployment(
        swarm.deployment.connect(), swarm.deployment
    ).slasher.domain()
    for step, receipts in enumerate(route.receipts):
        for hop, receipt in zip(swarm.hops, receipts, strict=True):
            assert receipt.leaf.step == step
            assert (receipt.leaf.span_start, receipt.leaf.span_end) == hop.span
            signer = recover_receipt_signer(slasher_domain, receipt.leaf, receipt.signature)
            assert signer == hop.node.address
        for before, after in zip(receipts, receipts[1:], strict=False):
            assert before.leaf.output_hash == after.leaf.input_hash
    assert route.receipts[0][0].leaf.tokens == PROMPT.numel()
    assert route.receipts[1][0].leaf.tokens == 1


def test_stateless_forward_and_info(swarm: PaidSwarm, reference) -> None:
    hop = swarm.hops[1]
    info = swarm.runner.run(remote_info(swarm.p2p, hop.node.peer_id))
    assert info.model == "tiny-llama" and info.total_blocks == 6
    assert (info.server.span_start, info.server.span_end) == (2, 4)
    assert info.server.eth_address == hop.node.address
    hidden = torch.randn(2, 5, 64)
    voucher = swarm.payer.pay(hop.channel, hidden.shape[0] * hidden.shape[1] * hop.price_per_token)
    request = ForwardRequest(os.urandom(32), 2, 4, voucher)
    output, receipt = swarm.runner.run(
        remote_forward(
            swarm.p2p, hop.node.peer_id, request, hidden, torch.ones(2, 5, dtype=torch.long)
        )
    )
    assert output.shape == hidden.shape
    assert receipt.leaf.input_hash == tensor_hash(hidden)
    assert receipt.leaf.output_hash == tensor_hash(output)
    with pytest.raises(RemoteError) as refused:  # a session id is served once, ever
        swarm.runner.run(
            remote_forward(
                swarm.p2p,
                hop.node.peer_id,
                ForwardRequest(
                    request.session_id, 2, 4, swarm.payer.pay(hop.channel, 10 * hop.price_per_token)
                ),
                hidden,
                torch.ones(2, 5, dtype=torch.long),
            )
        )
    assert refused.value.code is ErrorCode.SESSION_EXISTS
    swarm.payer.paid[hop.channel] -= 10 * hop.price_per_token  # that voucher was not accepted


def test_a_forward_over_the_token_cap_is_refused_before_payment(swarm: PaidSwarm) -> None:
    hop = swarm.hops[1]
    unredeemed = hop.node.status()["earnings"]["unredeemed_base_units"]
    hidden = torch.randn(2, MAX_FORWARD_TOKENS // 2 + 1, 64)  # 18 tokens: 2 over the cap
    tokens = hidden.shape[0] * hidden.shape[1]
    paid = swarm.payer.paid[hop.channel]
    voucher = swarm.payer.sign(hop.channel, paid + tokens * hop.price_per_token)  # not recorded
    error = _refused(
        swarm,
        remote_forward(
            swarm.p2p, hop.node.peer_id, ForwardRequest(os.urandom(32), 2, 4, voucher), hidden,
            torch.ones(hidden.shape[:2], dtype=torch.long),
        ),
    )  # fmt: skip
    assert error.code is ErrorCode.LENGTH_EXCEEDED
    assert f"{tokens} tokens" in error.message and f"cap of {MAX_FORWARD_TOKENS}" in error.message
    assert not error.spent
    assert hop.node.status()["earnings"]["unredeemed_base_units"] == unredeemed  # nothing was owed
    # the refused voucher was not recorded: a smaller cumulative amount is still accepted
    small = torch.randn(1, MAX_FORWARD_TOKENS, 64)
    output, _ = swarm.runner.run(
        remote_forward(
            swarm.p2p, hop.node.peer_id,
            ForwardRequest(
                os.urandom(32), 2, 4, swarm.payer.pay(hop.channel, small.shape[1] * hop.price_per_token)
            ),
            small, torch.ones(1, MAX_FORWARD_TOKENS, dtype=torch.long),
        )
    )  # fmt: skip
    assert output.shape == small.shape


def _raw_stream(swarm: PaidSwarm, peer: str, frames: list[Frame]) -> list[Frame]:
    """Send `frames` on a fresh inference stream and read the node's answers until it ends."""

    async def run() -> list[Frame]:
        messages = [m for f in frames for m in encode_frame(f, runtime_pb2.ExpertRequest)]

        async def outgoing():  # noqa: ANN202
            for message in messages:
                yield message

        from hivemind.p2p import PeerID

        responses = await swarm.p2p.iterate_protobuf_handler(
            PeerID.from_base58(peer), RPC_INFERENCE, outgoing(), runtime_pb2.ExpertResponse
        )
        answers = []
        while (frame := await read_frame(responses)) is not None:
            answers.append(frame)
        return answers

    return swarm.runner.run(run())


def _refused(swarm: PaidSwarm, coro) -> RemoteError:  # noqa: ANN001
    with pytest.raises(RemoteError) as refused:
        swarm.runner.run(coro)
    return refused.value


def test_bad_requests_get_clear_errors_while_a_healthy_session_completes(
    swarm: PaidSwarm, reference
) -> None:
    head = load_client_head(swarm.model_path)
    healthy = swarm.route()
    ids, mask = PROMPT, torch.ones_like(PROMPT)
    hidden = head.embed(ids)

    def healthy_step() -> None:
        nonlocal ids, mask, hidden
        out = healthy.step(hidden, mask)
        next_ids = head.logits(out)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_ids], 1)
        mask = torch.cat([mask, torch.ones_like(next_ids)], 1)
        hidden = head.embed(next_ids)

    hop = swarm.hops[0]
    bad = swarm.runner.run(
        RemoteSpanSession.open(
            swarm.p2p, hop.node.peer_id, session_id=os.urandom(32), span=(0, 2),
            max_length=16, batch_size=1, channel_id=hop.channel,
        )
    )  # fmt: skip
    good_hidden = torch.randn(1, 3, 64)
    good_mask = torch.ones(1, 3, dtype=torch.long)
    cost = 3 * hop.price_per_token

    def next_voucher() -> Voucher:  # not yet accepted: the payer's total is not advanced
        return swarm.payer.sign(hop.channel, swarm.payer.paid[hop.channel] + cost)

    cases = {
        ErrorCode.BAD_TENSOR: [
            (torch.randn(1, 3, 63), good_mask),  # wrong hidden size
            (good_hidden.half(), good_mask),  # wrong dtype
            (torch.full((1, 3, 64), float("nan")), good_mask),
            (torch.full((1, 3, 64), float("inf")), good_mask),
            (good_hidden, torch.ones(1, 4, dtype=torch.long)),  # mask of the wrong length
            (torch.randn(2, 3, 64), torch.ones(2, 3, dtype=torch.long)),  # wrong batch
        ],
    }
    for code, pairs in cases.items():
        for bad_hidden, bad_mask in pairs:
            error = _refused(swarm, bad.step(bad_hidden, bad_mask, next_voucher()))
            assert error.code is code and not error.fatal, error
            healthy_step()

    other_key = Account.from_key(swarm.deployment.account("client-1").private_key)

    def forged() -> Voucher:
        amount = swarm.payer.paid[hop.channel] + cost
        unsigned = Voucher(hop.channel, amount)
        return Voucher(hop.channel, amount, sign_voucher(swarm.payer.domain, unsigned, other_key))

    payment_cases = [
        (forged, ErrorCode.BAD_VOUCHER),
        (
            lambda: Voucher(hop.channel, next_voucher().cumulative_amount, b"\x01" * 65),
            ErrorCode.BAD_VOUCHER,
        ),
        (
            lambda: swarm.payer.sign(swarm.hops[1].channel, next_voucher().cumulative_amount),
            ErrorCode.WRONG_CHANNEL,
        ),
        (
            lambda: swarm.payer.sign(hop.channel, swarm.payer.paid[hop.channel] + 1),
            ErrorCode.PAYMENT_BEHIND,
        ),
    ]
    for make_voucher, code in payment_cases:
        error = _refused(swarm, bad.step(good_hidden, good_mask, make_voucher()))
        assert error.code is code and not error.fatal, error
        healthy_step()

    # a correct step goes through; repeating its voucher is a replay
    voucher = swarm.payer.pay(hop.channel, cost)
    swarm.runner.run(bad.step(good_hidden, good_mask, voucher))
    error = _refused(
        swarm, bad.step(torch.randn(1, 1, 64), torch.ones(1, 4, dtype=torch.long), voucher)
    )
    assert error.code is ErrorCode.REPLAYED_VOUCHER
    healthy_step()

    bad.next_step = 5  # out of order
    error = _refused(
        swarm, bad.step(torch.randn(1, 1, 64), torch.ones(1, 4, dtype=torch.long), next_voucher())
    )
    assert error.code is ErrorCode.OUT_OF_ORDER and not error.fatal
    bad.next_step = 1
    error = _refused(
        swarm, bad.step(torch.randn(1, 14, 64), torch.ones(1, 17, dtype=torch.long), next_voucher())
    )
    assert error.code is ErrorCode.LENGTH_EXCEEDED and not error.fatal
    healthy_step()

    # oversized payload (the nodes accept 2 MiB frames here): fatal for that stream only
    big = torch.randn(1, 9000, 64)
    error = _refused(swarm, bad.step(big, torch.ones(1, 9003, dtype=torch.long), next_voucher()))
    assert error.code is ErrorCode.TOO_LARGE and error.fatal
    healthy_step()

    # a step on a stream that never opened a session
    answers = _raw_stream(
        swarm,
        hop.node.peer_id,
        [Frame(StepRequest(0, next_voucher()).to_wire(), [good_hidden, good_mask])],
    )
    assert [a.metadata["code"] for a in answers] == [ErrorCode.UNKNOWN_SESSION.value]
    healthy_step()

    # blocks the node does not serve, a cache too large, a reused session id
    for kwargs, code in [
        ({"span": (0, 3), "max_length": 8, "session_id": os.urandom(32)}, ErrorCode.SPAN_MISMATCH),
        ({"span": (0, 2), "max_length": 5000, "session_id": os.urandom(32)}, ErrorCode.CACHE_FULL),
        ({"span": (0, 2), "max_length": 8, "session_id": bad.session_id}, ErrorCode.SESSION_EXISTS),
    ]:
        error = _refused(
            swarm,
            RemoteSpanSession.open(
                swarm.p2p, hop.node.peer_id, batch_size=1, channel_id=hop.channel, **kwargs
            ),
        )
        assert error.code is code and error.fatal
        healthy_step()

    for _ in range(3):
        healthy_step()
    healthy.close()
    local = reference.generate(
        PROMPT, max_new_tokens=ids.shape[1] - PROMPT.shape[1], do_sample=False,
        attention_mask=torch.ones_like(PROMPT),
    )  # fmt: skip
    assert ids.tolist() == local.tolist()
    assert all(node.alive() for node in swarm.nodes)
    metrics = hop.node.metrics()
    assert 'stakeswarm_errors_total{code="bad_tensor"} 6.0' in metrics
    assert 'stakeswarm_errors_total{code="bad_voucher"} 2.0' in metrics


def test_an_idle_session_expires(swarm: PaidSwarm) -> None:
    hop = swarm.hops[2]
    session = swarm.runner.run(
        RemoteSpanSession.open(
            swarm.p2p, hop.node.peer_id, session_id=os.urandom(32), span=(4, 6),
            max_length=8, batch_size=1, channel_id=hop.channel,
        )
    )  # fmt: skip
    used = hop.node.status()["cache"]["tokens_used"]
    assert used == 8
    time.sleep(IDLE_TIMEOUT + 2)
    assert hop.node.status()["cache"]["tokens_used"] == 0  # the cache was freed
    error = _refused(
        swarm,
        session.step(
            torch.randn(1, 1, 64),
            torch.ones(1, 1, dtype=torch.long),
            swarm.payer.sign(hop.channel, 1),
        ),
    )
    assert error.code is ErrorCode.SESSION_EXPIRED


def _wait_committed(node: NodeProcess, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = node.status()
        commitments = status["commitments"]
        if commitments["pending_leaves"] == 0 and commitments["committed_leaves"] > 0:
            return status
        assert time.monotonic() < deadline, f"leaves not committed: {commitments}"
        time.sleep(0.5)


def test_leaves_are_committed_on_chain_and_revealed_to_active_verifiers_only(
    swarm: PaidSwarm,
) -> None:
    route = swarm.route()
    head = load_client_head(swarm.model_path)
    greedy_generate(route, head, PROMPT, new_tokens=3)
    route.close()
    hop = swarm.hops[1]
    _wait_committed(hop.node)
    chain = swarm.deployment.connect()
    contracts = Contracts.from_deployment(chain, swarm.deployment)
    batches = contracts.commitments.batches_committed(node=hop.node.address)
    assert batches and all(b.node == hop.node.address for b in batches)
    # the route's last leaf on this node, and the batch that holds it
    leaf = route.receipts[-1][1].leaf
    verifier = Account.from_key(swarm.deployment.account("verifier-0").private_key)

    def request(batch: int, index: int, signer=verifier, at: int | None = None) -> RevealRequest:  # noqa: ANN001
        at = int(time.time()) if at is None else at
        message = reveal_message(hop.node.address, batch, index, at)
        signature = signer.sign_message(encode_defunct(text=message)).signature
        return RevealRequest(hop.node.address, batch, index, at, signer.address, bytes(signature))

    found = None
    for batch in reversed(batches):
        for index in reversed(range(batch.leaf_count)):
            revealed = swarm.runner.run(
                send_reveal(
                    swarm.p2p, PeerID.from_base58(hop.node.peer_id), request(batch.batch_id, index)
                )
            )
            if revealed.response.steps[-1].leaf == leaf:
                found = revealed
                break
        if found:
            break
    assert found is not None, "the route's leaf was not among the node's committed batches"
    steps = found.response.steps
    assert [s.leaf.step for s in steps] == list(range(leaf.step + 1))
    # step k's mask covers every step's positions up to k: the prompt, then one per step
    assert found.mask.shape[1] == PROMPT.shape[1] + leaf.step
    for step, hidden, receipts in zip(steps, found.hidden, route.receipts, strict=True):
        assert step.leaf == receipts[1].leaf
        assert tensor_hash(hidden) == step.leaf.input_hash
        batch = contracts.commitments.get_batch(BatchId(step.batch_id))
        assert verify(step.proof, batch.root, step.leaf.hash(), step.leaf_index, batch.leaf_count)
        assert contracts.slasher.verify_leaf(step.leaf, batch, step.leaf_index, step.proof)

    client = Account.from_key(swarm.deployment.account("client-0").private_key)
    batch_id = steps[-1].batch_id
    for bad, code in [
        (request(batch_id, 0, signer=client), ErrorCode.UNAUTHORIZED),  # not a verifier
        (request(batch_id, 0, at=int(time.time()) - 3600), ErrorCode.UNAUTHORIZED),  # stale
        (request(10**6, 0), ErrorCode.NOT_FOUND),
    ]:
        with pytest.raises(RevealUnavailableError) as refused:
            swarm.runner.run(send_reveal(swarm.p2p, PeerID.from_base58(hop.node.peer_id), bad))
        assert refused.value.code is code


def test_status_health_and_metrics(swarm: PaidSwarm) -> None:
    node = swarm.nodes[0]
    assert httpx.get(f"{node.http_url}/health", timeout=10).json() == {"status": "ok"}
    status = _wait_committed(node)
    assert status["span"] == [0, 2] and status["state"] == "online"
    assert status["address"] == node.address and status["peer_id"] == node.peer_id
    assert status["sessions"] == 0 and status["cache"]["tokens_used"] == 0
    # where it computes, in what precision, and what room is left there
    assert status["dtype"] == "float32"
    device = status["device"]
    assert device["name"] == EXPECTED_DEVICE
    memory = device["memory"]
    assert 0 < memory["free_bytes"] <= memory["total_bytes"]
    assert memory["used_bytes"] == memory["total_bytes"] - memory["free_bytes"]
    assert memory["process_bytes"] > 0
    assert device["planned"]["weights_bytes"] > 0 and device["planned"]["cache_bytes"] > 0
    assert (
        int(status["earnings"]["unredeemed_base_units"]) == swarm.payer.paid[swarm.hops[0].channel]
    )
    assert status["earnings"]["redeemed_base_units"] == "0"
    assert status["commitments"]["committed_batches"] >= 1
    metrics = node.metrics()
    for series in ("stakeswarm_steps_total", "stakeswarm_tokens_total", "stakeswarm_commits_total"):
        value = next(line for line in metrics.splitlines() if line.startswith(series + " "))
        assert float(value.split()[1]) > 0
    lines = metrics.splitlines()
    assert f'stakeswarm_serving{{device="{EXPECTED_DEVICE}",dtype="float32"}} 1.0' in lines
    for series in ("total", "free", "used", "process"):
        name = f'stakeswarm_device_memory_{series}_bytes{{device="{EXPECTED_DEVICE}"}} '
        value = next(line for line in lines if line.startswith(name))
        assert float(value.split()[1]) > 0


def _registry_txs(node: NodeProcess) -> list[str]:
    ledger = open_ledger(sqlite_url(node.home / "node" / node.address / "ledger.sqlite"))
    try:
        with ledger.begin() as db:
            rows = db.query(SentTransaction.function).all()
        return sorted(r[0] for r in rows if r[0].startswith(("NodeRegistry", "StakeToken")))
    finally:
        ledger.close()


def test_shutdown_commits_and_redeems_and_a_restart_registers_nothing_new(swarm: PaidSwarm) -> None:
    hop = swarm.hops[2]
    node = hop.node
    route = RouteSession(swarm.runner, swarm.p2p, swarm.payer, [hop]).open(8)
    route.step(torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.long))
    route.close()
    txs_before = _registry_txs(node)
    assert node.stop() == 0
    assert "stopped" in node.stdout.read_text()
    chain = swarm.deployment.connect()
    contracts = Contracts.from_deployment(chain, swarm.deployment)
    channel = contracts.payment_channels.get_channel(ChannelId(hop.channel))
    assert channel.redeemed == swarm.payer.paid[hop.channel]  # every voucher redeemed
    ledger = open_ledger(sqlite_url(node.home / "node" / node.address / "ledger.sqlite"))
    try:
        with ledger.begin() as db:
            counts = commitment_counts(db)
    finally:
        ledger.close()
    assert counts.pending_leaves == 0 and counts.committed_leaves > 0

    restarted = start_node(
        node.spec, swarm.deployment, swarm.workdir, swarm.model_path,
        initial_peers=swarm.nodes[0].maddrs,
    )  # fmt: skip
    try:
        restarted.wait_ready()
        assert restarted.peer_id == node.peer_id  # stable identity: no updateService
        assert _registry_txs(restarted) == txs_before  # no transaction to the registry
        hop.node = restarted
        route = RouteSession(swarm.runner, swarm.p2p, swarm.payer, [hop]).open(8)
        out = route.step(torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.long))
        route.close()
        assert out.shape == (1, 4, 64)
    finally:
        assert restarted.stop() == 0
