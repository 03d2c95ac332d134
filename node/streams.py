"""Streaming RPC handlers that answer an unreadable message with an `ErrorReply`.

hivemind reads a streaming RPC's messages itself (`P2P._add_protobuf_stream_handler`): when
bytes on the stream are not a message (garbage, a wrong marker, a protobuf that does not
parse), it logs a warning, cancels the handler and closes the stream, so the caller never
learns why. `add_readable_stream_handlers` registers the node's stream-input RPCs with the same
loop, except that such bytes reach the handler as a `ProtocolError(BAD_REQUEST)` raised by its
request iterator: the handler answers it like any other refusal, then the stream closes. A
message whose length prefix is over `MAX_REQUEST_MESSAGE_BYTES` is refused the same way
(TOO_LARGE) before any of its bytes are read: hivemind would buffer the whole message first.
The caller's end of stream (hivemind's `END_OF_STREAM`) ends the handler's requests. After
its last answer a stream waits for that end of stream, and `linger`s (reads and drops what the
caller still sends) when something else comes first, 2 s at most, before it closes: closing
while the caller still writes resets the stream, and a reset can discard the answer before the
caller reads it.

Memory: what all streams together hold is bounded twice. Request messages read ahead of their
handlers share `MAX_BUFFERED_BYTES` (a stream whose next message does not fit waits: the
caller is slowed down, nothing is refused), and the tensors of the frames handlers are reading
or working on share the node's `IncomingBudget` (`--max-incoming-mb`): a frame whose tensors
do not fit is refused with `busy` before they are kept.

`Arrivals` and `keepalives` let a handler send `Working` frames while it works on a request:
from the request's first message to the handler's reply, every `KEEPALIVE_INTERVAL`, so a
client hears from a live node at least that often and takes silence for a dead one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import closing, suppress
from typing import Any, TypeAlias

from hivemind.p2p import P2P, P2PContext
from hivemind.p2p.p2p_daemon_bindings.datastructures import StreamInfo
from hivemind.proto import runtime_pb2

from node.protocol import (
    KEEPALIVE_INTERVAL,
    MAX_REQUEST_MESSAGE_BYTES,
    ErrorCode,
    Frame,
    ProtocolError,
    Working,
    encode_frame,
)

logger = logging.getLogger(__name__)

StreamRpc = Callable[[AsyncIterator[Any], P2PContext], AsyncIterator[Any]]

# Messages read ahead of the handler (hivemind's default)
_PREFETCH = 5
# Request message bytes all streams together may hold read ahead of their handlers
MAX_BUFFERED_BYTES = 4 * MAX_REQUEST_MESSAGE_BYTES * _PREFETCH
# How long, and how many bytes, a stream is read and dropped after its last answer (`linger`)
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024
# The most bytes the caller's end-of-stream message may carry (hivemind sends none)
_END_OF_STREAM_BYTES = 64 * 1024

Response: TypeAlias = runtime_pb2.ExpertResponse


class IncomingBudget:
    """The tensor bytes that the frames a node is receiving or working on may hold, all
    connections together. Event-loop only (no locking). A frame takes its tensors' bytes as
    their sizes arrive, through a `Lease`, and gives them back when it is handled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def lease(self) -> Lease:
        return Lease(self)


class Lease:
    """One frame's share of an `IncomingBudget`: `take` (a `read_frame` reserve) refuses with
    BUSY what does not fit; `release` gives everything back (idempotent)."""

    def __init__(self, budget: IncomingBudget) -> None:
        self._budget = budget
        self.held = 0

    def take(self, nbytes: int) -> None:
        budget = self._budget
        if budget.used + nbytes > budget.limit:
            raise ProtocolError(
                ErrorCode.BUSY,
                f"the node holds {budget.used >> 20} MiB of incoming tensors of its "
                f"{budget.limit >> 20} MiB (all connections); a tensor of {nbytes >> 20} MiB "
                "does not fit now: nothing was charged, retry shortly or use another node",
            )
        budget.used += nbytes
        self.held += nbytes

    def release(self) -> None:
        self._budget.used -= self.held
        self.held = 0


class _Buffered:
    """Request message bytes read ahead of their handlers, all streams together: a stream
    waits before reading a message that would not fit (one message always fits)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def take(self, nbytes: int) -> None:
        while self.used and self.used + nbytes > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += nbytes

    def give(self, nbytes: int) -> None:
        self.used -= nbytes
        self._freed.set()


_BUFFERED = _Buffered(MAX_BUFFERED_BYTES)
# one message, sent again and again (each send serializes it)
_WORKING = tuple(encode_frame(Frame(Working().to_wire()), Response))


class Arrivals:
    """A handler's request messages, with an event set when one arrives (`started`): a
    handler clears it before it waits for a request, and `keepalives` starts once it is set."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests
        self.started = asyncio.Event()

    def __aiter__(self) -> Arrivals:
        return self

    async def __anext__(self) -> Any:
        message = await anext(self._requests)
        self.started.set()
        return message


