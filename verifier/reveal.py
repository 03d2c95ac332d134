"""Asking a node to reveal what stands behind a committed leaf (the verifier's side of the
node's reveal RPC, `node.protocol.RPC_REVEAL`).

    opening = await request_reveal(p2p, peer_id, account, node=..., batch_id=7, leaf_index=3)

The request is a full `RevealRequest` (inputs, the committed sketch and the batch's leaf
hashes) signed EIP-191 by the verifier's key, which the node checks is an active verifier.
Anything but a well-formed reveal raises `RevealUnavailableError` (the node is unreachable,
refused, timed out or answered garbage): the caller retries until the leaf's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from hivemind.p2p import P2P, PeerID
from hivemind.p2p.p2p_daemon_bindings.control import P2PDaemonError, P2PHandlerError
from hivemind.proto import runtime_pb2

from node.protocol import (
    MAX_REVEAL_BYTES,
    MAX_REVEAL_MESSAGES,
    MAX_REVEAL_METADATA_BYTES,
    RPC_REVEAL,
    ErrorReply,
    Frame,
    ProtocolError,
    RevealRequest,
    RevealResponse,
    encode_frame,
    read_frame,
)
from verifier.audit import Opening
from verifier.errors import InvalidOpeningError, RevealUnavailableError

# A reveal holds a whole session's inputs over a span: it is read up to the protocol's reveal
# caps (node.protocol.MAX_REVEAL_*), the same numbers a node checks every session it opens
# against (`reveal_limits`), so whatever an honest node served it can reveal. The frame is
# assembled tensor by tensor as it arrives: memory stays within the caps.
__all__ = [
    "MAX_REVEAL_BYTES",
    "MAX_REVEAL_MESSAGES",
    "MAX_REVEAL_METADATA_BYTES",
    "request_reveal",
    "reveal_request",
]


def reveal_request(
    account: LocalAccount,
    *,
    node: str,
    batch_id: int,
    leaf_index: int,
    issued_at: int | None = None,
) -> RevealRequest:
    """A signed full reveal request for leaf `leaf_index` of batch `batch_id` of `node`."""
    at = int(time.time()) if issued_at is None else issued_at
    unsigned = RevealRequest(node, batch_id, leaf_index, at, account.address, b"\0" * 65, True)
    signature = account.sign_message(encode_defunct(text=unsigned.message())).signature
    return RevealRequest(node, batch_id, leaf_index, at, account.address, bytes(signature), True)


async def _single(items: Sequence[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def request_reveal(
    p2p: P2P,
    peer_id: PeerID,
    account: LocalAccount,
    *,
    node: str,
    batch_id: int,
    leaf_index: int,
    timeout: float = 60.0,
    max_bytes: int = MAX_REVEAL_BYTES,
) -> Opening:
    """Ask `peer_id` (the node `node`) to reveal leaf `leaf_index` of batch `batch_id`."""
    request = reveal_request(account, node=node, batch_id=batch_id, leaf_index=leaf_index)
    return await send_reveal(p2p, peer_id, request, timeout=timeout, max_bytes=max_bytes)


async def send_reveal(
    p2p: P2P,
    peer_id: PeerID,
    request: RevealRequest,
    *,
    timeout: float = 60.0,
    max_bytes: int = MAX_REVEAL_BYTES,
) -> Opening:
    """Send a signed reveal `request` to `peer_id`; what it revealed, or
    `RevealUnavailableError` (with the node's error `code` when it refused)."""
    node = request.node
    messages = list(encode_frame(Frame(request.to_wire()), runtime_pb2.ExpertRequest))

    async def call() -> Frame | None:
        responses = await p2p.iterate_protobuf_handler(
            peer_id, RPC_REVEAL, _single(messages), runtime_pb2.ExpertResponse
        )
        return await read_frame(
            responses,
            max_bytes,
            max_metadata_bytes=MAX_REVEAL_METADATA_BYTES,
            max_messages=MAX_REVEAL_MESSAGES,
        )

    try:
        frame = await asyncio.wait_for(call(), timeout)
    except TimeoutError:
        raise RevealUnavailableError(f"no reveal from {node} within {timeout:.0f} s") from None
    except (P2PDaemonError, P2PHandlerError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise RevealUnavailableError(f"cannot reach {node}: {exc}") from exc
    except ProtocolError as exc:
        raise RevealUnavailableError(f"malformed reveal from {node}: {exc}") from None
    if frame is None:
        raise RevealUnavailableError(f"{node} closed the stream without revealing")
    if frame.type == ErrorReply.TYPE:
        reply = ErrorReply.from_wire(frame.metadata)
        raise RevealUnavailableError(
            f"{node} refused: {reply.code.value}: {reply.message}", code=reply.code
        )
    if frame.type != RevealResponse.TYPE:
        raise RevealUnavailableError(f"{node} answered a {frame.type!r} frame to a reveal")
    try:
        response = RevealResponse.from_wire(frame.metadata)
        return Opening.from_frame(response, frame.tensors)
    except (ProtocolError, InvalidOpeningError) as exc:
        raise RevealUnavailableError(f"malformed reveal from {node}: {exc}") from None
