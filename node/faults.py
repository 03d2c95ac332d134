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

`make_fault(mode)` gives the `Fault` of a mode (None for none). The server calls
`fault.prepare(span)` once on the loaded span (weights, blocks) and the handler computes
every step with `fault.forward(...)`; only `equivocate` changes the step protocol
(`fault.replays`, `fault.rewind`), only `withhold` the reveal (`fault.check_reveal`,
called by the handler before it builds a reveal), only `no-commit` the commits (the server
commits through `fault.committer(committer)`), and only `steer` the receipts (the server signs
through `fault.receipts(receipts)`, which sketches the honest output `forward` kept aside). `apply_output_fault` is the same output
rule for in-process calibration (`benchmarks/calibrate.py`, the verifier's tests).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import threading
from typing import Any

import torch
from torch import nn

from ledger.eip712 import sign_receipt
from node.blocks import Span
from node.cache import SessionCache
from node.commits import CommitsPending, Committer, Receipts
from node.errors import NodeError
from node.protocol import ErrorCode, ProtocolError, SignedReceipt
from node.tensors import tensor_hash

logger = logging.getLogger(__name__)

NOISE_SCALE = 0.01  # noise std as a fraction of the output's std (per step)
WEIGHT_NOISE_SCALE = 0.01  # weight perturbation std as a fraction of each tensor's std
LOW_PRECISION_DTYPE = torch.bfloat16  # what `low-precision` computes in
STEER_SCALE = 20.0  # `steer`'s push along its direction, in multiples of the output's std


class FaultMode(enum.StrEnum):
    """The cheat modes (`--faulty` values)."""

    NOISE = "noise"
    SKIP_BLOCK = "skip-block"
    WRONG_WEIGHTS = "wrong-weights"
    LOW_PRECISION = "low-precision"
    STALE = "stale"
    EQUIVOCATE = "equivocate"
    WITHHOLD = "withhold"
    NO_COMMIT = "no-commit"
    STEER = "steer"
    FAIL_AFTER_PAYMENT = "fail-after-payment"


FAULT_MODES: tuple[str, ...] = tuple(mode.value for mode in FaultMode)


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
    )


def perturb_weights(span: Span, scale: float = WEIGHT_NOISE_SCALE, seed: int = 0) -> Span:
    """A copy of `span` whose every weight tensor got Gaussian noise of `scale` x its std."""
    perturbed = copy.deepcopy(span)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in perturbed.layers.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            std = float(parameter.float().std()) if parameter.numel() > 1 else 1.0
            parameter.add_((noise * scale * std).to(parameter.dtype))
    return perturbed


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


