"""Cheat modes: a node that serves wrong results on purpose, for tests, calibration and demos.

Off by default; `stakeswarm node serve --faulty MODE` turns one on. Every mode but `withhold`
still answers the protocol correctly (vouchers, receipts, commitments, reveals): only what it
computes is wrong, which is what a verifier must catch by re-running the span.

    noise          adds Gaussian noise (`NOISE_SCALE` x the output's std) to every output
    skip-block     skips one block of the span (the middle one; it costs nothing to run)
    wrong-weights  serves perturbed weights (`WEIGHT_NOISE_SCALE` x each tensor's std)
    low-precision  computes in bfloat16 (autocast) while declaring float32
    stale          sends (and commits) the session's previous output again when the shape
                   matches (decode steps); it still runs the blocks so its KV cache stays
                   consistent and the client's session goes on
    equivocate     computes honestly, but serves a step the client sends again (the step just
                   served) a second time and signs a second, different receipt for the same
                   (session, span, step): two signed receipts anyone can slash it with
    withhold       computes, signs and commits honestly, but refuses every reveal (a node hiding
                   what it served, or one that stopped answering verifiers): the verifiers'
                   withheld verdicts slash it without ever seeing a leaf
    no-commit      computes and signs receipts honestly and is paid, but never commits a leaf
                   (a node dodging every audit): a client's receipt challenge slashes it
    steer          the route's last node: computes honestly and signs the sketch of the honest
                   output, but sends its client a different tensor (the output plus a large
                   push along one fixed direction, so the client's head picks the tokens the
                   node wants) and puts that tensor's hash in the receipt's outputHash
    fail-after-payment  not a cheat, a failure: the first decode step it serves fails after
                   its voucher was accepted (the output overflows to infinity, as a float16
                   node's can, and cannot be sketched); every later step is served honestly

Every mode is a set of wrappers around the honest parts, and lives in this module alone: the
code an honest node runs has no branch for cheating. `wrapping(mode)` gives the
`node.build.Wrapping` the node is built with (`node serve --faulty MODE` passes it):

- the span: `skip-block` and `wrong-weights` serve another span (`skipping_block`,
  `perturb_weights`);
- what a step computes: `noise`, `low-precision`, `stale`, `steer` and `fail-after-payment`
  serve through `FaultyViews`, whose spans compute through a `Cheat`;
- the handler: `equivocate` and `withhold` are handler subclasses (`EquivocatingNode`,
  `WithholdingNode`) that change the step and the reveal;
- `no-commit` wraps the committer, `steer` the receipts (signing the honest output's sketch).

`quantized_int8` and `reinitialised_block` are two more served spans, for calibration only
(`verifier.calibration`: int8 weights or another checkpoint behind a declared 16-bit dtype).

`apply_output_fault` is the same output rule for in-process calibration
(`benchmarks/calibrate.py`, the verifier's tests).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ledger.eip712 import sign_receipt
from node.blocks import Span
from node.build import Wrapping, unchanged
from node.cache import SessionCache
from node.commits import LeafWriter, Receipts
from node.errors import NodeError
from node.fault_modes import FAULT_MODES, FaultMode
from node.handler import StakeswarmNode
from node.protocol import ErrorCode, Frame, ProtocolError, RevealRequest, SignedReceipt, StepRequest
from node.sessions import Session, SpanViews
from node.tensors import tensor_hash

logger = logging.getLogger(__name__)

NOISE_SCALE = 0.01  # noise std as a fraction of the output's std (per step)
WEIGHT_NOISE_SCALE = 0.01  # weight perturbation std as a fraction of each tensor's std
LOW_PRECISION_DTYPE = torch.bfloat16  # what `low-precision` computes in
STEER_SCALE = 20.0  # `steer`'s push along its direction, in multiples of the output's std


class FaultConfigError(NodeError, ValueError):
    """An unknown cheat mode."""


def parse_mode(mode: str) -> FaultMode:
    """The `FaultMode` named `mode`; `FaultConfigError` listing the known ones otherwise."""
    try:
        return FaultMode(mode)
    except ValueError:
        raise FaultConfigError(
            f"unknown cheat mode {mode!r}; known: {', '.join(FAULT_MODES)}"
        ) from None


class _SkippedBlock(nn.Module):
    """Stands in for a decoder layer and returns its input: the block is never computed."""

    def forward(self, hidden: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden


def skipping_block(span: Span, index: int | None = None) -> Span:
    """A span over the same layers with block `index` (relative; default the middle one)
    replaced by the identity. Same KV layout, so sessions and caches work unchanged."""
    index = span.num_blocks // 2 if index is None else index
    layers = nn.ModuleList(list(span.layers))
    layers[index] = _SkippedBlock()
    return Span(
        span.config,
        span.family,
        span.start,
        span.end,
        layers,
        span.rotary,
        span.dtype,
        span.device,
        span.quantization,
    )


def perturb_weights(span: Span, scale: float = WEIGHT_NOISE_SCALE, seed: int = 0) -> Span:
    """A copy of `span` whose every weight tensor got Gaussian noise of `scale` x its std
    (the floating-point ones: a quantized span's integer weights are kept, its norms are not)."""
    perturbed = copy.deepcopy(span)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in perturbed.layers.parameters():
            if not parameter.dtype.is_floating_point:
                continue
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            std = float(parameter.float().std()) if parameter.numel() > 1 else 1.0
            parameter.add_((noise * scale * std).to(parameter.dtype))
    return perturbed


def quantized_int8(span: Span) -> Span:
    """A copy of `span` whose linear weights went through int8 and back: per output channel,
    symmetric (scale = the row's largest |w| / 127), dequantized to the span's dtype. A node
    serving an int8 model while declaring a 16-bit dtype (norm weights are kept)."""
    quantized = copy.deepcopy(span)
    with torch.no_grad():
        for parameter in quantized.layers.parameters():
            if parameter.ndim != 2:
                continue
            weight = parameter.float()  # [out_features, in_features]
            scale = (weight.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
            parameter.copy_(((weight / scale).round().clamp(-127, 127) * scale).to(parameter.dtype))
    return quantized


def reinitialised_block(span: Span, index: int | None = None, seed: int = 0) -> Span:
    """A copy of `span` whose block `index` (relative; default the middle one) holds other
    weights of the same shape: every matrix redrawn from a normal of its own std (norm weights
    kept). A node serving another checkpoint of the same architecture."""
    other = copy.deepcopy(span)
    index = span.num_blocks // 2 if index is None else index
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.layers[index].parameters():
            if parameter.ndim != 2:
                continue
            std = float(parameter.float().std())
            drawn = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std
            parameter.copy_(drawn.to(parameter.dtype))
    return other


def low_precision_forward(
    span: Span,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    cache: SessionCache | None = None,
) -> torch.Tensor:
    """The span computed under bfloat16 autocast (matmuls and attention in bf16), returned in
    the span's declared dtype: a node saving compute while claiming full precision."""
    with torch.autocast(span.device.type, dtype=LOW_PRECISION_DTYPE):
        output = span.forward(hidden, mask, cache)
    return output.to(span.dtype)


def add_noise(
    output: torch.Tensor, generator: torch.Generator, scale: float = NOISE_SCALE
) -> torch.Tensor:
    """`output` plus Gaussian noise of `scale` x its std, in its dtype."""
    std = float(output.float().std())
    noise = torch.randn(output.shape, generator=generator, dtype=torch.float32) * scale * std
    return (output.float() + noise.to(output.device)).to(output.dtype)


def steer(
    output: torch.Tensor, direction: torch.Tensor, scale: float = STEER_SCALE
) -> torch.Tensor:
    """`output` [batch, tokens, hidden] pushed along the unit `direction` [hidden] by `scale` x
    its std: what a steering node sends instead of what it computed."""
    push = direction.float() * scale * float(output.float().std()) * output.shape[-1] ** 0.5
    return (output.float() + push).to(output.dtype)


Compute = Callable[[torch.Tensor, torch.Tensor | None, SessionCache | None], torch.Tensor]

# the modes that change what a step computes (served through `FaultyViews`)
_COMPUTE_MODES = frozenset(
    {
        FaultMode.NOISE,
        FaultMode.LOW_PRECISION,
        FaultMode.STALE,
        FaultMode.STEER,
        FaultMode.FAIL_AFTER_PAYMENT,
    }
)


class Cheat:
    """What a cheating node computes for one step, from what the honest span computes.

    Thread-safety: steps run in the node's single compute thread; the state is guarded anyway,
    since stateless forwards may run elsewhere."""

    def __init__(self, mode: FaultMode, seed: int | None = None) -> None:
        self.mode = mode
        self.seed = int(torch.seed()) if seed is None else seed
        self._generator = torch.Generator().manual_seed(self.seed)
        self._lock = threading.Lock()
        # stale: each session's last output, by its cache (dropped with the session's cache)
        self._last_output: weakref.WeakKeyDictionary[SessionCache, torch.Tensor] = (
            weakref.WeakKeyDictionary()
        )
        self._honest: dict[int, torch.Tensor] = {}  # steer: id(sent output) -> honest output
        self._failed = False  # fail-after-payment: the one failure happened

    def forward(
        self,
        honest: Compute,
        span: Span,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        cache: SessionCache | None,
    ) -> torch.Tensor:
        """What the node sends (and commits) for one step, `honest` being the span's own
        forward over `span` (it runs in every mode, so a session's KV cache stays consistent;
        `span` only says the device and dtype)."""
        if self.mode is FaultMode.LOW_PRECISION:
            with torch.autocast(span.device.type, dtype=LOW_PRECISION_DTYPE):
                output = honest(hidden, mask, cache)
            return output.to(span.dtype)
        decoding = cache is not None and cache.length > 0  # a step after the prefill
        output = honest(hidden, mask, cache)
        if self.mode is FaultMode.NOISE:
            with self._lock:
                return add_noise(output, self._generator)
        if self.mode is FaultMode.STEER:
            steered = steer(output, self._direction(output))
            with self._lock:
                self._honest[id(steered)] = output
            return steered
        if self.mode is FaultMode.FAIL_AFTER_PAYMENT and decoding:
            with self._lock:
                fail, self._failed = not self._failed, True
            if fail:
                logger.warning("FAULT fail-after-payment: this step's output overflows")
                return torch.full_like(output, float("inf"))
        if self.mode is FaultMode.STALE and cache is not None:
            with self._lock:
                previous = self._last_output.get(cache)
                self._last_output[cache] = output
            if previous is not None and previous.shape == output.shape:
                return previous
        return output

    def honest_output(self, sent: torch.Tensor) -> torch.Tensor:
        """`steer`: the honest output computed for the tensor `sent` (`sent` itself when it was
        not steered)."""
        with self._lock:
            return self._honest.pop(id(sent), sent)

    def _direction(self, output: torch.Tensor) -> torch.Tensor:
        # one fixed unit direction per node: every steered step pushes the same way
        generator = torch.Generator().manual_seed(self.seed)
        direction = torch.randn(output.shape[-1], generator=generator)
        return (direction / direction.norm()).to(output.device)


class FaultySpan(Span):
    """A span over the same layers whose steps compute through a `Cheat`."""

    def __init__(self, honest: Span, cheat: Cheat) -> None:
        super().__init__(
            honest.config,
            honest.family,
            honest.start,
            honest.end,
            honest.layers,
            honest.rotary,
            honest.dtype,
            honest.device,
            honest.quantization,
        )
        self.cheat = cheat

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: SessionCache | None = None,
        states: list[torch.Tensor] | None = None,
        prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        honest = functools.partial(super().forward, states=states, prompts=prompts)
        return self.cheat.forward(honest, self, hidden, attention_mask, cache)


class FaultyViews(SpanViews):
    """The node's span views, each computing through the same `Cheat`."""

    def __init__(self, span: Span, cheat: Cheat) -> None:
        super().__init__(span)
        self.cheat = cheat
        self._faulty: dict[tuple[int, int], FaultySpan] = {}

    def view(self, start: int, end: int) -> Span:
        key = (start, end)
        if key not in self._faulty:
            self._faulty[key] = FaultySpan(super().view(start, end), self.cheat)
        return self._faulty[key]


class EquivocatingNode(StakeswarmNode):
    """`equivocate`: a step the client sends again, the step just served, is served a second
    time (its cache rewound) and signed with a second, different receipt for the same (session,
    span, step). Its leaf is not stored: the ledger holds one leaf per slot."""

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        self._past: dict[bytes, int] = {}  # session -> cache length before its last step
        self._replayed: set[tuple[bytes, int]] = set()  # (session, step) served twice
        self.writer = _SkipsReplays(self.writer, self._replayed)

    async def _step(self, session: Session, frame: Frame) -> list[Any]:
        if frame.type == StepRequest.TYPE:
            step = StepRequest.from_wire(frame.metadata).step
            past = self._past.get(session.session_id)
            if past is not None and step == session.next_step - 1:
                logger.warning("CHEAT MODE equivocate: serving step %d a second time", step)
                session.cache._length = past  # noqa: SLF001 (the cheat reaches into the cache)
                session.next_step = step
                self._replayed.add((session.session_id, step))
        return await super()._step(session, frame)

    def _compute(
        self, session: Session, step: int, tokens: int, hidden: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, Any, bytes, torch.Tensor | None]:
        self._past[session.session_id] = session.cache.length
        return super()._compute(session, step, tokens, hidden, mask)


class _SkipsReplays(LeafWriter):
    """A leaf writer that stores every leaf but the second one of a slot served twice."""

    def __init__(self, writer: LeafWriter, replayed: set[tuple[bytes, int]]) -> None:
        super().__init__(writer.ledger, writer.store, writer._executor)  # noqa: SLF001
        self._replayed = replayed

    def submit(
        self,
        receipt: SignedReceipt,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        sketch: bytes = b"",
        states: torch.Tensor | None = None,
        prompts: torch.Tensor | None = None,
    ) -> asyncio.Future[None]:
        slot = (receipt.leaf.session_id, receipt.leaf.step)
        if slot in self._replayed:
            self._replayed.discard(slot)
            skipped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            skipped.set_result(None)
            return skipped
        return super().submit(receipt, hidden, mask, sketch, states, prompts)


class WithholdingNode(StakeswarmNode):
    """`withhold`: refuses every reveal of an active verifier as if the leaf were lost
    (`NOT_FOUND`)."""

    async def _authorize(self, reveal: RevealRequest) -> None:
        await super()._authorize(reveal)
        logger.warning(
            "CHEAT MODE withhold: refusing to reveal batch %d leaf %d",
            reveal.batch_id,
            reveal.leaf_index,
        )
        raise ProtocolError(
            ErrorCode.NOT_FOUND,
            f"leaf {reveal.leaf_index} of batch {reveal.batch_id} is not available",
        )


class _SteeringReceipts(Receipts):
    """`steer`'s receipts: the sketch of the honest output, the hash of the tensor sent."""

    def __init__(self, receipts: Receipts, cheat: Cheat) -> None:
        super().__init__(
            domain=receipts.domain,
            account=receipts.account,
            model_id=receipts.model_id,
            clock=receipts.clock,
        )
        self._cheat = cheat

    def make_with_sketch(
        self, *, hidden_out: torch.Tensor, **step: Any
    ) -> tuple[SignedReceipt, bytes]:
        honest = self._cheat.honest_output(hidden_out)
        if honest is hidden_out:
            return super().make_with_sketch(hidden_out=hidden_out, **step)
        logger.warning("CHEAT MODE steer: sending a steered output, signing the honest sketch")
        honest_receipt, encoded = super().make_with_sketch(hidden_out=honest, **step)
        leaf = dataclasses.replace(honest_receipt.leaf, output_hash=tensor_hash(hidden_out))
        signature = sign_receipt(self.domain, leaf, self.account)
        return SignedReceipt(leaf, signature, honest_receipt.states_hash), encoded


class _NeverCommits:
    """A committer that commits nothing: the `no-commit` cheat."""

    def commit_pending(self) -> list[int]:
        logger.warning("CHEAT MODE no-commit: the served leaves are never committed")
        return []


def _prepared(mode: FaultMode, seed: int) -> Callable[[Span], Span]:
    def prepare(span: Span) -> Span:
        if mode is FaultMode.SKIP_BLOCK:
            logger.warning(
                "CHEAT MODE skip-block: block %d is never computed",
                span.start + span.num_blocks // 2,
            )
            return skipping_block(span)
        if mode is FaultMode.WRONG_WEIGHTS:
            logger.warning("CHEAT MODE wrong-weights: serving perturbed weights")
            return perturb_weights(span, seed=seed)
        logger.warning("CHEAT MODE %s", mode.value)
        return span

    return prepare


def wrapping(mode: str | FaultMode, seed: int | None = None) -> Wrapping:
    """How a node cheating in `mode` wraps its honest parts (`FaultConfigError` for a mode
    that does not exist)."""
    mode = parse_mode(mode) if isinstance(mode, str) else mode
    cheat = Cheat(mode, seed)
    handlers: dict[FaultMode, type[StakeswarmNode]] = {
        FaultMode.EQUIVOCATE: EquivocatingNode,
        FaultMode.WITHHOLD: WithholdingNode,
    }
    return Wrapping(
        span=_prepared(mode, cheat.seed),
        views=(lambda views: FaultyViews(views.span, cheat))
        if mode in _COMPUTE_MODES
        else unchanged,
        receipts=(lambda receipts: _SteeringReceipts(receipts, cheat))
        if mode is FaultMode.STEER
        else unchanged,
        committer=(lambda committer: _NeverCommits()) if mode is FaultMode.NO_COMMIT else unchanged,
        handler=handlers.get(mode, StakeswarmNode),
    )


def apply_output_fault(
    mode: FaultMode,
    span: Span,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    previous_output: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The output a node in `mode` sends for one stateless forward over `span` (the in-process
    form of `Fault`, for calibration). `span` must already be `Fault.prepare`d for the modes
    that change the span; `stale` returns `previous_output` (of the same shape)."""
    if mode is FaultMode.LOW_PRECISION:
        return low_precision_forward(span, hidden, mask)
    if mode is FaultMode.STALE:
        if previous_output is None:
            raise ValueError("stale needs the previous output to replay")
        return previous_output
    output = span.forward(hidden, mask)
    if mode is FaultMode.NOISE:
        return add_noise(output, generator or torch.Generator().manual_seed(0))
    return output
