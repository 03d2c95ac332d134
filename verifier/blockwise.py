"""Auditing a 16-bit node one block at a time, from the block states it committed.

A node that serves in float16 or bfloat16 commits every block's output of every step
(`node.states`) and reveals them with its inputs. The verifier recomputes each block `j` of
the audited step in the node's dtype and step structure (the prefill, then each decode step
through a KV cache) from the node's own inputs to that block (the revealed hidden states for
the first block, the node's outputs of block `j - 1` for the others, over every step up to the
audited one), and measures the node's output of block `j` against it:

    e(a, b) at a position = rms(a - b) / max(rms(b), rms(x), 2^-14)

(`x` the block's input at that position: an output that is the small difference of a large
input and a large update carries their rounding, so errors are measured against them too).

- `block_error`: the root mean square of e over the step's positions, against the closest of
  the honest ways to compute the block in the declared dtype (`BlockAudit.ways`: sdpa, eager
  attention and sdpa's math backend: on this CPU an honest node matches one of them bit for
  bit whatever its threads or batch composition);
- `ulp_share`: against that way, the largest share over the batch's rows of a row's components
  more than one unit in the last place of the declared dtype apart (at max(|value|, 2^-8 of
  its position's scale)). Another machine's kernels round some components the other way (one
  unit); a cheat of 1% moves most components by several: the sharpest measure of the three;
- `position_error`: the largest e of one position (a gross cheat on some positions only);
- `precision_ratio` (of the step): the blocks' errors, summed, over their errors against the
  blocks computed in float32, summed. An honest node computes in its dtype: another machine's
  kernels move a few of its blocks a little from the verifier's dtype computation; a node
  computing in more precision than it declared (float16 behind bfloat16) moves every block by
  about the declared dtype's rounding and sits near float32.

A step fails when a block's `ulp_share` or `position_error`, or the step's `precision_ratio`,
exceeds the declared dtype's `BlockTolerance` (`verifier.thresholds`, calibrated by
`benchmarks/calibrate.py`). Only the audited step's positions are judged; the earlier steps'
states are committed too (each step's sketch carries their hash), so the context a block
attends to is the one the node served with.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from node.blocks import Span
from node.cache import CacheManager
from node.quantize import check_quantization, dequantized, quantize_layers
from verifier.thresholds import BlockTolerance, block_tolerance_for

# Attention implementations an honest node may run (besides its family's own): eager rounds the
# attention scores to the declared dtype, sdpa does not; both are honest.
MATCHED_ATTENTION: tuple[str, ...] = ("sdpa", "eager")
ERROR_FLOOR = 2.0**-14  # rms below which a position's scale is not measured
# Components smaller than this share of their position's scale are compared at the unit in the
# last place of that floor: a component that is the small difference of large terms carries
# their rounding (and a client could make some cancel), not a rounding of its own size.
ULP_FLOOR_SHARE = 2.0**-8
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}  # explicit bits of each 16-bit dtype


def span_in(span: Span, dtype: torch.dtype, attention: str = "") -> Span:
    """A copy of `span` with its weights in `dtype` on the same device, and (if given) another
    `attention` implementation ("sdpa" / "eager")."""
    if dtype == span.dtype and attention in ("", span.config._attn_implementation):
        return span
    config = copy.deepcopy(span.config)
    if attention:
        config._attn_implementation = attention
    # the copied layers refer to `config` (attention reads its implementation from there)
    layers = copy.deepcopy(span.layers, memo={id(span.config): config}).to(dtype=dtype)
    return Span(config, span.family, span.start, span.end, layers, span.rotary, dtype, span.device)


def matched_spans(span: Span, dtype: torch.dtype) -> tuple[Span, ...]:
    """Copies of `span` in `dtype`: its own attention implementation, then every other of
    `MATCHED_ATTENTION` its family can run (a family that needs eager, to soft-cap attention
    logits, keeps eager alone)."""
    own = span.config._attn_implementation
    others = [a for a in MATCHED_ATTENTION if a != own] if own in MATCHED_ATTENTION else []
    return (span_in(span, dtype), *(span_in(span, dtype, a) for a in others))


def quantized(span: Span, quantization: str | None) -> Span:
    """`span` (a 16-bit copy the caller owns) with its linear weights quantized in place as a
    node quantizes them (`node.quantize`); `span` itself without a quantization."""
    if quantization is None:
        return span
    quantize_layers(span.layers, quantization, span.dtype)
    span.quantization = quantization
    return span


def dequantized_span(span: Span, dtype: torch.dtype) -> Span:
    """A copy of quantized `span` whose weights are the quantized ones multiplied back out,
    in `dtype`, multiplied by ordinary matmuls (`node.quantize.dequantized`)."""
    layers = dequantized(span.layers, dtype)
    return Span(
        span.config, span.family, span.start, span.end, layers, span.rotary, dtype, span.device
    )


def block_of(span: Span, index: int) -> Span:
    """Block `index` (relative) of `span` as a span of its own (the same module, shared)."""
    layers = nn.ModuleList([span.layers[index]])
    start = span.start + index
    return Span(
        span.config,
        span.family,
        start,
        start + 1,
        layers,
        span.rotary,
        span.dtype,
        span.device,
        span.quantization,
    )


@contextlib.contextmanager
def math_sdpa() -> Iterator[None]:
    """sdpa through its reference math backend (what it falls back to on other hardware)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


