"""The calibration matrix of the audit thresholds, in process: simulated nodes serve sessions
(honestly in several ways, or with a cheat of `node.faults`), a verifier audits every leaf.

A simulated node serves a session the way `node.handler` does: a prefill step, then one
token per step, each step through a `SessionCache`, and commits the sketch of what it sends.
The verifier side re-runs each leaf as `verifier.audit` does (one float32 pass over the
session's inputs up to the leaf) and judges it with `verifier.thresholds`.

Honest variations: torch threads on the node (2, or 1) and the verifier's (1), the session's
rows computed inside a larger batch with other sessions (batch composition), cached steps
against one pass, and float16 / bfloat16 nodes that declare it; for 16-bit nodes also eager
attention against sdpa and other kernels for the same ops (`honest_16bit`). Cheats: every
compute cheat of `node.faults` (all but equivocate, which is not a computation), and three
served only here (`SpanCheat`: int8 weights, another checkpoint, float16 compute declared as
bfloat16). With `matched`, a 16-bit node's leaves are audited as `verifier run` audits them:
block by block from the block states it commits (`node.states`, `verifier.blockwise`).

`benchmarks/calibrate.py` prints the rates; `tests/unit/test_verifier_audit.py` asserts zero
false positives and at least 99% detection per cheated leaf. The serving side imports only
torch and the node's block code (sketching and judging are imported when used), so it also
runs on a GPU machine that has none of the verifier's chain dependencies.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from node.blocks import ClientHead, Span
from node.cache import CacheManager
from node.faults import (
    NOISE_SCALE,
    FaultMode,
    add_noise,
    low_precision_forward,
    perturb_weights,
    quantized_int8,
    reinitialised_block,
    skipping_block,
)
from node.precisions import precision_name
from node.states import commits_states, stack_states

if TYPE_CHECKING:
    from node.sketch import Sketch
    from verifier.audit import Judgement
    from verifier.blockwise import BlockAudit


class SpanCheat(enum.Enum):
    """Cheats that only calibration serves (no `--faulty` mode): other weights or arithmetic
    behind a declared 16-bit dtype."""

    INT8_WEIGHTS = "int8-weights"  # linear weights through int8 and back (`quantized_int8`)
    OTHER_CHECKPOINT = "other-checkpoint"  # one block of other weights (`reinitialised_block`)
    FLOAT16_COMPUTE = "float16-compute"  # computes in float16, sends bfloat16 (declared bf16)
    NF4_WEIGHTS = "nf4-weights"  # serves nf4 weights behind a declared int8 (node.quantize)


Cheat = FaultMode | SpanCheat

COMPUTE_CHEATS: tuple[Cheat, ...] = (
    FaultMode.NOISE,
    FaultMode.SKIP_BLOCK,
    FaultMode.WRONG_WEIGHTS,
    FaultMode.LOW_PRECISION,
    FaultMode.STALE,
    SpanCheat.INT8_WEIGHTS,
    SpanCheat.OTHER_CHECKPOINT,
    SpanCheat.FLOAT16_COMPUTE,
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Variation:
    """How a simulated node serves: its declared dtype, its threads, its batching, its cheat."""

    name: str
    declared: str = "float32"  # the dtype it computes in and announces
    fault: Cheat | None = None  # None: honest
    threads: int = 1  # torch threads while it serves
    strangers: int = 0  # other sessions' rows computed in the same batch
    noise_scale: float = NOISE_SCALE  # with the noise cheat: its std over the output's std
    attention: str = ""  # the node's attention implementation ("eager"; "": the model's)
    kernels: str = ""  # other kernels for the same ops: "gemm" (matmuls without oneDNN),
    # "math-sdpa" (sdpa's reference math backend), "dequantized" (nf4 weights multiplied back
    # out, then ordinary matmuls); "": the defaults
    quantization: str | None = None  # the quantized weights it declares (node.quantize)

    @property
    def precision(self) -> str:
        """What it declares: `bfloat16`, `bfloat16+int8`."""
        return precision_name(self.declared, self.quantization)


HONEST: tuple[Variation, ...] = (
    Variation("float32, 2 threads, cached steps", threads=2),
    Variation("float32, 1 thread, cached steps"),
    Variation("float32, batched with 2 other sessions", strangers=2),
    Variation("float16 declared", declared="float16"),
    Variation("bfloat16 declared", declared="bfloat16"),
)


def honest_16bit(declared: str, quantization: str | None = None) -> tuple[Variation, ...]:
    """The honest variations of a node that declares the 16-bit `declared` (with quantized
    weights, `quantization`): threads, batch composition, eager attention against sdpa, other
    kernels (the verifier: 1 thread, sdpa, alone)."""
    name = precision_name(declared, quantization)
    kinds: tuple[Variation, ...] = (
        Variation(f"{name}, 1 thread"),
        Variation(f"{name}, 2 threads", threads=2),
        Variation(f"{name}, batched with 2 other sessions", strangers=2),
        Variation(f"{name}, eager attention", attention="eager"),
        Variation(f"{name}, other matmul kernel", kernels="gemm"),
        Variation(f"{name}, sdpa's math backend", kernels="math-sdpa"),
    )
    if quantization == "nf4":
        kinds += (Variation(f"{name}, dequantized weights", kernels="dequantized"),)
    return tuple(
        dataclasses.replace(v, declared=declared, quantization=quantization) for v in kinds
    )


def cheats(declared: str = "float32", quantization: str | None = None) -> tuple[Variation, ...]:
    """One variation per compute cheat, for a node that declares `declared` (and
    `quantization`)."""
    name = precision_name(declared, quantization)
    return tuple(
        Variation(
            f"{mode.value} ({name} declared)",
            declared=declared,
            fault=mode,
            quantization=quantization,
        )
        for mode in (*COMPUTE_CHEATS, SpanCheat.NF4_WEIGHTS)
        if not (mode is FaultMode.LOW_PRECISION and declared != "float32")
        and not (mode is SpanCheat.FLOAT16_COMPUTE and declared != "bfloat16")
        and not (mode is SpanCheat.INT8_WEIGHTS and quantization is not None)
        and not (mode is SpanCheat.NF4_WEIGHTS and quantization != "int8")
    )


@dataclass(frozen=True)
class Leaf:
    """One served step as the verifier audits it."""

    step: int
    inputs: list[tuple[torch.Tensor, torch.Tensor]]  # steps 0..step: (hidden, mask)
    committed: Sketch  # the sketch of what the node sent at `step`
    cheated: bool  # the step's output is not what an honest node would send
    states: list[torch.Tensor] | None = None  # 16-bit: steps 0..step's block states


@dataclass
class Rates:
    """Audit outcomes of one variation."""

    variation: Variation
    leaves: int = 0  # leaves audited
    cheated: int = 0  # of which the node cheated on
    failed: int = 0  # audits that failed
    failed_cheated: int = 0  # failed audits of cheated leaves
    worst: dict[str, float] = field(default_factory=dict)  # extreme measurements

    @property
    def cheated_variation(self) -> bool:
        return self.variation.fault is not None

    @property
    def false_positive_rate(self) -> float:
        honest = self.leaves - self.cheated
        return (self.failed - self.failed_cheated) / honest if honest else 0.0

    @property
    def detection_rate(self) -> float:
        return self.failed_cheated / self.cheated if self.cheated else float("nan")

    def add(self, leaf: Leaf, judgement: Judgement, extra: dict[str, float] | None = None) -> None:
        self.leaves += 1
        self.cheated += leaf.cheated
        failed = not judgement.passed
        self.failed += failed
        self.failed_cheated += failed and leaf.cheated
        if not leaf.cheated and self.cheated_variation:
            return  # a cheat's honest steps (stale's prefill) say nothing of it
        for name, value in {**judgement.measured, **(extra or {})}.items():
            for prefix, pick in (("max_", max), ("min_", min)):
                key = prefix + name
                self.worst[key] = pick(self.worst.get(key, value), value)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def other_kernels(kernels: str) -> Iterator[None]:
    """Run the block under other kernels for the same ops (`Variation.kernels`): what another
    machine's arithmetic in the same precision looks like (other accumulation orders)."""
    if kernels == "gemm":
        with warnings.catch_warnings():  # toggling oneDNN warns about Intel GPUs' TF32
            warnings.simplefilter("ignore", UserWarning)
            with torch.backends.mkldnn.flags(enabled=False):
                yield
    elif kernels == "math-sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            yield
    elif kernels and kernels != "dequantized":  # that one is in the weights (SimulatedNode)
        raise ValueError(f"unknown kernels {kernels!r}")
    else:
        yield


