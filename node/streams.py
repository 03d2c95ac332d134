"""Streaming RPC handlers that answer an unreadable message with an `ErrorReply`.

hivemind reads a streaming RPC's messages itself (`P2P._add_protobuf_stream_handler`): when
bytes on the stream are not a message (garbage, a wrong marker, a protobuf that does not
parse), it logs a warning, cancels the handler and closes the stream, so the caller never
learns why. `add_readable_stream_handlers` registers the node's stream-input RPCs with the same
loop, except that such bytes reach the handler as a `ProtocolError(BAD_REQUEST)` raised by its
request iterator: the handler answers it like any other refusal, then the stream closes.
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

from node.protocol import ErrorCode, ProtocolError

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
                    receiving = asyncio.create_task(
                        P2P.receive_protobuf(runtime_pb2.ExpertRequest, reader)
                    )
                    await asyncio.wait({processing, receiving}, return_when=asyncio.FIRST_COMPLETED)
                    if processing.done():
                        receiving.cancel()
                        return
                    try:
                        request, _ = await receiving
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return  # the caller left
                    except Exception as exc:  # TypeError (marker), DecodeError, ...: garbage
                        logger.info("unreadable message on %s from %s: %r", name, info.peer_id, exc)
                        await queue.put(
                            ProtocolError(
                                ErrorCode.BAD_REQUEST,
                                "unreadable message: not a length-prefixed ExpertRequest",
                            )
                        )
                        await processing  # the handler answers the refusal, then ends
                        return
                    await queue.put(request)
            except Exception:
                logger.warning("stream %s failed", name, exc_info=True)
            finally:
                processing.cancel()

    return handle
