"""Sending a pipelined step's input to the node that computes it (`rpc_push`, protocol 7).

A node pushes its output to the next hop of the route as that hop's input, with its signed
receipt of it; a client pushes an input itself when the previous hop could not (it failed, or
its push did not go through). The receiving node answers `Pushed` once the waiting step took
the tensor, or refuses it (`ErrorReply`), which raises `ProtocolError` here; an unreachable
peer raises `ConnectionError`, no answer within `timeout` `TimeoutError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import torch
from hivemind.p2p import P2P, PeerID
from hivemind.p2p.p2p_daemon_bindings.control import P2PDaemonError, P2PHandlerError
from hivemind.proto import runtime_pb2

from node.protocol import (
    RPC_PUSH,
    ErrorCode,
    ErrorReply,
    Frame,
    ProtocolError,
    Pushed,
    PushRequest,
    encode_frame,
    read_frame,
)


def push_timeout(answer: float, tensor: torch.Tensor) -> float:
    """Seconds a push of `tensor` may take: `answer` s for the node's answer, plus its bytes at
    1 MB/s (a stalled or frozen node is given up on quickly; a large prefill still goes)."""
    return answer + tensor.numel() * tensor.element_size() / 1e6


async def push_input(
    p2p: P2P,
    peer_id: str,
    request: PushRequest,
    hidden: torch.Tensor,
    *,
    timeout: float,
    max_bytes: int,
) -> None:
    """Push `hidden` as the input of `request`'s session step on `peer_id`."""

    async def run() -> Frame | None:
        messages = encode_frame(Frame(request.to_wire(), [hidden]), runtime_pb2.ExpertRequest)
        responses = await p2p.iterate_protobuf_handler(
            PeerID.from_base58(peer_id), RPC_PUSH, _aiter(messages), runtime_pb2.ExpertResponse
        )
        return await read_frame(responses, max_bytes)

    try:
        frame = await asyncio.wait_for(run(), timeout)
    except (P2PDaemonError, P2PHandlerError, asyncio.IncompleteReadError) as exc:
        raise ConnectionError(f"cannot push to {peer_id}: {exc}") from exc
    if frame is None:
        raise ConnectionError(f"{peer_id} closed the push stream without answering")
    if frame.type == ErrorReply.TYPE:
        reply = ErrorReply.from_wire(frame.metadata)
        raise ProtocolError(reply.code, reply.message)
    if frame.type != Pushed.TYPE:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected a pushed frame, got {frame.type!r}")


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item