class SimulatedNode:
    """A node serving sessions over `span` (float32 weights, on the CPU) as `variation` says,
    on `device` (another device is another machine's arithmetic: an honest variation too)."""

    def __init__(
        self, span: Span, variation: Variation, *, seed: int = 0, device: str = "cpu"
    ) -> None:
        self.variation = variation
        dtype = DTYPES[variation.declared]  # what its inputs and outputs travel in
        fault = variation.fault
        compute = torch.float16 if fault is SpanCheat.FLOAT16_COMPUTE else dtype
        quantization = variation.quantization  # what it serves with: declared, or a cheat's
        if fault is SpanCheat.NF4_WEIGHTS:
            quantization = "nf4"
        if fault is SpanCheat.INT8_WEIGHTS:  # quantized from the float32 checkpoint
            span = quantized_int8(span)
        elif fault is SpanCheat.OTHER_CHECKPOINT:
            span = reinitialised_block(span, seed=seed)
        elif fault is FaultMode.WRONG_WEIGHTS and quantization is not None:
            span = perturb_weights(span, seed=seed)  # another checkpoint, quantized
        same = (
            compute == torch.float32
            and torch.device(device) == span.device
            and not variation.attention
        )
        served = span if same else _moved(span, compute, torch.device(device), variation.attention)
        if quantization is not None:  # as a node quantizes (a verifier's way, so shared)
            from verifier.blockwise import dequantized_span, quantized

            served = quantized(served, quantization)
            if variation.kernels == "dequantized":
                served = dequantized_span(served, compute)
        if fault is FaultMode.SKIP_BLOCK:
            served = skipping_block(served)
        elif fault is FaultMode.WRONG_WEIGHTS and quantization is None:
            served = perturb_weights(served, seed=seed)
        self.span = served
        self.dtype = dtype
        self.compute = compute
        self.generator = torch.Generator().manual_seed(seed)

    def serve(self, hidden: torch.Tensor, mask: torch.Tensor, prompt: int) -> Served:
        """Serve a session whose whole input is `hidden` [batch, total, hidden_size] with `mask`
        [batch, total]: a prefill of `prompt` tokens, then one token per step. Returns each
        step's (input, mask) as sent to it, what it sent back, whether that was cheated and,
        for a 16-bit node, its block states (`node.states`: what it commits to)."""
        hidden = hidden.to(self.dtype)
        batch, total, _ = hidden.shape
        strangers = self.variation.strangers
        if strangers:  # other sessions' rows, full length, computed alongside
            other = torch.randn(strangers, total, hidden.shape[-1], generator=self.generator).to(
                self.dtype
            )
            run_hidden = torch.cat([other, hidden])
            run_mask = torch.cat([torch.ones(strangers, total, dtype=torch.long), mask])
        else:
            run_hidden, run_mask = hidden, mask
        device = self.span.device
        run_hidden, run_mask = run_hidden.to(device=device, dtype=self.compute), run_mask.to(device)
        bounds = step_bounds(prompt, total)
        inputs, outputs, cheated = [], [], []
        states: list[torch.Tensor] | None = [] if commits_states(self.dtype) else None
        with (
            torch_threads(self.variation.threads),
            other_kernels(self.variation.kernels),
            CacheManager(10**7).open(
                "s", self.span.kv_layout, batch=run_hidden.shape[0], max_length=total
            ) as cache,
        ):
            previous: torch.Tensor | None = None
            for start, end in bounds:
                step_hidden = run_hidden[:, start:end]
                step_mask = run_mask[:, :end]
                blocks: list[torch.Tensor] = []
                if self.variation.fault is FaultMode.LOW_PRECISION:
                    out = low_precision_forward(self.span, step_hidden, step_mask, cache)
                else:
                    out = self.span.forward(step_hidden, step_mask, cache, blocks)
                out = out[strangers:].cpu().to(self.dtype)
                honest_out, was_cheated = out, False
                if self.variation.fault is FaultMode.NOISE:
                    out = add_noise(out, self.generator, self.variation.noise_scale)
                    was_cheated = True
                elif self.variation.fault is FaultMode.STALE:
                    if previous is not None and previous.shape == out.shape:
                        out, was_cheated = previous, True
                elif self.variation.fault is not None:
                    was_cheated = True
                previous = honest_out
                inputs.append((hidden[:, start:end].contiguous(), mask[:, :end].contiguous()))
                outputs.append(out)
                cheated.append(was_cheated)
                if states is not None:
                    states.append(stack_states([b[strangers:] for b in blocks], out))
        return Served(inputs, outputs, cheated, states)