async def keepalives(
    work: asyncio.Future[Any], started: asyncio.Event, interval: float = KEEPALIVE_INTERVAL
) -> AsyncIterator[Any]:
    """`Working` messages every `interval` seconds while `work` (reading a request and
    answering it) runs and a message of the request has arrived (`started`); ends when `work`
    is done. The handler yields them, then `work.result()`: nothing splits a frame."""
    while not work.done():
        if not started.is_set():  # waiting for the request: an idle stream stays silent
            arrival = asyncio.ensure_future(started.wait())
            try:
                await asyncio.wait({work, arrival}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
            continue
        await asyncio.wait({work}, timeout=interval)
        if not work.done():
            for message in _WORKING:
                yield message


async def finish(work: asyncio.Future[Any]) -> None:
    """Cancel `work` if it still runs (the caller left or the handler was cancelled) and wait
    for it to unwind, so what it holds (a session's cache, a step in the ledger) is released in
    order."""
    if not work.done():
        work.cancel()
    await asyncio.wait({work})
    if not work.cancelled():
        work.exception()  # retrieved: an error of abandoned work is not logged as unhandled


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
    reader: asyncio.StreamReader,
    max_bytes: int = MAX_REQUEST_MESSAGE_BYTES,
    started: asyncio.Event | None = None,
) -> tuple[runtime_pb2.ExpertRequest, int] | None:
    """The next request message of a stream (hivemind's framing: a marker byte, an 8-byte
    big-endian length, the protobuf) and its length, taken from the node's shared read-ahead
    budget (the caller gives it back once the message is consumed); None for the caller's end
    of stream (hivemind's `END_OF_STREAM`: an error marker and an empty `RPCError`). A
    message longer than `max_bytes` is refused at its length prefix (TOO_LARGE), before any of
    it is buffered; a wrong marker is BAD_REQUEST. `started` is set once a request message's
    first byte is in."""
    marker = await reader.readexactly(1)
    if marker == P2P.ERROR_MARKER:
        length = int.from_bytes(await reader.readexactly(P2P.HEADER_LEN), P2P.BYTEORDER)
        if length > _END_OF_STREAM_BYTES:
            raise _unreadable()
        await reader.readexactly(length)  # the caller's error, if any: it ends its stream
        return None
    if started is not None:
        started.set()
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
    await _BUFFERED.take(length)  # waits while other streams hold the read-ahead budget
    try:
        request = runtime_pb2.ExpertRequest()
        request.ParseFromString(await reader.readexactly(length))
    except BaseException:
        _BUFFERED.give(length)
        raise
    return request, length


async def linger(
    reader: asyncio.StreamReader, seconds: float = LINGER_SECONDS, max_bytes: int = LINGER_BYTES
) -> None:
    """Read and drop what the caller still sends after the last answer, until it closes its
    side, for at most `seconds` and `max_bytes`. Closing at once would reset a stream the caller
    is still writing to (the rest of a refused frame), and a reset can discard the refusal
    before the caller reads it. Nothing read here is kept."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    dropped = 0
    with suppress(Exception):  # a broken stream is as good as a closed one
        while dropped < max_bytes:
            left = deadline - loop.time()
            if left <= 0:
                return
            data = await asyncio.wait_for(reader.read(64 * 1024), left)
            if not data:
                return
            dropped += len(data)


def _ended(receiving: asyncio.Task[Any]) -> bool:
    """Whether a finished read got the caller's end of stream."""
    return (
        not receiving.cancelled() and receiving.exception() is None and receiving.result() is None
    )


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
                request, length = item
                _BUFFERED.give(length)  # the handler has it now (its frame budget counts it)
                yield request

        def forget_read_ahead() -> None:
            """Give back the read-ahead of messages no handler will take."""
            done = receiving
            finished = done is not None and done.done() and not done.cancelled()
            if done is not None and finished and done.exception() is None:
                item = done.result()
                if item is not None:
                    _BUFFERED.give(item[1])
            while not queue.empty():
                item = queue.get_nowait()
                if isinstance(item, tuple):
                    _BUFFERED.give(item[1])

        async def process() -> None:
            async for response in rpc(requests(), context):
                try:
                    await P2P.send_protobuf(response, writer)
                except Exception:  # the caller closed the stream or it broke
                    logger.debug("could not send a response on %s", name, exc_info=True)
                    return

        receiving: asyncio.Task[Any] | None = None
        with closing(writer):
            processing = asyncio.create_task(process())
            try:
                while True:
                    incoming = asyncio.Event()
                    receiving = asyncio.create_task(
                        receive_request(reader, MAX_REQUEST_MESSAGE_BYTES, incoming)
                    )
                    await asyncio.wait({processing, receiving}, return_when=asyncio.FIRST_COMPLETED)
                    if processing.done():
                        # the answer is out. Closing now would reset a stream the caller still
                        # writes to (its end of stream, or the rest of a refused frame), and a
                        # reset can discard the answer before the caller reads it: wait for
                        # the caller's end of stream (`LINGER_SECONDS` at most), and drop what
                        # it still sends before it
                        with suppress(Exception):
                            await asyncio.wait_for(asyncio.shield(receiving), LINGER_SECONDS)
                        if not receiving.done():
                            receiving.cancel()
                            await asyncio.wait({receiving})
                        elif not _ended(receiving):  # a message or junk: the caller still sends
                            await linger(reader)
                        return
                    try:
                        received = await receiving
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return  # the caller left
                    except ProtocolError as exc:  # refused at its length prefix
                        logger.info("refused a message on %s from %s: %s", name, info.peer_id, exc)
                        await queue.put(exc)
                        await processing
                        await linger(reader)
                        return
                    except Exception as exc:  # DecodeError, ...: garbage
                        logger.info("unreadable message on %s from %s: %r", name, info.peer_id, exc)
                        await queue.put(_unreadable())
                        await processing  # the handler answers the refusal, then ends
                        await linger(reader)
                        return
                    if received is None:  # the caller's end of stream: it sends no more
                        await queue.put(None)
                        await processing
                        return
                    receiving = None  # its message is the queue's now
                    await queue.put(received)
            except asyncio.CancelledError:
                # the node is shutting down (hivemind cancels its stream handlers): the stream
                # closes; ending the handler normally keeps asyncio from logging the
                # cancellation as an error of the stream's connection
                pass
            except Exception:
                logger.warning("stream %s failed", name, exc_info=True)
            finally:
                processing.cancel()
                forget_read_ahead()

    return handle
