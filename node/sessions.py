"""Inference sessions on a node: who may open one, their KV caches, and what a step may carry.

A session serves one client stream over a sub-span of the node's blocks. Opening one claims its
id in the ledger (a node serves each id once, ever: serving it twice could make it sign two
different leaves for one step) and reserves its KV cache from the node's token budget. Steps run
strictly in order, one at a time per session; `check_step` validates a step's tensors against
the session before anything is paid for or computed, so a refused step leaves no trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from ledger.db import Ledger, SessionReusedError, claim_session
from ledger.errors import LedgerDbError
from node.blocks import Span
from node.cache import CacheManager, SessionCache
from node.errors import BadTensorError, CacheFullError, SessionExistsError, TensorProblem
from node.protocol import (
    ErrorCode,
    OpenSession,
    ProtocolError,
    longest_revealable,
    reveal_limits,
)
from node.sketch import FP16_MAX
from node.states import commits_states
from node.tensors import DTYPE_NAMES, check_attention_mask, check_hidden_states

logger = logging.getLogger(__name__)


class SpanViews:
    """The node's loaded span and views of its sub-spans (sharing the same layers).

    A session may use any contiguous part `[start, end)` of what the node serves; its leaves
    and price are for that part."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self._views: dict[tuple[int, int], Span] = {(span.start, span.end): span}

    def view(self, start: int, end: int) -> Span:
        """The span `[start, end)`; `ProtocolError(SPAN_MISMATCH)` outside what is served."""
        if not self.span.start <= start < end <= self.span.end:
            raise ProtocolError(
                ErrorCode.SPAN_MISMATCH,
                f"blocks [{start}, {end}) asked; this node serves [{self.span.start}, "
                f"{self.span.end})",
            )
        key = (start, end)
        if key not in self._views:
            full = self.span
            layers = torch.nn.ModuleList(
                full.layers[start - full.start : end - full.start]  # type: ignore[index]
            )
            self._views[key] = Span(
                full.config,
                full.family,
                start,
                end,
                layers,
                full.rotary,
                full.dtype,
                full.device,
                full.quantization,
            )
        return self._views[key]


@dataclass
class AwaitedInput:
    """A pipelined step waiting for its hidden states (`rpc_push`): from the node
    `pushed_from` or from the session's client."""

    step: int
    pushed_from: str  # the previous hop's address: it signed the receipt a push carries
    mask: torch.Tensor  # the step's attention mask, from the client
    arrived: asyncio.Future[torch.Tensor]


@dataclass
class Session:
    """One open inference session: its span, cache, payment terms and progress."""

    session_id: bytes
    request: OpenSession
    span: Span
    cache: SessionCache
    client: str  # the channel's client: vouchers must recover to it
    price_per_token: int  # Wei per token through this session's span
    next_step: int = 0
    last_active: float = field(default_factory=time.monotonic)
    computing: Future[Any] | None = None  # the step running in the compute thread, if any
    client_peer: str | None = None  # the peer id of the client's stream (base58)
    awaited: AwaitedInput | None = None  # a pipelined step waiting for its input
    input_wanted: asyncio.Event = field(default_factory=asyncio.Event)  # set while `awaited`
    input_taken: int = -1  # the last pipelined step that got its input
    # deep prompts [span blocks, P, hidden] given at open: added before each block to the
    # first step's first P positions, their hash committed in every step's sketch
    prompts: torch.Tensor | None = None
    prompts_hash: bytes | None = None  # their tensor_hash, computed once at open

    @property
    def channel_id(self) -> int:
        return self.request.channel_id

    def touch(self) -> None:
        self.last_active = time.monotonic()