@dataclass(frozen=True)
class Way:
    """One honest way to compute the span in a declared dtype."""

    name: str
    span: Span
    math_backend: bool = False  # sdpa through its math backend

    def context(self) -> contextlib.AbstractContextManager[None]:
        return math_sdpa() if self.math_backend else contextlib.nullcontext()


def run_steps(block: Span, inputs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """`block`'s output for the last of `inputs` (each step's [batch, tokens_i, hidden]), run
    step by step through one KV cache with `mask` [batch, total]: as the node served it."""
    batch, total = inputs[0].shape[0], sum(x.shape[1] for x in inputs)
    caches = CacheManager(max_tokens=batch * total)
    with caches.open("block", block.kv_layout, batch=batch, max_length=total) as cache:
        end = 0
        for x in inputs:
            end += x.shape[1]
            output = block.forward(x.to(block.dtype), mask[:, :end], cache)
    return output.cpu()


def block_error(
    node: torch.Tensor, recomputed: torch.Tensor, block_input: torch.Tensor
) -> tuple[float, float]:
    """The module doc's `block_error` and `position_error` of `node` against `recomputed`
    (both [batch, tokens, hidden]) for a block whose input was `block_input`."""
    node, recomputed = node.float(), recomputed.float()
    scale = torch.maximum(_rms(recomputed), _rms(block_input.float())).clamp_min(ERROR_FLOOR)
    errors = _rms(node - recomputed)[..., 0] / scale[..., 0]  # [batch, tokens]
    return float(errors.pow(2).mean().sqrt()), float(errors.max())


def ulp_share(
    node: torch.Tensor, recomputed: torch.Tensor, block_input: torch.Tensor, dtype: torch.dtype
) -> float:
    """The module doc's `ulp_share`: the largest share, over the batch's rows, of a row's
    components (all its positions) where `node` and `recomputed` ([batch, tokens, hidden],
    values of `dtype`) differ by more than one unit in the last place of `dtype` at
    max(|recomputed|, 2^-8 of its position's scale)."""
    node, recomputed = node.float(), recomputed.float()
    scale = torch.maximum(_rms(recomputed), _rms(block_input.float()))  # [batch, tokens, 1]
    magnitude = torch.maximum(recomputed.abs(), scale * ULP_FLOOR_SHARE)
    magnitude = magnitude.clamp_min(torch.finfo(dtype).smallest_normal)
    unit = torch.exp2(torch.floor(torch.log2(magnitude)) - MANTISSA_BITS[dtype])
    off = (node - recomputed).abs() > unit
    return float(off.flatten(1).float().mean(1).max())


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean(-1, keepdim=True).sqrt()


@dataclass(frozen=True)
class BlockMeasure:
    """What one block of the audited step measured."""

    block: int  # global index
    error: float  # `block_error` against the closest honest way
    position_error: float  # the largest error of one position against that way
    ulp_share: float  # against that way: the largest share of a row's components off by
    # more than one unit in the last place
    way: str  # which way was closest
    float32_error: float  # against float32 (0: not measured, every block was bit for bit)


def precision_ratio(measures: Sequence[BlockMeasure]) -> float:
    """The blocks' errors over their errors against float32, each summed over the step's
    blocks: an honest node on other kernels differs from the verifier in a few blocks, by less
    than its own rounding; a node computing in more precision than it declared differs in
    every block by about the declared dtype's rounding, and sits near float32. 0 when every
    block is bit for bit."""
    error = sum(m.error for m in measures)
    if error == 0.0:
        return 0.0
    return error / max(sum(m.float32_error for m in measures), ERROR_FLOOR)


class BlockAudit:
    """The spans one dtype's blockwise audits recompute with, built once from the verifier's
    float32 `span` and kept (audits run in one compute thread)."""

    def __init__(self, span: Span, dtype: torch.dtype, quantization: str | None = None) -> None:
        if span.dtype != torch.float32:
            raise ValueError(f"the verifier holds its span in float32, not {span.dtype}")
        check_quantization(quantization, dtype)
        self.dtype = dtype
        self.quantization = quantization
        spans = [quantized(s, quantization) for s in matched_spans(span, dtype)]
        ways = [Way(s.config._attn_implementation, s) for s in spans]
        ways += [Way("sdpa, math backend", w.span, True) for w in ways if w.name == "sdpa"]
        # the precision's numbers in float32: the reference `precision_ratio` measures against
        self.span = span if quantization is None else dequantized_span(spans[0], torch.float32)
        if quantization == "nf4":
            # nf4 weights multiplied back out, then an ordinary matmul: what bitsandbytes does
            # for prefills on a GPU and on CPUs without its fused kernel (int8 has no such way:
            # LLM.int8 quantizes the inputs too, and multiplies integers, exactly, everywhere)
            ways.append(Way("nf4 dequantized", dequantized_span(spans[0], dtype)))
        self.ways: tuple[Way, ...] = tuple(ways)
        self._blocks: dict[tuple[int, int], Span] = {}

    def _block(self, way: int, index: int) -> Span:
        key = (way, index)
        if key not in self._blocks:
            span = self.span if way < 0 else self.ways[way].span
            self._blocks[key] = block_of(span, index)
        return self._blocks[key]

    def measure(
        self,
        hiddens: Sequence[torch.Tensor],
        states: Sequence[torch.Tensor],
        mask: torch.Tensor,
    ) -> list[BlockMeasure]:
        """Every block's measure for the last step: `hiddens[i]` step i's input
        [batch, tokens_i, hidden], `states[i]` its block states [blocks, batch, tokens_i,
        hidden], `mask` the last step's [batch, total]. The float32 errors are measured only
        when some block is not bit for bit (`precision_ratio` weighs them all)."""
        blocks = range(self.span.num_blocks)
        inputs = [
            [h if j == 0 else s[j - 1] for h, s in zip(hiddens, states, strict=True)]
            for j in blocks
        ]
        closest: list[tuple[tuple[float, float, float], str]] = []
        for j in blocks:
            best: tuple[tuple[float, float, float], str] | None = None
            for w, way in enumerate(self.ways):
                with way.context():
                    recomputed = run_steps(self._block(w, j), inputs[j], mask)
                errors = block_error(states[-1][j], recomputed, inputs[j][-1])
                if best is None or errors < best[0][:2]:
                    share = ulp_share(states[-1][j], recomputed, inputs[j][-1], self.dtype)
                    best = ((*errors, share), way.name)
                if errors[0] == 0.0:
                    break
            assert best is not None  # at least one way
            closest.append(best)
        exact = all(errors[0] == 0.0 for errors, _ in closest)
        measures = []
        for j, ((error, worst, share), name) in zip(blocks, closest, strict=True):
            float32_error = 0.0
            if not exact:
                reference = run_steps(self._block(-1, j), inputs[j], mask)
                float32_error = block_error(states[-1][j], reference, inputs[j][-1])[0]
            measures.append(
                BlockMeasure(self.span.start + j, error, worst, share, name, float32_error)
            )
        return measures


def judge_blocks(
    measures: Sequence[BlockMeasure], dtype: str
) -> tuple[dict[str, float], list[str]]:
    """The measurements a judgement rests on and the bounds of the dtype's `BlockTolerance`
    that the step breaks, in words."""
    tolerance: BlockTolerance = block_tolerance_for(dtype)
    worst = max(measures, key=lambda m: (m.ulp_share, m.error))
    ratio = precision_ratio(measures)
    measured = {
        "ulp_share": worst.ulp_share,
        "worst_block": float(worst.block),
        "block_error": max(m.error for m in measures),
        "position_error": max(m.position_error for m in measures),
        "precision_ratio": ratio,
    }
    failures = []
    for m in measures:
        if m.ulp_share > tolerance.max_ulp_share:
            failures.append(
                f"block {m.block}: {m.ulp_share:.1%} of a row's components more than one unit "
                f"in the last place off (> {tolerance.max_ulp_share:.0%}; closest: {m.way})"
            )
        elif m.position_error > tolerance.max_position_error:
            failures.append(
                f"block {m.block}: one position's error {m.position_error:.3g} > "
                f"{tolerance.max_position_error} (closest: {m.way})"
            )
    if ratio > tolerance.max_precision_ratio:
        failures.append(
            f"blocks {measures[0].block}-{measures[-1].block}: {ratio:.3g} times as far from "
            f"{dtype} as from float32 (> {tolerance.max_precision_ratio}): computed in more "
            "precision than declared"
        )
    return measured, failures