@dataclass(frozen=True)
class Served:
    """One session as a simulated node served it, step by step."""

    inputs: list[tuple[torch.Tensor, torch.Tensor]]  # (hidden, mask) as sent to each step
    outputs: list[torch.Tensor]  # what the node sent back
    cheated: list[bool]  # whether that was cheated
    states: list[torch.Tensor] | None  # 16-bit: each step's block states (`node.states`)


def _moved(span: Span, dtype: torch.dtype, device: torch.device, attention: str = "") -> Span:
    """A copy of `span` with its weights in `dtype` on `device` (and, if given, another
    `attention` implementation: "eager" or "sdpa")."""
    other = copy.deepcopy(span)  # its layers keep sharing its (copied) config
    other.layers.to(device=device, dtype=dtype)
    other.rotary.to(device)
    if attention:
        other.config._attn_implementation = attention
    return Span(
        other.config,
        other.family,
        other.start,
        other.end,
        other.layers,
        other.rotary,
        dtype,
        device,
    )


def session_inputs(
    head: ClientHead,
    generator: torch.Generator,
    *,
    max_batch: int = 3,
    max_prompt: int = 16,
    new_tokens: int = 6,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A random session: token ids of a random batch (1..`max_batch`) and prompt length
    (4..`max_prompt`) embedded as hidden states [batch, prompt + new_tokens, hidden], a mask
    with random left padding of the prompt, and the prompt length."""
    batch = int(torch.randint(1, max_batch + 1, (1,), generator=generator))
    prompt = int(torch.randint(4, max_prompt + 1, (1,), generator=generator))
    vocab = head.embed_tokens.num_embeddings
    total = prompt + new_tokens
    ids = torch.randint(3, vocab, (batch, total), generator=generator)
    mask = torch.ones(batch, total, dtype=torch.long)
    for row in range(batch):
        pad = int(torch.randint(0, max(1, prompt // 2), (1,), generator=generator))
        mask[row, :pad] = 0
    return head.embed(ids), mask, prompt


def step_bounds(prompt: int, total: int) -> list[tuple[int, int]]:
    """The token range of each step of a session: the prefill, then one token per step."""
    return [(0, prompt)] + [(t, t + 1) for t in range(prompt, total)]


def leaves_from(served: Served, sketch_k: int | None = None) -> list[Leaf]:
    """The leaves committed for one session's steps: what each step received and sent, its
    output sketched with `sketch_k` components per position (None: the node's `SKETCH_TOP_K`;
    another k measures what a wider sketch would see), and a 16-bit node's block states."""
    from node.sketch import SKETCH_TOP_K, Sketch, sketch

    k = sketch_k or SKETCH_TOP_K
    return [
        Leaf(
            step,
            served.inputs[: step + 1],
            Sketch.decode(sketch(out, k).encode()),
            was_cheated,
            None if served.states is None else served.states[: step + 1],
        )
        for step, (out, was_cheated) in enumerate(zip(served.outputs, served.cheated, strict=True))
    ]


def audit_leaf(
    reference: Span, leaf: Leaf, declared: str, blockwise: BlockAudit | None = None
) -> Judgement:
    """The verifier's judgement of one leaf: one float32 pass over `reference` judged on the
    sketch, or, given `blockwise` (in the declared 16-bit dtype), block by block from the
    leaf's block states (`verifier.blockwise`), as `verifier run` audits 16-bit nodes."""
    from verifier.audit import Judgement, judge, recompute
    from verifier.blockwise import judge_blocks

    mask = leaf.inputs[-1][1]
    with torch_threads(1):
        if blockwise is not None and leaf.states is not None:
            hiddens = [h for h, _ in leaf.inputs]
            precision = precision_name(declared, blockwise.quantization)
            measured, failures = judge_blocks(
                blockwise.measure(hiddens, leaf.states, mask), precision
            )
            return Judgement(not failures, precision, measured, failures)
        hidden = torch.cat([h for h, _ in leaf.inputs], dim=1)
        recomputed = recompute(reference, hidden, mask, leaf.inputs[-1][0].shape[1])
    return judge(leaf.committed, recomputed, declared)


def run_variation(
    reference: Span,
    head: ClientHead,
    variation: Variation,
    *,
    sessions: int,
    seed: int = 0,
    new_tokens: int = 6,
    device: str = "cpu",
    matched: bool = False,
    sketch_k: int | None = None,
) -> Rates:
    """Serve `sessions` random sessions as `variation` (the node on `device`) and audit every
    leaf on the CPU: in one float32 pass, or (`matched`, for a 16-bit declared dtype) step by
    step in the declared dtype."""
    generator = torch.Generator().manual_seed(seed)
    node = SimulatedNode(reference, variation, seed=seed, device=device)
    declared = DTYPES[variation.declared]
    blockwise = (
        block_audit(reference, declared, variation.quantization)
        if matched and commits_states(declared)
        else None
    )
    rates = Rates(variation)
    for _ in range(sessions):
        hidden, mask, prompt = session_inputs(head, generator, new_tokens=new_tokens)
        for leaf in leaves_from(node.serve(hidden, mask, prompt), sketch_k=sketch_k):
            rates.add(leaf, audit_leaf(reference, leaf, variation.declared, blockwise))
    return rates


_BLOCK_AUDITS: dict[tuple[int, torch.dtype, str | None], BlockAudit] = {}


def block_audit(reference: Span, dtype: torch.dtype, quantization: str | None = None) -> BlockAudit:
    """The `BlockAudit` of `reference` in `dtype` (and `quantization`), built once per span
    and precision."""
    from verifier.blockwise import BlockAudit

    key = (id(reference), dtype, quantization)
    if key not in _BLOCK_AUDITS:
        _BLOCK_AUDITS[key] = BlockAudit(reference, dtype, quantization)
    return _BLOCK_AUDITS[key]
