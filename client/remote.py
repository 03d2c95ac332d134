"""The low-level client side of a node's RPCs: one span session, one forward, info, reveal.

No routing, retries or payment policy here: callers choose the node, the span, the channel
and sign the vouchers. Over a hivemind `P2P` (e.g. `await dht.replicate_p2p()`):

    async with await RemoteSpanSession.open(p2p, peer_id, session_id=os.urandom(32),
                                            span=(0, 3), max_length=64, batch_size=1,
                                            channel_id=7) as session:
        output, receipt = await session.step(hidden, mask, voucher)

A node's refusal raises `ProtocolError` with its `ErrorCode`; after a non-fatal one
(`error.fatal is False`) the session is as before and the step may be sent again. A broken
transport (node gone, stream closed) raises `RemoteUnavailableError`, and so does a node that
sends nothing for `silence` seconds while it should be at work on a step or a forward: a live
node sends a `working` frame every `KEEPALIVE_INTERVAL` (0.25 s), so a killed one is noticed
within the silence timeout (1.5 s by default), not at the step timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, TypeAlias

import torch
from hivemind.p2p import P2P, PeerID
from hivemind.p2p.p2p_daemon_bindings.control import P2PDaemonError, P2PHandlerError
from hivemind.proto import runtime_pb2

from ledger.types import Voucher
from node.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_SILENCE_TIMEOUT,
    KEEPALIVE_INTERVAL,
    RPC_BACKWARD,
    RPC_FORWARD,
    RPC_INFERENCE,
    RPC_INFO,
    BackwardRequest,
    ErrorCode,
    ErrorReply,
    ForwardRequest,
    Frame,
    InfoResponse,
    OpenSession,
    ProtocolError,
    PushTarget,
    SessionOpened,
    SignedReceipt,
    StepRequest,
    StepResponse,
    Working,
    decode_frame,
    encode_frame,
    read_frame,
)

Request: TypeAlias = runtime_pb2.ExpertRequest
Response: TypeAlias = runtime_pb2.ExpertResponse
_END = object()


class RemoteUnavailableError(ConnectionError):
    """The node could not be reached or the stream broke (not a refusal by the node)."""


class UnreachableError(RemoteUnavailableError):
    """No stream to the node could be opened: nothing was sent to it."""


class RemoteError(ProtocolError):
    """A node's `ErrorReply`: `code`, `message`, whether it ended the stream (`fatal`) and
    whether it kept the step's voucher (`spent`)."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.code, reply.message, spent=reply.spent)
        self.fatal = reply.fatal


def _peer(peer_id: PeerID | str) -> PeerID:
    return peer_id if isinstance(peer_id, PeerID) else PeerID.from_base58(peer_id)


def _raise_if_error(frame: Frame) -> None:
    if frame.type == ErrorReply.TYPE:
        raise RemoteError(ErrorReply.from_wire(frame.metadata))


def _expect(frame: Frame | None, kind: str) -> Frame:
    if frame is None:
        raise RemoteUnavailableError(f"the node closed the stream instead of answering {kind}")
    _raise_if_error(frame)
    if frame.type != kind:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected a {kind!r} frame, got {frame.type!r}")
    return frame