class SessionManager:
    """Opens and closes the node's sessions against its KV-cache budget and its ledger."""

    def __init__(self, caches: CacheManager, ledger: Ledger) -> None:
        self.caches = caches
        self.ledger = ledger
        self.open_sessions: dict[bytes, Session] = {}
        self._claimed: set[bytes] = set()  # ids claimed by this process (the ledger has all)

    def __len__(self) -> int:
        return len(self.open_sessions)

    async def claim(self, session_id: bytes, channel_id: int, start: int, end: int) -> None:
        """Claim `session_id` for good; `ProtocolError(SESSION_EXISTS)` if it was ever used."""
        if session_id in self._claimed:
            raise _reused(session_id)
        self._claimed.add(session_id)

        def write() -> None:
            with self.ledger.begin() as db:
                claim_session(
                    db,
                    session_id=session_id,
                    channel_id=channel_id,
                    span_start=start,
                    span_end=end,
                )

        try:
            await asyncio.to_thread(write)
        except SessionReusedError:
            raise _reused(session_id) from None
        except LedgerDbError as exc:
            self._claimed.discard(session_id)
            logger.exception("cannot claim session 0x%s", session_id.hex())
            raise ProtocolError(
                ErrorCode.INTERNAL, f"the node cannot record the session: {exc}"
            ) from exc

    async def open(
        self, request: OpenSession, span: Span, client: str, price_per_token: int
    ) -> Session:
        """Reserve the cache and claim the id of a new session over `span` (already checked to
        be served). CACHE_FULL, SESSION_EXISTS, BAD_TENSOR (dtype) or LENGTH_EXCEEDED (a
        session this node could not reveal in full) as `ProtocolError`."""
        if request.dtype != DTYPE_NAMES[span.dtype]:
            raise ProtocolError(
                ErrorCode.BAD_TENSOR,
                f"this node computes in {DTYPE_NAMES[span.dtype]}, the session asked for "
                f"{request.dtype}",
            )
        # every leaf must stay revealable (a leaf it cannot reveal gets the node slashed): the
        # session's largest reveal must fit what verifiers read (node.protocol.reveal_limits)
        blocks = span.num_blocks if commits_states(span.dtype) else 0
        reveal = reveal_limits(
            hidden_size=span.hidden_size,
            dtype=request.dtype,
            batch=request.batch_size,
            max_length=request.max_length,
            blocks=blocks,
        )
        if not reveal.fits:
            longest = longest_revealable(
                hidden_size=span.hidden_size,
                dtype=request.dtype,
                batch=request.batch_size,
                blocks=blocks,
            )
            raise ProtocolError(
                ErrorCode.LENGTH_EXCEEDED,
                f"a session of batch {request.batch_size} and max_length {request.max_length} "
                f"could need a reveal larger than verifiers read ({'; '.join(reveal.excess())}); "
                f"this node opens sessions of batch {request.batch_size} up to max_length "
                f"{longest}",
            )
        if request.session_id in self._claimed:
            raise _reused(request.session_id)
        try:
            cache = self.caches.open(
                request.session_id,
                span.kv_layout,
                batch=request.batch_size,
                max_length=request.max_length,
            )
        except CacheFullError as exc:
            raise ProtocolError(ErrorCode.CACHE_FULL, str(exc)) from None
        except SessionExistsError:
            raise _reused(request.session_id) from None
        try:
            await self.claim(request.session_id, request.channel_id, span.start, span.end)
        except BaseException:
            cache.close()
            raise
        session = Session(
            session_id=request.session_id,
            request=request,
            span=span,
            cache=cache,
            client=client,
            price_per_token=price_per_token,
        )
        self.open_sessions[request.session_id] = session
        return session

    def close(self, session: Session) -> None:
        """Free the session's cache; its id stays used forever."""
        session.cache.close()
        self.open_sessions.pop(session.session_id, None)

    def close_all(self) -> None:
        for session in list(self.open_sessions.values()):
            self.close(session)


def _reused(session_id: bytes) -> ProtocolError:
    return ProtocolError(
        ErrorCode.SESSION_EXISTS,
        f"session id 0x{session_id.hex()} was already used on this node; use a fresh id",
    )


def check_hidden(
    hidden: torch.Tensor, *, hidden_size: int, dtype: torch.dtype, batch: int | None = None
) -> None:
    """`ProtocolError(BAD_TENSOR)` unless `hidden` is finite [batch, tokens, hidden_size] in
    `dtype` with tokens >= 1 (and the given batch), and every |value| at most float16's
    largest, 65504 (beyond it the committed sketch saturates, so the work could not be
    audited; a float16 node could not even hold it; SmolLM2-135M's embeddings stay under 2
    and its residual stream under 27.4k). Tiny values, zeros and subnormals are accepted:
    audits measure them soundly (node.sketch)."""
    try:
        check_hidden_states(
            hidden, hidden_size=hidden_size, dtype=dtype, batch=batch, max_abs=FP16_MAX
        )
    except BadTensorError as exc:
        message = str(exc)
        if exc.problem is TensorProblem.TOO_LARGE:
            message += (
                " (float16's largest): outside what a model's residual stream holds and what "
                "an audit can check"
            )
        raise ProtocolError(ErrorCode.BAD_TENSOR, message) from None


def check_mask(mask: torch.Tensor, batch: int, length: int) -> None:
    """`ProtocolError(BAD_TENSOR)` unless `mask` is int64 [batch, length] of 0/1."""
    try:
        check_attention_mask(mask, batch=batch, length=length)
    except BadTensorError as exc:
        raise ProtocolError(ErrorCode.BAD_TENSOR, str(exc)) from None


def unpack_step(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (hidden, mask) of a step frame; BAD_REQUEST for another number of tensors."""
    if len(tensors) != 2:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"a step carries 2 tensors (hidden states, attention mask), got {len(tensors)}",
        )
    return tensors[0], tensors[1]


def check_step(session: Session, hidden: torch.Tensor, mask: torch.Tensor) -> int:
    """Validate a step of `session` before it is paid for or run; returns its tokens
    (batch x new tokens). BAD_TENSOR or LENGTH_EXCEEDED as `ProtocolError`."""
    span = session.span
    check_hidden(hidden, hidden_size=span.hidden_size, dtype=span.dtype, batch=session.cache.batch)
    batch, tokens, _ = hidden.shape
    past = session.cache.length
    if past + tokens > session.cache.max_length:
        raise ProtocolError(
            ErrorCode.LENGTH_EXCEEDED,
            f"the step needs {past + tokens} positions, the session declared max_length="
            f"{session.cache.max_length}",
        )
    check_mask(mask, batch, past + tokens)
    # the cache lives on the span's device, the step as it arrived on the CPU
    if past and not torch.equal(mask[:, :past].bool(), session.cache.mask.to(mask.device)):
        raise ProtocolError(
            ErrorCode.BAD_TENSOR, "the attention mask disagrees with the session's cached positions"
        )
    return batch * tokens
