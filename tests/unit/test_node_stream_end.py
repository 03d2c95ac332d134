"""A node's stream and the caller's end of stream (node.streams).

hivemind's caller writes its requests, then an end-of-stream message, and reads the answer.
A node that closed its side as soon as it had answered could close while that end of stream
was still on its way: the caller's write then met a closed stream, the stream was reset, and
the reset could discard the answer before the caller read it (seen as "stream to the node
broke: Broken pipe" on a refused stateless forward). And the end of stream itself reached the
handler as unreadable bytes, so a session that ended cleanly was answered with a BAD_REQUEST.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2

from node.streams import LINGER_SECONDS, _stream_handler


def _message(marker: bytes, payload: bytes) -> bytes:
    return marker + len(payload).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + payload


REQUEST = _message(P2P.MESSAGE_MARKER, runtime_pb2.ExpertRequest(uid="x").SerializeToString())
END_OF_STREAM = _message(P2P.ERROR_MARKER, P2P.END_OF_STREAM.SerializeToString())


class _Writer:
    """The node's side of the stream: what it wrote, and when it closed."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed.set()

    def is_closing(self) -> bool:
        return self.closed.is_set()


def _handler(rpc: Any) -> Any:
    p2p = SimpleNamespace(peer_id="node")
    return _stream_handler(p2p, "StakeswarmNode.rpc_forward", rpc)  # type: ignore[arg-type]


def test_an_answered_stream_stays_open_until_the_callers_end_of_stream() -> None:
    async def answer_first(requests: Any, context: Any) -> Any:
        await anext(requests)  # one request, then the answer; the rest is not read
        yield runtime_pb2.ExpertResponse()

    async def run() -> tuple[bool, bool]:
        reader, writer = asyncio.StreamReader(), _Writer()
        reader.feed_data(REQUEST)
        handling = asyncio.ensure_future(
            _handler(answer_first)(SimpleNamespace(peer_id="caller"), reader, writer)
        )
        while not writer.data:  # the answer is out
            await asyncio.sleep(0.01)
        await asyncio.sleep(LINGER_SECONDS / 4)
        open_before_end = not writer.closed.is_set()
        reader.feed_data(END_OF_STREAM)
        await asyncio.wait_for(handling, LINGER_SECONDS)
        return open_before_end, writer.closed.is_set()

    open_before_end, closed_after = asyncio.run(run())
    assert open_before_end, "the node closed the stream before the caller's end of stream"
    assert closed_after


def test_the_callers_end_of_stream_ends_the_requests_cleanly() -> None:
    seen: list[str] = []

    async def read_all(requests: Any, context: Any) -> Any:
        async for request in requests:  # a refusal of unreadable bytes would raise here
            seen.append(request.uid)
        yield runtime_pb2.ExpertResponse()

    async def run() -> bytes:
        reader, writer = asyncio.StreamReader(), _Writer()
        reader.feed_data(REQUEST + REQUEST + END_OF_STREAM)
        await asyncio.wait_for(
            _handler(read_all)(SimpleNamespace(peer_id="caller"), reader, writer), 5
        )
        return writer.data

    written = asyncio.run(run())
    assert seen == ["x", "x"]
    assert written.startswith(P2P.MESSAGE_MARKER)  # the handler's own answer, not a refusal