async def _read(responses: AsyncIterator[Response], max_bytes: int) -> Frame | None:
    try:
        return await read_frame(responses, max_bytes)
    except (P2PHandlerError, P2PDaemonError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise RemoteUnavailableError(f"stream to the node broke: {exc}") from exc


class _Silent(TimeoutError):
    """Nothing from the node for the silence timeout."""


class _Watched:
    """A node's reply messages, each due within `silence` seconds of the previous one (or of
    the request) and all before `deadline` (the event loop's clock): `_Silent` or TimeoutError
    otherwise."""

    def __init__(self, responses: AsyncIterator[Response], silence: float, deadline: float):
        self._responses = responses
        self._silence = silence
        self._deadline = deadline

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> Response:
        left = self._deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError
        silent = self._silence < left  # the silence timeout comes first
        try:
            async with asyncio.timeout(self._silence if silent else left):
                return await anext(self._responses)
        except TimeoutError:
            if silent:
                raise _Silent from None
            raise


async def _reply(
    responses: AsyncIterator[Response], max_bytes: int, silence: float, timeout: float
) -> Frame | None:
    """The node's next frame other than `working` keepalives; None at the stream's end."""
    watched = _Watched(responses, silence, asyncio.get_running_loop().time() + timeout)
    while True:
        frame = await _read(watched, max_bytes)
        if frame is None or frame.type != Working.TYPE:
            return frame


class RemoteSpanSession:
    """One inference session on one node over one span (one bidirectional stream)."""

    def __init__(
        self,
        request: OpenSession,
        opened: SessionOpened,
        queue: asyncio.Queue[Any],
        responses: AsyncIterator[Response],
        max_bytes: int,
    ) -> None:
        self.request = request
        self.opened = opened
        self._queue = queue
        self._responses = responses
        self._max_bytes = max_bytes
        self.next_step = 0
        self.closed = False
        self.last_answer = time.monotonic()  # when the node last answered (opened, a step)

    def idle_expired(self, margin: float = 1.0) -> bool:
        """Whether the node has dropped the session by now (or will have within `margin` s):
        it was idle longer than the node's idle timeout."""
        return time.monotonic() - self.last_answer > self.opened.idle_timeout - margin

    @property
    def session_id(self) -> bytes:
        return self.request.session_id

    @property
    def node(self) -> str:
        """The node's address (it signs the receipts)."""
        return self.opened.node

    @classmethod
    async def open(
        cls,
        p2p: P2P,
        peer_id: PeerID | str,
        *,
        session_id: bytes,
        span: tuple[int, int],
        max_length: int,
        batch_size: int,
        channel_id: int,
        dtype: str = "float32",
        timeout: float = 30.0,
        max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        prompts: torch.Tensor | None = None,
    ) -> RemoteSpanSession:
        """Open a session on `peer_id` (with deep `prompts` [span blocks, P, hidden] for its
        first step, protocol 9); raises the node's refusal (e.g. CACHE_FULL)."""
        request = OpenSession(
            session_id, span[0], span[1], max_length, batch_size, channel_id, dtype
        )
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[Request]:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                yield item

        tensors = [] if prompts is None else [prompts]
        for message in encode_frame(Frame(request.to_wire(), tensors), Request):
            queue.put_nowait(message)
        try:
            responses = await asyncio.wait_for(
                p2p.iterate_protobuf_handler(_peer(peer_id), RPC_INFERENCE, outgoing(), Response),
                timeout,
            )
            frame = await asyncio.wait_for(_read(responses, max_bytes), timeout)
        except (P2PDaemonError, ConnectionError, TimeoutError) as exc:
            queue.put_nowait(_END)
            raise RemoteUnavailableError(f"cannot open a session on {peer_id}: {exc}") from exc
        try:
            opened = SessionOpened.from_wire(_expect(frame, SessionOpened.TYPE).metadata)
        except BaseException:
            queue.put_nowait(_END)
            raise
        return cls(request, opened, queue, responses, max_bytes)

    async def step(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        voucher: Voucher,
        *,
        timeout: float = 300.0,
        silence: float = DEFAULT_SILENCE_TIMEOUT,
    ) -> tuple[torch.Tensor, SignedReceipt]:
        """Send step `next_step`: hidden [batch, tokens, hidden] in the session dtype and mask
        [batch, past + tokens] int64; returns the output hidden states and the signed receipt.
        `RemoteUnavailableError` (and the session closed) when the node sends nothing for
        `silence` seconds or does not answer within `timeout`."""
        self.send(hidden, mask, voucher)
        output, receipt, _ = await self.receive(timeout=timeout, silence=silence)
        return output, receipt

    def send(
        self,
        hidden: torch.Tensor | None,
        mask: torch.Tensor,
        voucher: Voucher,
        *,
        push_to: PushTarget | None = None,
        pushed_from: str | None = None,
    ) -> None:
        """Send step `next_step` without waiting for its answer (`receive`). Pipelined: with
        `pushed_from` (and `hidden` None) its input comes by push; with `push_to` the node
        pushes its output there."""
        if self.closed:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "the session is closed")
        request = StepRequest(self.next_step, voucher, push_to, pushed_from)
        tensors = [mask] if hidden is None else [hidden, mask]
        for message in encode_frame(Frame(request.to_wire(), tensors), Request):
            self._queue.put_nowait(message)

    async def receive(
        self, *, timeout: float = 300.0, silence: float = DEFAULT_SILENCE_TIMEOUT
    ) -> tuple[torch.Tensor, SignedReceipt, bool | None]:
        """The answer to the step sent: its output, receipt, and whether its push went
        through (None: none asked)."""
        if self.closed:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "the session is closed")
        try:
            frame = await _reply(self._responses, self._max_bytes, silence, timeout)
        except _Silent:
            await self.close()
            raise RemoteUnavailableError(
                f"the node sent nothing for {silence} s during step {self.next_step} (a node at "
                "work sends a keepalive every "
                f"{KEEPALIVE_INTERVAL} s): it is gone or cut off"
            ) from None
        except TimeoutError:
            await self.close()
            raise RemoteUnavailableError(
                f"no answer to step {self.next_step} in {timeout} s"
            ) from None
        try:
            frame = _expect(frame, StepResponse.TYPE)
        except RemoteError as exc:
            if exc.fatal:
                self.closed = True
                self._queue.put_nowait(_END)
            raise
        except RemoteUnavailableError:
            self.closed = True
            raise
        response = StepResponse.from_wire(frame.metadata)
        if response.step != self.next_step or len(frame.tensors) != 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed step reply from the node")
        self.next_step += 1
        self.last_answer = time.monotonic()
        return frame.tensors[0], response.receipt, response.pushed

    async def close(self) -> None:
        """End the stream; the node frees the session's cache. Idempotent."""
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_END)

    async def __aenter__(self) -> RemoteSpanSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _call_stream(
    p2p: P2P,
    peer_id: PeerID | str,
    name: str,
    frame: Frame,
    max_bytes: int,
    timeout: float,
    silence: float | None = None,
) -> Frame:
    """Send `frame` on a new stream `name` and read the answer (within `timeout`; with
    `silence`, `working` keepalives are skipped and a node silent that long is gone)."""

    async def run() -> Frame | None:
        requests = encode_frame(frame, Request)
        try:
            responses = await p2p.iterate_protobuf_handler(
                _peer(peer_id), name, _aiter(list(requests)), Response
            )
        except (P2PDaemonError, ConnectionError) as exc:
            raise UnreachableError(f"cannot reach {peer_id}: {exc}") from exc
        if silence is None:
            return await _read(responses, max_bytes)
        return await _reply(responses, max_bytes, silence, timeout)

    try:
        result = await asyncio.wait_for(run(), timeout)
    except _Silent:
        raise RemoteUnavailableError(
            f"{peer_id} sent nothing for {silence} s while it should have been at work"
        ) from None
    except TimeoutError:
        raise RemoteUnavailableError(f"{peer_id} did not answer in {timeout} s") from None
    if result is None:
        raise RemoteUnavailableError(f"{peer_id} closed the stream without answering")
    _raise_if_error(result)
    return result


