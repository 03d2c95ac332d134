"""Pass/fail thresholds of an audit: how far a recomputation may be from a committed sketch.

The ONE place these numbers live; the verifier (`verifier.audit.judge`), its tests and
`benchmarks/calibrate.py` all read them from here.

A verifier always recomputes a span in float32 on its CPU from the revealed inputs (exactly
as revealed, upcast) and measures the node's committed sketch against it
(`node.sketch.compare`). Every relative error is |recomputed - committed| over
max(|committed|, floor), the floor being 2^-14 (float16's smallest normal value) or 2^-11 of
the position's largest recomputed |value|, whichever is larger; the top-k overlap counts
near-ties (within 2^-11) as found. So however small the hidden states a client sends (down to
zero; float16 keeps values below 2^-14 only to an absolute 2^-24) or however a client makes
all but one component of a position cancel, an honest float32 node's errors stay within
float16's relative rounding 2^-11 = 4.9e-4, under the float32 bounds below; nodes refuse
inputs beyond 65504, where sketches saturate (`node.sessions.check_hidden`). Real hidden
states lie far above both floors, so the calibration below is unchanged by them. What an
honest node may differ by depends on the dtype it declared (the dtype its inputs travel in):

- float32: thread counts, batch composition, one pass against cached steps and other
  hardware (an H200 against this CPU) leave only float rounding; the sketch's own float16
  rounding (relative 2^-11 = 4.9e-4) bounds the worst honest error. Calibration measured
  honest mean relative errors up to 2.7e-4 and worst up to 4.9e-4 (tiny random Llama,
  SmolLM2-135M blocks 0-10, a SmolLM2-shaped random Llama, nodes on CPU and on an H200); a
  node computing in bfloat16 while declaring float32 showed means from 8.6e-4 and worsts
  from 1.7e-3, 1% output noise means from 1.2e-3. TF32 matmuls (off by default in PyTorch)
  are lower precision than float32 and may fail.
- float16 / bfloat16: the node's own rounding through every block is the honest error
  (bfloat16 keeps 8 significant bits). Calibration measured honest float16 up to mean 3.6e-3
  and worst 3.6e-2, honest bfloat16 up to mean 1.8e-2 and worst 0.36 (SmolLM2 blocks 0-10 on
  the CPU; an H200 stayed below). The bounds sit about three times above, so a node that
  declares a 16-bit dtype is caught only by gross cheats (stale outputs, other models, most
  skipped blocks); small perturbations hide in its own rounding. docs/security.md says what
  that means for stakes; docs/benchmarks.md has the calibration tables.

So a 16-bit node is audited one block at a time instead (`verifier.blockwise`, from the block
states it commits, `node.states`), against `BLOCK_TOLERANCES` below; the tolerances above
still apply to a 16-bit leaf judged on its sketch alone (`judge`: calibration's float32 way).

`benchmarks/calibrate.py` reruns the calibration and prints false-positive and detection rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from node.precisions import QUANTIZATIONS, precision_name


@dataclass(frozen=True)
class Tolerance:
    """Bounds an honest step stays within; an audit fails a step that breaks any of them."""

    min_overlap: float  # every position keeps at least this fraction of its committed top-k
    # indices among the recomputed top-k
    max_rel_error: float  # no committed component is further than this from the
    # recomputation, relative to the committed value (or its position's floor, module doc)
    max_mean_rel_error: float  # the step's mean relative error over all committed components


FLOAT32_TOLERANCE: Final = Tolerance(
    min_overlap=0.75,  # a near-tie at the k-th component may swap two indices honestly
    max_rel_error=1.2e-3,  # 2.5x the float16 rounding of committed values (honest <= 4.9e-4)
    max_mean_rel_error=6e-4,  # honest <= 2.7e-4; bfloat16 compute >= 8.6e-4
)
FLOAT16_TOLERANCE: Final = Tolerance(
    min_overlap=0.5,  # honest >= 0.875
    max_rel_error=0.15,  # honest <= 3.6e-2
    max_mean_rel_error=1e-2,  # honest <= 3.6e-3
)
BFLOAT16_TOLERANCE: Final = Tolerance(
    min_overlap=0.25,  # honest >= 0.75: bf16 rounding reorders near-equal components
    max_rel_error=1.0,  # honest <= 0.36: small committed components lose most digits
    max_mean_rel_error=5e-2,  # honest <= 1.8e-2
)

# A float32 node's backward (`node.training`): the gradient it sent, scaled by a power of two
# into float16's normal range (`node.sketch.backward_sketch`), against the verifier's own
# float32 recomputation from the forward's revealed input and the output gradient, scaled the
# same. Only float rounding differs, as in a forward, so the float32 bounds hold (honest
# gradients of the tiny Llama across thread counts: mean 1e-4, worst 4.9e-4, the sketch's own
# rounding; 1% noise on the gradient and a skipped block fail: tests/unit/test_backward_audit.py).
BACKWARD_TOLERANCE: Final = FLOAT32_TOLERANCE
# A prompted backward also sends the gradient with respect to the deep prompts [blocks, P,
# hidden], revealed whole (its hash is committed): the verifier's float32 recomputation may
# differ from it by at most this share of the recomputed gradient's largest |value|. Each
# component sums over the batch and the positions; float32 rounding of those sums across
# thread counts stays near 1e-6 of the largest, a cheat (noise, a skipped block) moves it by
# percents (tests/unit/test_backward_audit.py).
PROMPTS_GRAD_TOLERANCE: Final = 1e-3

# declared dtype (the dtype a node's inputs travel in) -> its tolerance
TOLERANCES: Final[dict[str, Tolerance]] = {
    "float32": FLOAT32_TOLERANCE,
    "float16": FLOAT16_TOLERANCE,
    "bfloat16": BFLOAT16_TOLERANCE,
}


@dataclass(frozen=True)
class BlockTolerance:
    """Bounds every block of an honest 16-bit step stays within (`verifier.blockwise`)."""

    max_ulp_share: float  # share of a row's components more than one unit in the last place
    # from the closest honest way in the declared dtype
    max_position_error: float  # the relative rms error of any one position
    max_precision_ratio: float  # the step's errors over its errors against float32


# Measured on SmolLM2 blocks 0-10, 1,008 honest and 1,128 cheated leaves per dtype
# (docs/benchmarks.md, "16-bit audits"; nodes on this CPU: threads, batch composition, eager
# attention and sdpa's math backend match one of the verifier's ways bit for bit or nearly;
# matmuls without oneDNN stand in for another machine's kernels; GPU nodes not measured yet).
BFLOAT16_BLOCK_TOLERANCE: Final = BlockTolerance(
    max_ulp_share=0.4,  # honest <= 0.33 (other matmul kernel); 1% noise >= 0.67, int8
    # weights >= 0.64, 1% weights >= 0.66, skip-block, stale and other checkpoint >= 0.95
    max_position_error=2e-2,  # honest <= 5.2e-3 (other matmul kernel)
    max_precision_ratio=0.5,  # honest <= 0.15 (other matmul kernel); float16 compute >= 1.28
    # (its ulp share, 0.32 .. 0.65, alone would not do)
)
FLOAT16_BLOCK_TOLERANCE: Final = BlockTolerance(
    max_ulp_share=0.4,  # honest <= 0.057 (2 threads); 1% noise >= 0.93, int8 weights
    # >= 0.94, 1% weights >= 0.94: float16's finer unit sees them more clearly
    max_position_error=2e-2,  # honest <= 1.3e-4
    max_precision_ratio=math.inf,  # computing float16 in float32 costs more: no cheat
)

# Quantized weights (node.quantize) in a 16-bit dtype: the verifier quantizes the same
# checkpoint to the same integers, so what is left between honest machines is the dtype's own
# rounding in other kernels, as for full weights: the dtype's bounds hold, measured on SmolLM2
# blocks 0-10 (docs/benchmarks.md, "Quantized precisions").
# declared 16-bit precision -> the tolerance of its blocks
BLOCK_TOLERANCES: Final[dict[str, BlockTolerance]] = {
    "float16": FLOAT16_BLOCK_TOLERANCE,
    "bfloat16": BFLOAT16_BLOCK_TOLERANCE,
    **{
        precision_name(dtype, quantization): tolerance
        for dtype, tolerance in (
            ("float16", FLOAT16_BLOCK_TOLERANCE),
            ("bfloat16", BFLOAT16_BLOCK_TOLERANCE),
        )
        for quantization in QUANTIZATIONS
    },
}


def block_tolerance_for(precision: str) -> BlockTolerance:
    """The block tolerance of a declared 16-bit precision (`bfloat16`, `bfloat16+int8`);
    `KeyError` naming the known ones."""
    try:
        return BLOCK_TOLERANCES[precision]
    except KeyError:
        raise KeyError(
            f"no block tolerance for {precision!r}; known: {list(BLOCK_TOLERANCES)}"
        ) from None


def tolerance_for(dtype: str) -> Tolerance:
    """The tolerance of a declared dtype; `KeyError` naming the known ones otherwise."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise KeyError(
            f"no audit tolerance for dtype {dtype!r}; known: {list(TOLERANCES)}"
        ) from None
