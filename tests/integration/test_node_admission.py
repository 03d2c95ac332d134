"""What a node lets in, with one real node process on Anvil: unpaid sessions give their KV
cache back within the open timeout (docs/protocol.md §6), bytes that are not messages get a
`bad_request` reply, work that takes longer than a client's silence timeout is answered
because the node sends keepalives meanwhile, and a step that arrives while the node shuts
down is refused with `shutting_down` before it is paid for.

The tests share the node, in file order; the last one stops it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest
import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from client.remote import RemoteError, RemoteSpanSession, remote_forward
from client.session import NO_BLAME_CODES
from ledger.deployment import Deployment
from node.protocol import (
    MAX_REQUEST_MESSAGE_BYTES,
    RPC_FORWARD,
    RPC_INFERENCE,
    ErrorCode,
    ErrorReply,
    ForwardRequest,
    Frame,
    decode_frame,
    encode_frame,
)
from tests.integration.nodes import (
    Hop,
    NodeSpec,
    PaidSwarm,
    chain_snapshot,
    mining_paused,
    paid_swarm,
    running_nodes,
)

pytestmark = pytest.mark.timeout(600)

OPEN_TIMEOUT = 3  # seconds an unpaid session may hold its cache
LONG_FORWARD = (64, 2048)  # batch x length of a forward that computes for seconds (32 MiB)
MAX_INCOMING_MB = 48  # tensor MiB all incoming frames together may hold
MAX_LENGTH = 16
NODE_ARGS = (
    "--open-timeout", str(OPEN_TIMEOUT),
    "--idle-timeout", "120",
    "--cache-tokens", str(4 * MAX_LENGTH),  # room for four sessions
    "--commit-interval", "3600",
    "--redeem-interval", "3600",
    "--max-forward-tokens", str(LONG_FORWARD[0] * LONG_FORWARD[1]),
    "--max-frame-mb", "40",
    "--max-incoming-mb", str(MAX_INCOMING_MB),
)  # fmt: skip


@pytest.fixture(scope="module")
def swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PaidSwarm]:
    chain = deployment.connect()
    workdir = tmp_path_factory.mktemp("nodes")
    spec = NodeSpec("node-0", "0:2", args=NODE_ARGS)
    with (
        chain_snapshot(chain),
        running_nodes(deployment, workdir, model_path, [spec]) as nodes,
        paid_swarm(deployment, chain, nodes, model_path, workdir) as started,
    ):
        yield started


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _opening(swarm: PaidSwarm, hop: Hop) -> Any:
    return RemoteSpanSession.open(
        swarm.p2p, hop.node.peer_id, session_id=os.urandom(32), span=(0, 2),
        max_length=MAX_LENGTH, batch_size=1, channel_id=hop.channel,
    )  # fmt: skip


def _refused(swarm: PaidSwarm, coro: Any) -> RemoteError:
    with pytest.raises(RemoteError) as error:
        swarm.runner.run(coro)
    return error.value


def _unpaid_voucher(swarm: PaidSwarm, hop: Hop) -> Any:
    """A valid voucher for one more token, not counted as paid (it is expected to be refused)."""
    return swarm.payer.sign(hop.channel, swarm.payer.paid[hop.channel] + hop.price_per_token)


def test_unpaid_sessions_are_closed_and_their_cache_freed_while_a_paid_one_stays(
    swarm: PaidSwarm,
) -> None:
    (hop,) = swarm.hops

    def cache_used() -> int:
        return int(hop.node.status()["cache"]["tokens_used"])

    paid = swarm.session(hop, max_length=MAX_LENGTH)
    paid.step(torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.long))
    squatters = [swarm.runner.run(_opening(swarm, hop)) for _ in range(3)]
    assert cache_used() == 4 * MAX_LENGTH  # the whole budget is reserved
    assert _refused(swarm, _opening(swarm, hop)).code is ErrorCode.CACHE_FULL
    # a refused step (wrong hidden size) is no payment: it does not extend the deadline
    bad = _refused(
        swarm,
        squatters[0].step(
            torch.randn(1, 1, 63), torch.ones(1, 1, dtype=torch.long), _unpaid_voucher(swarm, hop)
        ),
    )
    assert bad.code is ErrorCode.BAD_TENSOR and not bad.fatal

    assert _wait_for(lambda: cache_used() == MAX_LENGTH, timeout=OPEN_TIMEOUT + 15)
    assert hop.node.status()["sessions"] == 1
    expired = _refused(
        swarm,
        squatters[1].step(
            torch.randn(1, 1, 64), torch.ones(1, 1, dtype=torch.long), _unpaid_voucher(swarm, hop)
        ),
    )
    assert expired.code is ErrorCode.SESSION_EXPIRED
    assert f"no paid step within {OPEN_TIMEOUT} s" in expired.message
    # the paid session kept its cache and goes on; the freed cache takes new sessions
    out = paid.step(torch.randn(1, 1, 64), torch.ones(1, 5, dtype=torch.long))
    assert out.shape == (1, 1, 64)
    newcomer = swarm.runner.run(_opening(swarm, hop))
    assert cache_used() == 2 * MAX_LENGTH
    swarm.runner.run(newcomer.close())
    paid.close()


def _send_raw(swarm: PaidSwarm, peer_id: str, name: str, data: bytes) -> list[Frame]:
    """Write `data` as it is on a new `name` stream; the frames the node answers."""

    async def run() -> list[Frame]:
        _, reader, writer = await swarm.p2p.call_binary_stream_handler(
            PeerID.from_base58(peer_id), name
        )
        with closing(writer):
            writer.write(data)
            await writer.drain()
            messages = []
            # until the node closes the stream, or (it waits for the caller to close after a
            # refusal, node.streams.linger) half a second after its last answer
            with suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                while True:
                    message, error = await asyncio.wait_for(
                        P2P.receive_protobuf(runtime_pb2.ExpertResponse, reader),
                        0.5 if messages else 30,
                    )
                    assert error is None, error
                    messages.append(message)
        return [decode_frame([m]) for m in messages]

    return swarm.runner.run(run(), timeout=30)


def test_garbage_bytes_get_a_bad_request_reply_before_the_stream_closes(swarm: PaidSwarm) -> None:
    (hop,) = swarm.hops
    undecodable = bytes(P2P.MESSAGE_MARKER) + (7).to_bytes(P2P.HEADER_LEN, "big") + b"\xff" * 7
    for name in (RPC_INFERENCE, RPC_FORWARD):
        for data in (b"GET / HTTP/1.1\r\n\r\n" * 8, undecodable):
            (reply,) = _send_raw(swarm, hop.node.peer_id, name, data)
            assert reply.type == ErrorReply.TYPE
            error = ErrorReply.from_wire(reply.metadata)
            assert error.code is ErrorCode.BAD_REQUEST and "unreadable" in error.message
    # the node goes on serving
    route = swarm.session(hop, max_length=MAX_LENGTH)
    route.step(torch.randn(1, 2, 64), torch.ones(1, 2, dtype=torch.long))
    route.close()


def test_an_oversized_message_is_refused_at_its_length_prefix(swarm: PaidSwarm) -> None:
    """A message announcing 400 MiB is refused before any of it is read: the body is never
    sent, so a node that buffered messages first would wait instead of answering."""
    (hop,) = swarm.hops
    announced = 400 * 1024 * 1024
    prefix = bytes(P2P.MESSAGE_MARKER) + announced.to_bytes(P2P.HEADER_LEN, "big")
    for name in (RPC_INFERENCE, RPC_FORWARD):
        (reply,) = _send_raw(swarm, hop.node.peer_id, name, prefix + b"\x00" * 1024)
        error = ErrorReply.from_wire(reply.metadata)
        assert error.code is ErrorCode.TOO_LARGE
        assert f"a message of {announced} bytes" in error.message
        assert str(MAX_REQUEST_MESSAGE_BYTES) in error.message
    route = swarm.session(hop, max_length=MAX_LENGTH)  # the node goes on serving
    route.step(torch.randn(1, 2, 64), torch.ones(1, 2, dtype=torch.long))
    route.close()


def test_incoming_frames_share_one_memory_budget_across_connections(swarm: PaidSwarm) -> None:
    """A caller that announces a 40 MiB tensor and sends only its first chunks holds 40 of
    the node's 48 MiB: a 16 MiB forward on another connection is refused as `busy` (nothing
    charged, no one's fault) before its tensor is kept, and goes through once that caller
    leaves."""
    (hop,) = swarm.hops
    held = torch.zeros(160, 1024, 64)  # 40 MiB
    first = next(iter(encode_frame(Frame({"type": "forward"}, [held]), runtime_pb2.ExpertRequest)))
    data = first.SerializeToString()
    prefix = bytes(P2P.MESSAGE_MARKER) + len(data).to_bytes(P2P.HEADER_LEN, "big")
    hidden = torch.randn(64, 1024, 64)  # 16 MiB
    tokens = hidden.shape[0] * hidden.shape[1]

    def forward(voucher: Any) -> Any:
        return remote_forward(
            swarm.p2p, hop.node.peer_id, ForwardRequest(os.urandom(32), 0, 2, voucher),
            hidden, torch.ones(hidden.shape[:2], dtype=torch.long),
        )  # fmt: skip

    async def hold_then_forward() -> RemoteError:
        _, reader, writer = await swarm.p2p.call_binary_stream_handler(
            PeerID.from_base58(hop.node.peer_id), RPC_FORWARD
        )
        with closing(writer):
            writer.write(prefix + data)  # the frame's first message: the rest never comes
            await writer.drain()
            await asyncio.sleep(1.0)  # the node has it
            paid = swarm.payer.paid[hop.channel]
            with pytest.raises(RemoteError) as refused:
                await forward(swarm.payer.sign(hop.channel, paid + tokens * hop.price_per_token))
            return refused.value

    error = swarm.runner.run(hold_then_forward(), timeout=60)
    assert error.code is ErrorCode.BUSY and not error.spent, error
    assert f"of its {MAX_INCOMING_MB} MiB" in error.message
    assert error.code in NO_BLAME_CODES
    # the holder left: its share is back as soon as the node read the end of its stream
    voucher = swarm.payer.pay(hop.channel, tokens * hop.price_per_token)
    deadline = time.monotonic() + 10
    while True:
        try:
            output, _ = swarm.runner.run(forward(voucher), timeout=60)
            break
        except RemoteError as exc:  # a refused voucher was never counted: send it again
            assert exc.code is ErrorCode.BUSY and time.monotonic() < deadline, exc
            time.sleep(0.2)
    assert output.shape == hidden.shape


def test_a_node_at_work_is_heard_from_while_a_long_forward_holds_its_compute(
    swarm: PaidSwarm,
) -> None:
    """A forward that computes for seconds, and a decode step queued behind it, are both
    answered although each takes longer than the client's silence timeout: the node sends
    `working` frames while it works, so only a node that sends nothing counts as gone."""
    (hop,) = swarm.hops
    silence = 0.75
    paid = swarm.session(hop, max_length=MAX_LENGTH)
    paid.step(torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.long))
    (session,) = paid.sessions
    big = torch.randn(*LONG_FORWARD, 64)
    tokens = LONG_FORWARD[0] * LONG_FORWARD[1]
    # a channel of its own: the forward's and the step's vouchers may arrive in either order
    channel = swarm.payer.open_channel(hop.node.address)
    forward_voucher = swarm.payer.pay(channel, tokens * hop.price_per_token)
    step_voucher = swarm.payer.pay(hop.channel, hop.price_per_token)

    async def run() -> tuple[float, float, torch.Tensor, torch.Tensor]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        forward = asyncio.ensure_future(
            remote_forward(
                swarm.p2p, hop.node.peer_id, ForwardRequest(os.urandom(32), 0, 2, forward_voucher),
                big, torch.ones(LONG_FORWARD, dtype=torch.long), silence=silence,
            )
        )  # fmt: skip
        await asyncio.sleep(1.0)  # the forward is in and computing (it uploads in a fraction)
        sent = loop.time()
        output, _ = await session.step(
            torch.randn(1, 1, 64), torch.ones(1, 5, dtype=torch.long), step_voucher,
            silence=silence,
        )  # fmt: skip
        step_time = loop.time() - sent
        forwarded, _ = await forward
        return loop.time() - started, step_time, output, forwarded

    forward_time, step_time, output, forwarded = swarm.runner.run(run(), timeout=300)
    assert forwarded.shape == big.shape and output.shape == (1, 1, 64)
    assert forward_time > 2 * silence, f"the forward took {forward_time:.2f} s: not long enough"
    assert step_time > silence, f"the step waited {step_time:.2f} s: not long enough"
    paid.close()


def test_a_step_during_shutdown_is_refused_as_shutting_down_before_payment(
    swarm: PaidSwarm,
) -> None:
    (hop,) = swarm.hops
    node = hop.node
    paid = swarm.session(hop, max_length=MAX_LENGTH)
    paid.step(torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.long))
    (session,) = paid.sessions
    owed = swarm.payer.paid[hop.channel]
    # SIGTERM: the node commits and redeems before it closes its streams; with mining paused
    # its final commit waits for a block, so the step surely arrives while it shuts down
    with mining_paused(swarm.deployment.connect()):
        node.terminate()
        assert _wait_for(lambda: "shutting down" in node.stderr.read_text(), timeout=30), (
            node.stderr.read_text()[-4000:]
        )
        error = _refused(
            swarm,
            session.step(
                torch.randn(1, 1, 64),
                torch.ones(1, 5, dtype=torch.long),
                _unpaid_voucher(swarm, hop),
            ),
        )
    assert error.code is ErrorCode.SHUTTING_DOWN and error.fatal and not error.spent, error
    assert error.code in NO_BLAME_CODES  # the client reopens elsewhere without avoiding it
    assert node.stop() == 0
    stderr = node.stderr.read_text()
    assert "Traceback" not in stderr and "CacheClosedError" not in stderr, stderr[-4000:]
    assert swarm.payer.paid[hop.channel] == owed  # the refused voucher was never counted
