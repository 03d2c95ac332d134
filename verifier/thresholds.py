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

A 16-bit node can instead be recomputed in its own dtype and step structure (the prefill, then
each cached decode step, through the node's block code: `verifier.audit.AuditSpans`), so both
sides round at the same points. On one CPU that reproduces an honest node's threads and batch
composition bit for bit, and the closest of an sdpa and an eager copy absorbs the attention
implementation; what remains is another kernel's accumulation order, amplified through the
span's blocks (the matched tolerances below). It catches a skipped block and another
checkpoint on every leaf where one float32 pass missed a third of skipped blocks; small
perturbations (1% noise or weights, int8 weights, float16 compute declared as bfloat16) stay
inside that honest spread at the span's end (docs/benchmarks.md, "16-bit audits").

`benchmarks/calibrate.py` reruns the calibration and prints false-positive and detection rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


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

# declared dtype (the dtype a node's inputs travel in) -> its tolerance
TOLERANCES: Final[dict[str, Tolerance]] = {
    "float32": FLOAT32_TOLERANCE,
    "float16": FLOAT16_TOLERANCE,
    "bfloat16": BFLOAT16_TOLERANCE,
}


# Recomputing a 16-bit node in its own dtype and step structure (`verifier.audit.AuditSpans`,
# the closest of sdpa and eager attention). On one CPU that reproduces an honest node's
# threads and eager attention bit for bit; what is left is another kernel's accumulation order
# (matmuls without oneDNN, sdpa's math backend, larger batches: stand-ins for another
# machine), which ten blocks amplify. Measured on SmolLM2 blocks 0-10 (docs/benchmarks.md,
# "16-bit audits"; honest GPU nodes are not measured yet):
BFLOAT16_MATCHED_TOLERANCE: Final = Tolerance(
    min_overlap=0.5,  # honest >= 0.875 (1,050 leaves); no cheat is caught by overlap alone
    max_rel_error=0.25,  # honest <= 0.109 (sdpa's math backend); the float32 way needs 1.0
    max_mean_rel_error=1.5e-2,  # honest <= 7.4e-3 (other matmul kernel; batched 5.4e-3);
    # skip-block >= 2.0e-2, other checkpoint >= 0.10 (1% noise, 1% weights, int8 and float16
    # compute stay at 2e-3 .. 5e-2 on both sides of it: caught on 0-11% of leaves)
)
FLOAT16_MATCHED_TOLERANCE: Final = Tolerance(
    min_overlap=0.5,  # honest 1.0 (210 leaves)
    max_rel_error=6e-2,  # honest <= 8e-3 (sdpa's math backend; all others bit for bit)
    max_mean_rel_error=4e-3,  # honest <= 1.2e-3; int8 weights >= 4.6e-3, skip-block >=
    # 3.2e-2, 1% weights >= 3.4e-3 (97% caught); 1% noise stays inside (1.0e-3 .. 3.7e-3)
)

# declared 16-bit dtype -> its tolerance when the verifier recomputes in that dtype
MATCHED_TOLERANCES: Final[dict[str, Tolerance]] = {
    "float16": FLOAT16_MATCHED_TOLERANCE,
    "bfloat16": BFLOAT16_MATCHED_TOLERANCE,
}


def matched_tolerance_for(dtype: str) -> Tolerance:
    """The tolerance of a declared 16-bit dtype for a dtype-matched recomputation."""
    try:
        return MATCHED_TOLERANCES[dtype]
    except KeyError:
        raise KeyError(
            f"no matched audit tolerance for dtype {dtype!r}; known: {list(MATCHED_TOLERANCES)}"
        ) from None


def tolerance_for(dtype: str) -> Tolerance:
    """The tolerance of a declared dtype; `KeyError` naming the known ones otherwise."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise KeyError(
            f"no audit tolerance for dtype {dtype!r}; known: {list(TOLERANCES)}"
        ) from None
