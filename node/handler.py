"""The node's RPCs over hivemind P2P: inference sessions, stateless forwards, info, reveals.

`StakeswarmNode` is a hivemind `ServicerBase`; its handlers are registered on the libp2p
daemon under the names in `node.protocol` (`RPC_*`). Every request is untrusted: each
failure becomes an `ErrorReply` to that caller only, and the server goes on serving the
others. Torch work runs in one compute thread and ledger writes in one ledger thread, so the
event loop (P2P streams, the HTTP API) stays responsive while a step computes.

Inference (`rpc_inference`, one bidirectional stream = one session):
    -> OpenSession            <- SessionOpened
    -> StepRequest + tensors  <- StepResponse + output      (repeated, steps 0, 1, 2, ...)
A step's refusal that leaves the session as it was (bad tensor, out of order, payment) is a
non-fatal `ErrorReply`: the client may send the step again. Anything else ends the stream.
From a step's first message to its reply the node sends a `Working` frame every
`KEEPALIVE_INTERVAL` (node.streams), as it does for a stateless forward.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from contextlib import suppress
from dataclasses import dataclass

# hivemind's ServicerBase recognises streaming RPCs by the `typing` alias, not collections.abc's
from typing import Any, AsyncIterator, TypeAlias  # noqa: UP035

import torch
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import to_checksum_address
from hivemind.p2p import P2PContext, ServicerBase
from hivemind.proto import runtime_pb2

from ledger.chain import ChainError
from ledger.contracts import VerifierRegistry
from ledger.db import Ledger
from ledger.eip712 import recover_receipt_signer
from node.api import NodeMetrics
from node.balance import Accepted, IncomingPayments
from node.blocks import Span
from node.commits import InputStore, LeafWriter, Receipts, build_reveal
from node.compute import submit_forward
from node.config import NodeConfig
from node.errors import BadTensorError
from node.protocol import (
    BACKWARD_STEP,
    SERVICE_NAME,
    BackwardRequest,
    ErrorCode,
    ErrorReply,
    ForwardRequest,
    Frame,
    InfoResponse,
    OpenSession,
    ProtocolError,
    Pushed,
    PushRequest,
    PushTarget,
    RevealRequest,
    SessionOpened,
    SignedReceipt,
    StepRequest,
    StepResponse,
    decode_frame,
    encode_frame,
    read_frame,
)
from node.push import push_input, push_timeout
from node.sessions import (
    AwaitedInput,
    Session,
    SessionManager,
    SpanViews,
    check_hidden,
    check_mask,
    check_step,
    unpack_step,
)
from node.sketch import FP16_MAX, mask_hash
from node.states import commits_states, stack_states
from node.streams import Arrivals, IncomingBudget, Lease, finish, keepalives
from node.tensors import check_prompts, tensor_hash
from node.training import ForwardLog

logger = logging.getLogger(__name__)

# What a one-frame call computes (`_paid_compute`): its answer, the signed receipt, the encoded
# sketch, a 16-bit span's block states, and the prompts kept to reveal (a training forward's
# deep prompts, its backward's gradient of them)
_Computed: TypeAlias = tuple[torch.Tensor, Any, bytes, torch.Tensor | None, torch.Tensor | None]

Request: TypeAlias = runtime_pb2.ExpertRequest
Response: TypeAlias = runtime_pb2.ExpertResponse


def _frame(metadata: dict[str, Any], tensors: list[torch.Tensor] | None = None) -> Iterator[Any]:
    return encode_frame(Frame(metadata, tensors or []), Response)


def _next_frame_limit(session: Session, idle: float, open_: float) -> tuple[float, str]:
    """How long an open session's stream may wait for its next frame, and the expiry message.

    A session that has served a paid step waits `idle` seconds per frame. One that has not
    reserves KV cache without paying for it, so it also has a deadline: its first paid step
    must come within `open_` seconds of opening, however many refused steps it sends meanwhile
    (docs/protocol.md §6, "Idle expiry")."""
    if session.next_step > 0:
        return idle, f"nothing received for {idle:.0f} s: the stream expired"
    # last_active is the opening time until a step is served
    left = max(0.0, session.last_active + open_ - time.monotonic())
    if left < idle:
        return left, f"no paid step within {open_:.0f} s of opening: the session expired"
    return idle, f"nothing received for {idle:.0f} s: the stream expired"


def check_forward_tokens(tokens: int, cap: int) -> None:
    """Refuse a stateless forward of more than `cap` tokens (batch x length), LENGTH_EXCEEDED."""
    if tokens > cap:
        raise ProtocolError(
            ErrorCode.LENGTH_EXCEEDED,
            f"a forward of {tokens} tokens exceeds this node's cap of {cap} tokens per forward "
            "(max_forward_tokens); split the input or use an inference session",
        )


def error_messages(error: ProtocolError, *, fatal: bool = True) -> Iterator[Any]:
    """The protobuf messages of an `ErrorReply` for `error`."""
    return _frame(ErrorReply(error.code, error.message, fatal, error.spent).to_wire())


async def spent_failure(exc: BaseException, accepted: Accepted) -> ProtocolError:
    """The refusal of a step that failed after its voucher was `accepted`: INTERNAL, fatal (the
    session's state is no longer known to both sides) and `spent` (the node keeps the voucher;
    docs/protocol.md, "When a voucher is spent"), sent once the voucher is in the ledger."""
    with suppress(Exception):  # a failed write is logged by the ledger thread
        await accepted.persisted
    cause = exc.message if isinstance(exc, ProtocolError) else f"{type(exc).__name__}: {exc}"
    return ProtocolError(ErrorCode.INTERNAL, f"the step failed after payment: {cause}", spent=True)


@dataclass(frozen=True)
class Limits:
    """What one caller may ask of the node (each refused with an error code beyond it)."""

    idle_timeout: float  # seconds a session's stream may wait for its next frame
    open_timeout: float  # seconds an open session may wait for its first paid step
    max_frame_bytes: int  # tensor bytes in one frame
    max_forward_tokens: int  # tokens (batch x length) in one stateless forward
    max_incoming_bytes: int  # tensor bytes of the frames received or worked on, all together
    reveal_max_age: float  # seconds a reveal request stays valid
    push_timeout: float = 2.0  # seconds a push may wait for its step, or for its answer

    @classmethod
    def of(cls, config: NodeConfig) -> Limits:
        return cls(
            idle_timeout=config.session_idle_timeout,
            open_timeout=config.session_open_timeout,
            max_frame_bytes=config.max_frame_bytes,
            max_forward_tokens=config.max_forward_tokens,
            max_incoming_bytes=config.max_incoming_bytes,
            reveal_max_age=config.reveal_max_age,
        )


class StakeswarmNode(ServicerBase):
    """The RPC servicer of one node (the class name is `node.protocol.SERVICE_NAME`; a cheat
    mode's handler, `node.faults`, subclasses it)."""

    def __init__(
        self,
        *,
        address: str,
        spans: SpanViews,
        price_per_block: int,
        sessions: SessionManager,
        payments: IncomingPayments,
        receipts: Receipts,
        writer: LeafWriter,
        store: InputStore,
        ledger: Ledger,
        verifiers: VerifierRegistry,
        compute: Executor,
        metrics: NodeMetrics,
        info: Callable[[], InfoResponse],
        limits: Limits,
        on_leaf: Callable[[], None] = lambda: None,
        backward_price_per_block: int = 0,
        forwards: ForwardLog | None = None,
    ) -> None:
        self.address = to_checksum_address(address)
        self.spans = spans
        self.price_per_block = price_per_block
        # Wei per token per block of a backward; 0: this node serves none (node.training)
        self.backward_price_per_block = backward_price_per_block
        self.forwards = ForwardLog() if forwards is None else forwards  # awaiting backwards
        self.sessions = sessions
        self.payments = payments
        self.receipts = receipts
        self.writer = writer
        self.store = store
        self.ledger = ledger
        self.verifiers = verifiers
        self.compute = compute
        self.metrics = metrics
        self.info = info
        self.limits = limits
        self.idle_timeout = limits.idle_timeout
        self.max_frame_bytes = limits.max_frame_bytes
        # tensor bytes of the frames being received or worked on, all connections together
        self.incoming = IncomingBudget(limits.max_incoming_bytes)
        self.on_leaf = on_leaf
        self.accepting = True  # False while shutting down or moving the span
        # the daemon the RPCs are served on (`serve_rpcs`): pipelined steps push on it
        self.p2p: Any = None

    @classmethod
    def _get_handle_name(cls, namespace: str | None, method_name: str) -> str:
        # the RPCs' names (node.protocol.RPC_*) are the service's, whatever the subclass
        name = f"{SERVICE_NAME}.{method_name}"
        return name if namespace is None else f"{namespace}::{name}"

    # --- inference -------------------------------------------------------------------------

    async def rpc_inference(
        self, requests: AsyncIterator[Request], context: P2PContext
    ) -> AsyncIterator[Response]:
        session: Session | None = None
        try:
            frame = await self._read(requests, timeout=self.idle_timeout)
            if frame is None:
                return
            if frame.type != OpenSession.TYPE:
                code = ErrorCode.UNKNOWN_SESSION if frame.type == StepRequest.TYPE else None
                raise ProtocolError(
                    code or ErrorCode.BAD_REQUEST,
                    f"an inference stream starts with an open frame, got {frame.type!r}",
                )
            if len(frame.tensors) > 1:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    "an open frame carries at most one tensor (deep prompts), got "
                    f"{len(frame.tensors)}",
                )
            prompts = frame.tensors[0] if frame.tensors else None
            session = await self._open(OpenSession.from_wire(frame.metadata), prompts)
            session.client_peer = context.remote_id.to_base58()
            opened = SessionOpened(session.session_id, self.address, self.idle_timeout)
            for message in _frame(opened.to_wire()):
                yield message
            arrivals = Arrivals(requests)
            while True:
                timeout, expired = _next_frame_limit(
                    session, self.idle_timeout, self.limits.open_timeout
                )
                arrivals.started.clear()
                work = asyncio.ensure_future(
                    self._read_and_step(session, arrivals, timeout, expired)
                )
                try:
                    # `working` frames from the step's first message to its reply
                    async for message in keepalives(work, arrivals.started):
                        yield message
                finally:
                    await finish(work)
                try:
                    messages = work.result()
                except ProtocolError as exc:
                    if exc.code not in _RECOVERABLE or exc.spent:
                        raise
                    self.metrics.error(exc.code)
                    for message in error_messages(exc, fatal=False):
                        yield message
                    continue
                if messages is None:
                    return  # the client closed the session
                for message in messages:
                    yield message
        except ProtocolError as exc:
            self.metrics.error(exc.code)
            for message in error_messages(exc):
                yield message
        except Exception:
            logger.exception("inference session failed")
            self.metrics.error(ErrorCode.INTERNAL)
            for message in error_messages(ProtocolError(ErrorCode.INTERNAL, "the node failed")):
                yield message
        finally:
            if session is not None:
                computing = session.computing
                if computing is not None and not computing.done():
                    # the client left mid-step: the compute thread still uses the cache
                    await asyncio.wait([asyncio.wrap_future(computing)])
                self.sessions.close(session)
                self.metrics.sessions_open.set(len(self.sessions))
                self.metrics.cache_tokens.set(self.sessions.caches.tokens_in_use)

    async def _read_and_step(
        self, session: Session, requests: AsyncIterator[Request], timeout: float, expired: str
    ) -> list[Any] | None:
        """The reply to the session's next step frame; None when the client closed the
        stream."""
        lease = self.incoming.lease()  # the frame's tensors count until the step is done
        try:
            frame = await self._read(requests, timeout=timeout, expired=expired, lease=lease)
            if frame is None:
                return None
            return await self._step(session, frame)
        finally:
            lease.release()

    async def _read(
        self,
        requests: AsyncIterator[Request],
        timeout: float | None = None,
        expired: str | None = None,
        lease: Lease | None = None,
    ) -> Any:
        reserve = lease.take if lease is not None else None
        try:
            frame = await asyncio.wait_for(
                read_frame(requests, self.max_frame_bytes, reserve=reserve), timeout
            )
        except TimeoutError:
            raise ProtocolError(
                ErrorCode.SESSION_EXPIRED,
                expired or f"nothing received for {self.idle_timeout:.0f} s: the stream expired",
            ) from None
        if frame is not None:
            # a frame that arrives while the node shuts down is refused before it is paid for or
            # computed (the session's cache may already be gone)
            self._refuse_if_closed()
        return frame

    def _refuse_if_closed(self) -> None:
        """SHUTTING_DOWN (before any payment) while the node takes no new work."""
        if not self.accepting:
            raise ProtocolError(
                ErrorCode.SHUTTING_DOWN,
                "the node is shutting down or moving its span and takes no new work; nothing "
                "was charged: use another node",
            )

    async def _open(self, request: OpenSession, prompts: torch.Tensor | None = None) -> Session:
        self._refuse_if_closed()
        span = self.spans.view(request.span_start, request.span_end)
        if prompts is not None:  # the first step must cover them: P <= max_length
            self._check_prompts(span, prompts, request.max_length)
        channel = await self.payments.check_channel(request.channel_id)
        price = self.price_per_block * (span.end - span.start)
        session = await self.sessions.open(request, span, channel.client, price)
        session.prompts = prompts
        session.prompts_hash = None if prompts is None else tensor_hash(prompts)
        self.metrics.sessions_open.set(len(self.sessions))
        self.metrics.cache_tokens.set(self.sessions.caches.tokens_in_use)
        logger.info(
            "session 0x%s opened: blocks [%d, %d), batch %d, max length %d, channel %d",
            session.session_id.hex()[:16],
            span.start,
            span.end,
            request.batch_size,
            request.max_length,
            request.channel_id,
        )
        return session

    async def _step(self, session: Session, frame: Frame) -> list[Any]:
        if frame.type != StepRequest.TYPE:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected a step frame, got {frame.type!r}")
        request = StepRequest.from_wire(frame.metadata)
        if request.step != session.next_step:
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER,
                f"step {request.step} sent, the session expects step {session.next_step}",
            )
        began = time.perf_counter()
        if request.pushed_from is None:
            hidden, mask = unpack_step(frame.tensors)
        else:  # pipelined: the hidden states come by push
            mask = _mask_only(frame.tensors)
            hidden = await self._await_input(session, request, mask)
        tokens = check_step(session, hidden, mask)
        if session.prompts is not None and request.step == 0:
            _check_covers_prompts(session.prompts, hidden)
        checked = time.perf_counter()
        accepted = await self.payments.accept(
            channel_id=session.channel_id,
            voucher=request.voucher,
            step_cost=tokens * session.price_per_token,
            client=session.client,
        )
        paid = time.perf_counter()
        # from here on the voucher is spent: a failure is INTERNAL, fatal, with `spent` set
        try:
            session.computing = self.compute.submit(
                self._compute, session, request.step, tokens, hidden, mask
            )
            output, receipt, encoded, states = await asyncio.wrap_future(session.computing)
            computed = time.perf_counter()
            # the leaf (and the step's inputs) is in the ledger before its receipt leaves the
            # node: a receipt obliges the node to commit the leaf
            kept = session.prompts if request.step == 0 else None  # revealed with step 0's
            stored = self.writer.submit(receipt, hidden, mask, encoded, states, kept)
            await accepted.persisted
            await stored
        except Exception as exc:
            logger.exception("step %d failed after its voucher was accepted", request.step)
            raise await spent_failure(exc, accepted) from None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "step %d: check %.2f ms, payment %.2f ms, compute %.2f ms, ledger wait %.2f ms",
                request.step,
                (checked - began) * 1e3,
                (paid - checked) * 1e3,
                (computed - paid) * 1e3,
                (time.perf_counter() - computed) * 1e3,
            )
        session.next_step = request.step + 1
        session.touch()
        self.on_leaf()
        self.metrics.served(tokens)
        pushed = None
        if request.push_to is not None:
            pushed = await self._push(request.push_to, output, receipt)
        return list(_frame(StepResponse(request.step, receipt, pushed).to_wire(), [output]))

    # --- pipelined steps -------------------------------------------------------------------

    async def _await_input(
        self, session: Session, request: StepRequest, mask: torch.Tensor
    ) -> torch.Tensor:
        """The hidden states of a pipelined step, once pushed (`rpc_push`); NO_INPUT (nothing
        paid, the session as before) when none came within the idle timeout."""
        assert request.pushed_from is not None
        awaited = AwaitedInput(
            request.step, request.pushed_from, mask, asyncio.get_running_loop().create_future()
        )
        session.awaited = awaited
        session.input_wanted.set()
        try:
            async with asyncio.timeout(self.idle_timeout):
                hidden = await awaited.arrived
            session.input_taken = request.step
            return hidden
        except TimeoutError:
            raise ProtocolError(
                ErrorCode.NO_INPUT,
                f"the input of step {request.step} did not arrive within "
                f"{self.idle_timeout:.0f} s: neither {request.pushed_from} nor the client pushed "
                "it; nothing was charged",
            ) from None
        finally:
            session.awaited = None
            session.input_wanted.clear()

    async def _push(self, target: PushTarget, output: torch.Tensor, receipt: SignedReceipt) -> bool:
        """Send `output` to the next hop as its step's input; whether it took it (a failure is
        the client's to work around: it pushes the output itself)."""
        if self.p2p is None:
            return False
        try:
            await push_input(
                self.p2p,
                target.peer_id,
                PushRequest(target.session_id, target.step, receipt),
                output,
                timeout=push_timeout(self.limits.push_timeout, output),
                max_bytes=self.max_frame_bytes,
            )
        except (ProtocolError, ConnectionError, TimeoutError) as exc:
            logger.info("pushing step output to %s failed: %s", target.peer_id, exc)
            return False
        return True

    async def rpc_push(
        self, requests: AsyncIterator[Request], context: P2PContext
    ) -> AsyncIterator[Response]:
        """A pipelined step's input (`PushRequest`): answered `Pushed` once the session's step
        took it, else an `ErrorReply` to the pusher only."""
        lease = self.incoming.lease()
        try:
            frame = await self._read(requests, timeout=self.idle_timeout, lease=lease)
            if frame is None or frame.type != PushRequest.TYPE or len(frame.tensors) != 1:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "expected one push frame with a tensor")
            push = PushRequest.from_wire(frame.metadata)
            await self._take_push(push, frame.tensors[0], context.remote_id.to_base58())
            messages = list(_frame(Pushed().to_wire()))
        except Exception as exc:
            messages = self._refusal(exc, "push")
        finally:
            lease.release()
        for message in messages:
            yield message

    def _refusal(self, exc: Exception, what: str) -> list[Any]:
        """The messages refusing a one-frame call (`what`) that failed with `exc`: its
        `ProtocolError`, or INTERNAL (logged) for anything else."""
        if isinstance(exc, ProtocolError):
            error = exc
        else:
            logger.error("%s failed", what, exc_info=exc)
            error = ProtocolError(ErrorCode.INTERNAL, "the node failed")
        self.metrics.error(error.code)
        return list(error_messages(error))

    async def _take_push(self, push: PushRequest, hidden: torch.Tensor, sender: str) -> None:
        """Give `hidden` to the session's step `push.step` once it waits for it (a push may
        overtake its step request by up to `push_timeout`). The session's client may push its
        input; any other peer must carry the receipt, signed by the step's `pushed_from`, of an
        output that hashes to `hidden`."""
        session = self.sessions.open_sessions.get(push.session_id)
        if session is None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "no such session on this node")
        awaited = await _awaited(session, push.step, self.limits.push_timeout)
        if sender != session.client_peer:
            if push.receipt is None:
                raise ProtocolError(
                    ErrorCode.UNAUTHORIZED,
                    "a push from another peer than the client carries the previous hop's receipt",
                )
            leaf = push.receipt.leaf
            signer = recover_receipt_signer(self.receipts.domain, leaf, push.receipt.signature)
            if signer != awaited.pushed_from:
                raise ProtocolError(
                    ErrorCode.UNAUTHORIZED,
                    f"the pushed receipt is signed by {signer}, the step expects its input from "
                    f"{awaited.pushed_from}",
                )
            if leaf.output_hash != tensor_hash(hidden):
                raise ProtocolError(
                    ErrorCode.BAD_TENSOR, "the pushed tensor is not the output its receipt signs"
                )
        check_step(session, hidden, awaited.mask)
        if awaited.arrived.done():
            raise ProtocolError(ErrorCode.OUT_OF_ORDER, f"step {push.step} already has its input")
        awaited.arrived.set_result(hidden)

    def _compute(
        self,
        session: Session,
        step: int,
        tokens: int,
        hidden: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, Any, bytes, torch.Tensor | None]:
        # hidden: [batch, tokens, hidden_size]; mask: [batch, past + tokens]
        # deep prompts: added in step 0, their hash committed in every step
        added = session.prompts if step == 0 else None
        return self._committed(
            session.span,
            session.session_id,
            step,
            tokens,
            hidden,
            mask,
            lambda blocks: session.span.forward(hidden, mask, session.cache, blocks, added),
            prompts_hash=session.prompts_hash,
        )

    def _committed(
        self,
        span: Span,
        session_id: bytes,
        step: int,
        tokens: int,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        forward: Callable[[list[torch.Tensor] | None], torch.Tensor],
        *,
        prompts_hash: bytes | None = None,
    ) -> tuple[torch.Tensor, Any, bytes, torch.Tensor | None]:
        """Run `forward` (collecting every block's output when the span's dtype commits block
        states, `node.states`) and sign the step's leaf: the output, the signed receipt, the
        encoded sketch and the block states (None for a float32 span)."""
        blocks: list[torch.Tensor] | None = [] if commits_states(span.dtype) else None
        output = forward(blocks)
        states = None if blocks is None else stack_states(blocks, output)
        receipt, encoded = self.receipts.make_with_sketch(
            session_id=session_id,
            span=(span.start, span.end),
            step=step,
            tokens=tokens,
            hidden_in=hidden,
            hidden_out=output,
            mask=mask,
            states=states,
            quantization=span.quantization,
            prompts_hash=prompts_hash,
        )
        return output, receipt, encoded, states

    # --- stateless forward -----------------------------------------------------------------

    async def rpc_forward(
        self, requests: AsyncIterator[Request], context: P2PContext
    ) -> AsyncIterator[Response]:
        async for message in self._one_frame_call(requests, ForwardRequest, self._forward):
            yield message

    async def _one_frame_call(
        self,
        requests: AsyncIterator[Request],
        request_type: type[ForwardRequest] | type[BackwardRequest],
        serve: Callable[[Any, Frame], Awaitable[list[Any]]],
    ) -> AsyncIterator[Response]:
        """A call of one frame of `request_type` answered by one frame (a forward, a
        backward): read it within the idle timeout, in the node's incoming-bytes budget,
        `serve` the parsed request while `working` keepalives go out, and answer its frame or
        the refusal."""
        arrivals = Arrivals(requests)
        work = asyncio.ensure_future(self._read_and_serve(arrivals, request_type, serve))
        try:
            try:
                async for message in keepalives(work, arrivals.started):
                    yield message
            finally:
                await finish(work)
            messages = work.result()
        except Exception as exc:
            messages = self._refusal(exc, request_type.TYPE)
        for message in messages:
            yield message

    async def _read_and_serve(
        self,
        requests: AsyncIterator[Request],
        request_type: type[ForwardRequest] | type[BackwardRequest],
        serve: Callable[[Any, Frame], Awaitable[list[Any]]],
    ) -> list[Any]:
        lease = self.incoming.lease()
        try:
            frame = await self._read(requests, timeout=self.idle_timeout, lease=lease)
            if frame is None or frame.type != request_type.TYPE:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"expected one {request_type.TYPE} frame"
                )
            return await serve(request_type.from_wire(frame.metadata), frame)
        finally:
            lease.release()

    async def _forward(self, request: ForwardRequest, frame: Frame) -> list[Any]:
        self._refuse_if_closed()
        span = self.spans.view(request.span_start, request.span_end)
        prompts = None
        if len(frame.tensors) == 3:  # deep prompts (training, protocol 9)
            *step_tensors, prompts = frame.tensors
        else:
            step_tensors = frame.tensors
        hidden, mask = unpack_step(step_tensors)
        check_hidden(hidden, hidden_size=span.hidden_size, dtype=span.dtype)
        check_mask(mask, hidden.shape[0], hidden.shape[1])
        prompts_hash = None
        if prompts is not None:
            self._check_prompts(span, prompts, hidden.shape[1])
            prompts_hash = tensor_hash(prompts)
        tokens = hidden.shape[0] * hidden.shape[1]
        # before any payment: a forward over the cap costs the client nothing
        check_forward_tokens(tokens, self.limits.max_forward_tokens)
        channel = await self.payments.check_channel(request.voucher.channel_id)
        await self.sessions.claim(request.session_id, channel.channel_id, span.start, span.end)
        accepted = await self.payments.accept(
            channel_id=channel.channel_id,
            voucher=request.voucher,
            step_cost=tokens * self.price_per_block * (span.end - span.start),
            client=channel.client,
        )

        def compute() -> _Computed:
            committed = self._committed(
                span,
                request.session_id,
                0,
                tokens,
                hidden,
                mask,
                lambda blocks: span.forward(hidden, mask, states=blocks, prompts=prompts),
                prompts_hash=prompts_hash,
            )
            return (*committed, prompts)

        output, receipt, _ = await self._paid_compute(accepted, compute, hidden, mask, "forward")
        self.metrics.served(tokens)
        if self.backward_price_per_block:  # its backward may follow (node.training)
            self.forwards.record(
                request.session_id,
                span=(span.start, span.end),
                input_hash=receipt.leaf.input_hash,
                mask_hash=mask_hash(mask, hidden.shape[1]),
                channel_id=channel.channel_id,
                prompts_hash=prompts_hash,
            )
        return list(_frame(StepResponse(0, receipt).to_wire(), [output]))

    def _check_prompts(self, span: Span, prompts: torch.Tensor, tokens: int) -> None:
        """BAD_REQUEST unless this node trains (deep prompts are a tuned model's, audited in
        float32), BAD_TENSOR unless `prompts` fit the span and a sequence of `tokens`."""
        if not self.backward_price_per_block:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "this node serves no training: it takes no deep prompts"
            )
        try:
            check_prompts(
                prompts,
                blocks=span.end - span.start,
                hidden_size=span.hidden_size,
                dtype=span.dtype,
                tokens=tokens,
                max_abs=FP16_MAX,
            )
        except BadTensorError as exc:
            raise ProtocolError(ErrorCode.BAD_TENSOR, str(exc)) from None

    async def _paid_compute(
        self,
        accepted: Accepted,
        compute: Callable[[], _Computed],
        leaf_input: torch.Tensor,
        mask: torch.Tensor,
        what: str,
    ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Run a one-frame call's `compute` (its answer, signed receipt, encoded sketch, block
        states and prompts to reveal: a forward's deep prompts, a backward's gradient of them)
        once its voucher is `accepted`, queued behind inference steps (a long forward or
        backward holds a decode step back for at most the one task already running,
        node.compute); store the leaf with `leaf_input`, `mask` and those before the receipt
        leaves the node (as in `_step`). The answer, the receipt and the prompts stored; a
        failure now is spent."""
        try:
            answer, receipt, encoded, states, prompts = await asyncio.wrap_future(
                submit_forward(self.compute, compute)
            )
            stored = self.writer.submit(receipt, leaf_input, mask, encoded, states, prompts)
            await accepted.persisted
            await stored
        except Exception as exc:
            logger.exception("a %s failed after its voucher was accepted", what)
            raise await spent_failure(exc, accepted) from None
        self.on_leaf()
        return answer, receipt, prompts

    # --- backward (training) ---------------------------------------------------------------

    async def rpc_backward(
        self, requests: AsyncIterator[Request], context: P2PContext
    ) -> AsyncIterator[Response]:
        async for message in self._one_frame_call(requests, BackwardRequest, self._backward):
            yield message

    async def _backward(self, request: BackwardRequest, frame: Frame) -> list[Any]:
        """Serve the backward of a forward this node served (`node.training`): every check
        before the payment, the forward's record taken once the voucher is accepted (put
        back if it is not), the gradient committed as the session's step `BACKWARD_STEP`."""
        self._refuse_if_closed()
        if not self.backward_price_per_block:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "this node serves no backward")
        span = self.spans.view(request.span_start, request.span_end)
        if len(frame.tensors) not in (3, 4):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                "a backward carries 3 tensors (hidden states, mask, output gradient) and the "
                f"forward's deep prompts if it had them, got {len(frame.tensors)}",
            )
        hidden, mask, grad, *prompted = frame.tensors
        prompts = prompted[0] if prompted else None
        check_hidden(hidden, hidden_size=span.hidden_size, dtype=span.dtype)
        check_mask(mask, hidden.shape[0], hidden.shape[1])
        prompts_hash = None
        if prompts is not None:
            self._check_prompts(span, prompts, hidden.shape[1])
            prompts_hash = tensor_hash(prompts)
        check_hidden(grad, hidden_size=span.hidden_size, dtype=span.dtype, batch=hidden.shape[0])
        if grad.shape != hidden.shape:
            raise ProtocolError(
                ErrorCode.BAD_TENSOR,
                f"the output gradient is {list(grad.shape)}, the forward's hidden states "
                f"{list(hidden.shape)}",
            )
        tokens = hidden.shape[0] * hidden.shape[1]
        check_forward_tokens(tokens, self.limits.max_forward_tokens)
        channel = await self.payments.check_channel(request.voucher.channel_id)
        record = self.forwards.take(
            request.session_id,
            span=(span.start, span.end),
            input_hash=tensor_hash(hidden),
            mask_hash=mask_hash(mask, hidden.shape[1]),
            channel_id=channel.channel_id,
            prompts_hash=prompts_hash,
        )
        try:
            accepted = await self.payments.accept(
                channel_id=channel.channel_id,
                voucher=request.voucher,
                step_cost=tokens * self.backward_price_per_block * (span.end - span.start),
                client=channel.client,
            )
        except BaseException:
            self.forwards.restore(request.session_id, record)
            raise

        def compute() -> _Computed:
            grad_input, for_prompts = span.backward(hidden, mask, grad, prompts)
            receipt, encoded = self.receipts.make_backward(
                session_id=request.session_id,
                span=(span.start, span.end),
                tokens=tokens,
                grad_output=grad,
                grad_input=grad_input,
                mask=mask,
                prompts_hash=prompts_hash,
                grad_prompts=for_prompts,
            )
            return grad_input, receipt, encoded, None, for_prompts

        # the leaf's input is the output gradient (the forward's inputs are step 0's); what it
        # keeps to reveal with it, the gradient of the forward's prompts
        grad_input, receipt, grad_prompts = await self._paid_compute(
            accepted, compute, grad, mask, "backward"
        )
        self.metrics.served(tokens)
        answer = [grad_input] if grad_prompts is None else [grad_input, grad_prompts]
        return list(_frame(StepResponse(BACKWARD_STEP, receipt).to_wire(), answer))

    # --- info ------------------------------------------------------------------------------

    async def rpc_info(self, request: Request, context: P2PContext) -> Response:
        return next(iter(_frame(self.info().to_wire())))

    # --- reveal ----------------------------------------------------------------------------

    async def rpc_reveal(self, request: Request, context: P2PContext) -> AsyncIterator[Response]:
        try:
            frame = decode_frame([request])
            if frame.type != RevealRequest.TYPE:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected a reveal, got {frame.type!r}")
            reveal = RevealRequest.from_wire(frame.metadata)
            await self._authorize(reveal)
            built = await asyncio.to_thread(
                build_reveal,
                self.ledger,
                self.store,
                node=self.address,
                batch_id=reveal.batch_id,
                leaf_index=reveal.leaf_index,
                full=reveal.full,
            )
            # a long session's reveal streams from disk (never whole in memory); until its
            # first messages are out, a failure is still an error frame
            stream = built.messages(Response)
            messages = await asyncio.to_thread(_next_messages, stream)
        except ProtocolError as exc:
            self.metrics.error(exc.code)
            messages, stream = list(error_messages(exc)), None
        except Exception:
            logger.exception("reveal failed")
            self.metrics.error(ErrorCode.INTERNAL)
            messages = list(error_messages(ProtocolError(ErrorCode.INTERNAL, "the node failed")))
            stream = None
        for message in messages:
            yield message
        while stream is not None:
            try:
                messages = await asyncio.to_thread(_next_messages, stream)
            except Exception:  # mid-frame: the verifier sees the stream end inside the frame
                logger.exception("a reveal broke off mid-stream")
                self.metrics.error(ErrorCode.INTERNAL)
                return
            if not messages:
                self.metrics.reveals.inc()
                return
            for message in messages:
                yield message

    async def _authorize(self, reveal: RevealRequest) -> None:
        if reveal.node != self.address:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, f"the reveal is addressed to {reveal.node}, not this node"
            )
        age = time.time() - reveal.issued_at
        if abs(age) > self.limits.reveal_max_age:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED,
                f"the reveal request was issued {age:.0f} s ago; at most "
                f"{self.limits.reveal_max_age:.0f} s are accepted",
            )
        try:
            signer = Account.recover_message(
                encode_defunct(text=reveal.message()), signature=reveal.signature
            )
        except Exception:  # eth-account raises several unrelated types on a bad signature
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "unreadable reveal signature") from None
        if to_checksum_address(signer) != reveal.verifier:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, f"the reveal is signed by {signer}, not {reveal.verifier}"
            )
        try:
            active = await asyncio.to_thread(self.verifiers.is_active, reveal.verifier)
        except (ChainError, OSError):
            raise ProtocolError(ErrorCode.INTERNAL, "the node cannot reach the chain") from None
        if not active:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, f"{reveal.verifier} is not an active verifier"
            )