async def _aiter(items: Sequence[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def remote_forward(
    p2p: P2P,
    peer_id: PeerID | str,
    request: ForwardRequest,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    *,
    timeout: float = 300.0,
    silence: float = DEFAULT_SILENCE_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    prompts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SignedReceipt]:
    """A stateless forward of hidden [batch, tokens, hidden] (mask [batch, tokens]) through the
    request's span, with deep `prompts` [span blocks, P, hidden] added before each block if
    given; returns the output and the node's signed receipt (step 0)."""
    tensors = [hidden, mask] if prompts is None else [hidden, mask, prompts]
    frame = await _call_stream(
        p2p,
        peer_id,
        RPC_FORWARD,
        Frame(request.to_wire(), tensors),
        max_bytes,
        timeout,
        silence,
    )
    if frame.type != StepResponse.TYPE or len(frame.tensors) != 1:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed forward reply from the node")
    return frame.tensors[0], StepResponse.from_wire(frame.metadata).receipt


async def remote_backward(
    p2p: P2P,
    peer_id: PeerID | str,
    request: BackwardRequest,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    grad_output: torch.Tensor,
    *,
    timeout: float = 300.0,
    silence: float = DEFAULT_SILENCE_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    prompts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SignedReceipt, torch.Tensor | None]:
    """The backward of the stateless forward `request.session_id` served on hidden [batch,
    tokens, hidden] with mask [batch, tokens] (and deep `prompts`, if it had them), given the
    gradient with respect to its output; returns the gradient with respect to `hidden`, the
    node's signed receipt (step `BACKWARD_STEP`) and the gradient with respect to the prompts
    (None without)."""
    tensors = [hidden, mask, grad_output] + ([] if prompts is None else [prompts])
    frame = await _call_stream(
        p2p,
        peer_id,
        RPC_BACKWARD,
        Frame(request.to_wire(), tensors),
        max_bytes,
        timeout,
        silence,
    )
    answers = 1 if prompts is None else 2
    if frame.type != StepResponse.TYPE or len(frame.tensors) != answers:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed backward reply from the node")
    receipt = StepResponse.from_wire(frame.metadata).receipt
    return frame.tensors[0], receipt, (frame.tensors[1] if prompts is not None else None)


async def remote_info(p2p: P2P, peer_id: PeerID | str, *, timeout: float = 30.0) -> InfoResponse:
    """The node's model, peer id, block count and current `ServerInfo`."""
    (request,) = list(encode_frame(Frame({"type": "info"}), Request))
    try:
        response = await asyncio.wait_for(
            p2p.call_protobuf_handler(_peer(peer_id), RPC_INFO, request, Response), timeout
        )
    except (P2PDaemonError, P2PHandlerError, ConnectionError, TimeoutError) as exc:
        raise RemoteUnavailableError(f"cannot reach {peer_id}: {exc}") from exc
    frame = decode_frame([response])
    return InfoResponse.from_wire(_expect(frame, InfoResponse.TYPE).metadata)
