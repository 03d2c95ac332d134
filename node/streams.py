"""Streaming RPC handlers that answer an unreadable message with an `ErrorReply`.

hivemind reads a streaming RPC's messages itself (`P2P._add_protobuf_stream_handler`): when
bytes on the stream are not a message (garbage, a wrong marker, a protobuf that does not
parse), it logs a warning, cancels the handler and closes the stream, so the caller never
learns why. `add_readable_stream_handlers` registers the node's stream-input RPCs with the same
loop, except that such bytes reach the handler as a `ProtocolError(BAD_REQUEST)` raised by its
request iterator: the handler answers it like any other refusal, then the stream closes. A
message whose length prefix is over `MAX_REQUEST_MESSAGE_BYTES` is refused the same way
(TOO_LARGE) before any of its bytes are read: hivemind would buffer the whole message first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from typing import Any

from hivemind.p2p import P2P, P2PContext
from hivemind.p2p.p2p_daemon_bindings.datastructures import StreamInfo
from hivemind.proto import runtime_pb2

from node.protocol import MAX_REQUEST_MESSAGE_BYTES, ErrorCode, ProtocolError

logger = logging.getLogger(__name__)

StreamRpc = Callable[[AsyncIterator[Any], P2PContext], AsyncIterator[Any]]

# Messages read ahead of the handler (hivemind's default)
_PREFETCH = 5


async def add_readable_stream_handlers(p2p: P2P, handlers: dict[str, StreamRpc]) -> None:
    """Replace the stream handler hivemind registered for each `name` (`add_p2p_handlers`,
    before the node is announced) with one running `rpc` whose unreadable input becomes a
    BAD_REQUEST refusal sent to the caller."""
    for name, rpc in handlers.items():
        await p2p.remove_binary_stream_handler(name)  # the daemon refuses a second handler
        await p2p.add_binary_stream_handler(name, _stream_handler(p2p, name, rpc))


def _unreadable() -> ProtocolError:
    return ProtocolError(
        ErrorCode.BAD_REQUEST, "unreadable message: not a length-prefixed ExpertRequest"
    )


async def receive_request(
    reader: asyncio.StreamReader, max_bytes: int = MAX_REQUEST_MESSAGE_BYTES
) -> runtime_pb2.ExpertRequest:
    """The next request message of a stream (hivemind's framing: a marker byte, an 8-byte
    big-endian length, the protobuf). A message longer than `max_bytes` is refused at its length
    prefix (TOO_LARGE), before any of it is buffered; a wrong marker is BAD_REQUEST."""
    marker = await reader.readexactly(1)
    if marker != P2P.MESSAGE_MARKER:
        raise _unreadable()
    header = await reader.readexactly(P2P.HEADER_LEN)
    length = int.from_bytes(header, P2P.BYTEORDER)
    if length > max_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"a message of {length} bytes; a request message holds at most {max_bytes} "
            "(tensors travel in chunks, docs/protocol.md §4)",
        )
    request = runtime_pb2.ExpertRequest()
    request.ParseFromString(await reader.readexactly(length))
    return request


def _stream_handler(p2p: P2P, name: str, rpc: StreamRpc) -> Any:
    async def handle(
        info: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        context = P2PContext(handle_name=name, local_id=p2p.peer_id, remote_id=info.peer_id)
        # a request, None at the end of the caller's stream, or the refusal of unreadable bytes
        queue: asyncio.Queue[Any] = asyncio.Queue(_PREFETCH)

        async def requests() -> AsyncIterator[Any]:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, ProtocolError):
                    raise item
                yield item

        async def process() -> None:
            async for response in rpc(requests(), context):
                try:
                    await P2P.send_protobuf(response, writer)
                except Exception:  # the caller closed the stream or it broke
                    logger.debug("could not send a response on %s", name, exc_info=True)
                    return

        with closing(writer):
            processing = asyncio.create_task(process())
            try:
                while True:
                    receiving = asyncio.create_task(receive_request(reader))
                    await asyncio.wait({processing, receiving}, return_when=asyncio.FIRST_COMPLETED)
                    if processing.done():
                        receiving.cancel()
                        return
                    try:
                        request = await receiving
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return  # the caller left
                    except ProtocolError as exc:  # refused at its length prefix
                        logger.info("refused a message on %s from %s: %s", name, info.peer_id, exc)
                        await queue.put(exc)
                        await processing
                        return
                    except Exception as exc:  # DecodeError, ...: garbage
                        logger.info("unreadable message on %s from %s: %r", name, info.peer_id, exc)
                        await queue.put(_unreadable())
                        await processing  # the handler answers the refusal, then ends
                        return
                    await queue.put(request)
            except Exception:
                logger.warning("stream %s failed", name, exc_info=True)
            finally:
                processing.cancel()

    return handle