# Messages of a streamed reveal read per hop to a worker thread (each ~1 MiB at most).
_REVEAL_MESSAGES_PER_READ = 8


def _next_messages(stream: Iterator[Any]) -> list[Any]:
    """The next few messages of a streamed frame, empty at its end (in a worker thread: the
    stream reads the node's stored inputs from disk)."""
    return list(itertools.islice(stream, _REVEAL_MESSAGES_PER_READ))


def _mask_only(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The mask of a pipelined step frame (its hidden states come by push)."""
    if len(tensors) != 1:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"a pipelined step carries 1 tensor (the attention mask), got {len(tensors)}",
        )
    return tensors[0]


async def _awaited(session: Session, step: int, timeout: float) -> AwaitedInput:
    """The session's step `step` once it waits for its input (within `timeout` s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        awaited = session.awaited
        if awaited is not None and awaited.step == step:
            return awaited
        if step < session.next_step or step == session.input_taken:
            raise ProtocolError(ErrorCode.OUT_OF_ORDER, f"step {step} already has its input")
        left = deadline - loop.time()
        if left <= 0:
            raise ProtocolError(
                ErrorCode.NO_INPUT, f"step {step} of this session did not ask for its input"
            )
        if awaited is None:
            with suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await session.input_wanted.wait()
        else:  # an earlier step still waits for its input
            await asyncio.sleep(min(0.01, left))


# Step refusals after which the session is exactly as before the step.
_RECOVERABLE = frozenset(
    {
        ErrorCode.NO_INPUT,
        ErrorCode.BAD_REQUEST,
        ErrorCode.BAD_TENSOR,
        ErrorCode.OUT_OF_ORDER,
        ErrorCode.LENGTH_EXCEEDED,
        ErrorCode.BAD_VOUCHER,
        ErrorCode.WRONG_CHANNEL,
        ErrorCode.REPLAYED_VOUCHER,
        ErrorCode.PAYMENT_BEHIND,
    }
)


def _check_covers_prompts(prompts: torch.Tensor, hidden: torch.Tensor) -> None:
    """BAD_TENSOR unless a prompted session's first step `hidden` [batch, tokens, hidden]
    covers the P positions its deep prompts [blocks, P, hidden] are added to."""
    if hidden.shape[1] < prompts.shape[1]:
        raise ProtocolError(
            ErrorCode.BAD_TENSOR,
            f"the session's deep prompts cover {prompts.shape[1]} positions, its first step "
            f"sends {hidden.shape[1]}",
        )