class Fault:
    """One node's cheat: how it prepares its span and how it computes each step.

    Thread-safety: `forward` runs in the node's single compute thread; the per-session state
    is guarded anyway, since stateless forwards may run elsewhere.
    """

    def __init__(self, mode: FaultMode, seed: int | None = None) -> None:
        self.mode = mode
        seed = int(torch.seed()) if seed is None else seed
        self._generator = torch.Generator().manual_seed(seed)
        self._seed = seed
        self._lock = threading.Lock()
        self._last_output: dict[bytes, torch.Tensor] = {}  # stale: per session
        self._past: dict[bytes, int] = {}  # equivocate: cache length before the last step
        self._honest: dict[int, torch.Tensor] = {}  # steer: id(sent output) -> honest output
        self._failed = False  # fail-after-payment: the one failure happened

    def prepare(self, span: Span) -> Span:
        """The span this node will actually serve with."""
        if self.mode is FaultMode.SKIP_BLOCK:
            logger.warning("CHEAT MODE skip-block: block %d is never computed", _middle(span))
            return skipping_block(span)
        if self.mode is FaultMode.WRONG_WEIGHTS:
            logger.warning("CHEAT MODE wrong-weights: serving perturbed weights")
            return perturb_weights(span, seed=self._seed)
        logger.warning("CHEAT MODE %s", self.mode.value)
        return span

    def committer(self, committer: Committer) -> CommitsPending:
        """What the node commits through: `committer` itself, or nothing for `no-commit`."""
        if self.mode is FaultMode.NO_COMMIT:
            return _NeverCommits()
        return committer

    def receipts(self, receipts: Receipts) -> Receipts:
        """What the node signs receipts with: `receipts` itself, or for `steer` a signer that
        sketches the honest output while hashing the tensor sent."""
        if self.mode is FaultMode.STEER:
            return _SteeringReceipts(receipts, self)
        return receipts

    def honest_output(self, sent: torch.Tensor) -> torch.Tensor:
        """`steer`: the honest output `forward` computed for the tensor `sent` (`sent` itself
        when it was not steered)."""
        with self._lock:
            return self._honest.pop(id(sent), sent)

    def check_reveal(self, batch_id: int, leaf_index: int) -> None:
        """Raise the refusal a withholding node answers every reveal with (`ProtocolError`
        NOT_FOUND, as if the leaf were lost); nothing for the other modes."""
        if self.mode is FaultMode.WITHHOLD:
            logger.warning(
                "CHEAT MODE withhold: refusing to reveal batch %d leaf %d", batch_id, leaf_index
            )
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"leaf {leaf_index} of batch {batch_id} is not available"
            )

    def forward(
        self,
        span: Span,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        cache: SessionCache | None = None,
        *,
        session_id: bytes = b"",
    ) -> torch.Tensor:
        """What the node sends (and commits) for one step of `session_id` over `span`."""
        if cache is not None and self.mode is FaultMode.EQUIVOCATE:
            with self._lock:
                self._past[session_id] = cache.length
        if self.mode is FaultMode.LOW_PRECISION:
            return low_precision_forward(span, hidden, mask, cache)
        decoding = cache is not None and cache.length > 0  # a step after the prefill
        output = span.forward(hidden, mask, cache)
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
        if self.mode is FaultMode.STALE and session_id:
            with self._lock:
                previous = self._last_output.get(session_id)
                self._last_output[session_id] = output
            if previous is not None and previous.shape == output.shape:
                return previous
        return output

    def _direction(self, output: torch.Tensor) -> torch.Tensor:
        # one fixed unit direction per node: every steered step pushes the same way
        generator = torch.Generator().manual_seed(self._seed)
        direction = torch.randn(output.shape[-1], generator=generator)
        return (direction / direction.norm()).to(output.device)

    def replays(self, session_id: bytes, step: int, next_step: int) -> bool:
        """True when this node serves `step` although the session expects `next_step`: an
        equivocating node serves the step it just served a second time."""
        if self.mode is not FaultMode.EQUIVOCATE or step != next_step - 1:
            return False
        with self._lock:
            return session_id in self._past

    def rewind(self, session_id: bytes, cache: SessionCache) -> None:
        """Drop the last step from `cache` so that it can be computed again. Honest code never
        does this; the cheat reaches into the cache on purpose."""
        with self._lock:
            past = self._past.pop(session_id)
        cache._length = past  # noqa: SLF001 (the cheat)

    def forget(self, session_id: bytes) -> None:
        """The session ended: drop what was kept for it."""
        with self._lock:
            self._last_output.pop(session_id, None)
            self._past.pop(session_id, None)


def steer(
    output: torch.Tensor, direction: torch.Tensor, scale: float = STEER_SCALE
) -> torch.Tensor:
    """`output` [batch, tokens, hidden] pushed along the unit `direction` [hidden] by `scale` x
    its std: what a steering node sends instead of what it computed."""
    push = direction.float() * scale * float(output.float().std()) * output.shape[-1] ** 0.5
    return (output.float() + push).to(output.dtype)


class _SteeringReceipts(Receipts):
    """`steer`'s receipts: the sketch of the honest output, the hash of the tensor sent."""

    def __init__(self, receipts: Receipts, fault: Fault) -> None:
        super().__init__(
            domain=receipts.domain,
            account=receipts.account,
            model_id=receipts.model_id,
            enabled=receipts.enabled,
            clock=receipts.clock,
        )
        self._fault = fault

    def make_with_sketch(
        self, *, hidden_out: torch.Tensor, **step: Any
    ) -> tuple[SignedReceipt, bytes]:
        honest = self._fault.honest_output(hidden_out)
        if honest is hidden_out:
            return super().make_with_sketch(hidden_out=hidden_out, **step)
        logger.warning("CHEAT MODE steer: sending a steered output, signing the honest sketch")
        honest_receipt, encoded = super().make_with_sketch(hidden_out=honest, **step)
        leaf = dataclasses.replace(honest_receipt.leaf, output_hash=tensor_hash(hidden_out))
        return SignedReceipt(leaf, sign_receipt(self.domain, leaf, self.account)), encoded


class _NeverCommits:
    """A committer that commits nothing: the `no-commit` cheat."""

    def commit_pending(self) -> list[int]:
        logger.warning("CHEAT MODE no-commit: the served leaves are never committed")
        return []


def _middle(span: Span) -> int:
    return span.start + span.num_blocks // 2


def make_fault(mode: str | None, seed: int | None = None) -> Fault | None:
    """The `Fault` of cheat mode `mode`, or None for an honest node."""
    if mode is None:
        return None
    return Fault(parse_mode(mode), seed)


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
