"""TOPLOC-like sketches: a small fingerprint of output hidden states that survives honest
numerical variation (other hardware, thread counts, batch composition) but not cheating.

For every token position the sketch keeps the `k` hidden-state components of largest
magnitude: their indices and their values. A node commits `keccak256(encode(sketch))` as the
leaf's `sketchHash`; a verifier re-runs the span and `compare`s the revealed sketch with what
it computed. `compare` only measures (index overlap, value errors per position and worst
cases); the verifier calibrates the pass/fail thresholds.

Values are stored as IEEE float16: every bfloat16 value in float16's normal range is
represented exactly (bfloat16 has 8 significant bits, float16 11), so sketches of bf16 nodes
lose nothing, and fp32 values keep a relative precision of 2^-11 (about 5e-4), five times finer
than a bfloat16 copy would — small cheats (noise of 1% of the hidden std) stay visible.
Magnitudes beyond float16's 65504 are saturated to +-65504, on both sides of a comparison;
below its smallest normal value, 2^-14, float16 keeps a fixed absolute step of 2^-24.

How `compare` measures a position, always on the verifier's own float32 recomputation `r`:

- overlap: the share of committed indices among r's top-k; an index just outside counts when
  its |r| is within `NEAR_TIE` (2^-11) of the k-th largest |r| (or of the position's floor);
- value errors: |r - committed| at the committed indices (r saturated like the sketch),
  relative to max(|committed|, floor), where floor = max(2^-14, 2^-11 x the position's
  largest |r|) (`FP16_MIN_NORMAL`, `POSITION_SCALE_SHARE`).

Why an honest node cannot fail on the inputs it accepts (node.sessions.check_hidden refuses
only |values| beyond 65504): its sketch differs from an exact recomputation by float16's
rounding plus float32 rounding of the terms each value was computed from. Float16 rounds to
2^-11 relative in its normal range and to 2^-25 absolute below it, which the 2^-14 floor turns
back into at most 2^-11 relative, so tiny inputs (down to zero and float32 subnormals, whose
outputs fall below float16's normal range) cost nothing; a small component left by
cancelling large terms (which a client can arrange from the public weights) carries their
rounding, and is measured against its position's largest value, which has their scale;
values at and beyond 65504 saturate on both sides. The float32 bounds (1.2e-3 worst, 6e-4
mean, `verifier.thresholds`) sit above 2^-11 = 4.9e-4. Real hidden states lie far above both
floors (SmolLM2's 8th largest component of a position stays above 1/128 of its largest), so
what catches cheats there is unchanged. The limit: a position whose every component, its
largest included, cancels is not covered (docs/security.md).

Canonical encoding (all little-endian), the bytes whose keccak256 is the sketchHash:

    offset  size            field
    0       1   u8          version (= 1)
    1       2   u16         k, components per position
    3       4   u32         batch
    7       4   u32         tokens
    11      4   u32         hidden_size
    15      4*P*k u32       indices [batch][tokens][k], rank order: |value| descending,
                            equal magnitudes by ascending index
    15+4Pk  2*P*k f16       values at those indices, same order
    (P = batch * tokens)

Version 2, what nodes commit, appends two fields, so that the leaf's sketchHash also commits
the attention mask the step was computed with and, for a node serving in 16 bits, every block's
output of the step but the last (`node.states`):

    15+6Pk  32              mask hash: keccak256 of the step's own mask columns, [batch,
                            tokens] as bytes 0/1, row-major (`mask_hash`)
    47+6Pk  32              states hash: keccak256 of those outputs' bytes
                            (`node.states.states_hash`), or 32 zero bytes (a float32 node)

Version 3, what a node serving quantized weights commits (`node.quantize`), appends one more
byte, so that every leaf says which precision it was served in:

    79+6Pk  1   u8          quantization: 1 int8, 2 nf4 (`QUANTIZATION_CODES`)

Version 4, what a node commits for a backward (`node.training`): the sketch of the gradient
it sent, scaled by a power of two so that its largest magnitude lies in [2^14, 2^15) (gradients
are small: unscaled, float16 would flush them), with version 2's fields (32 zero bytes for the
states) and the exponent, so that every leaf says whether it is a forward or a backward:

    79+6Pk  1   i8          the exponent e: the values are those of gradient x 2^e

Versions 5 and 6, what a float32 node commits for a training call that carried deep prompts
(`node.blocks.Span` adds them before every block): version 2's fields then the prompts' hash,
and for a backward version 4's fields then the prompts' hash and their gradient's, so that a
node cannot reveal other prompts than it computed with, nor another gradient than it sent:

    79+6Pk  32              (5) prompts hash: `tensor_hash` of the prompts [blocks, P, hidden]
    80+6Pk  32 + 32         (6) prompts hash, then the hash of their gradient (same shape)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
from eth_utils import keccak

from node.errors import InvalidInputError, SketchFormatError
from node.precisions import QUANTIZATION_CODES

SKETCH_TOP_K = 8  # components kept per token position
SKETCH_VERSION = 1
COMMITTED_SKETCH_VERSION = 2  # version 1 plus the mask's and the block states' hashes
QUANTIZED_SKETCH_VERSION = 3  # version 2 plus the quantization's code
BACKWARD_SKETCH_VERSION = 4  # version 2 plus the gradient's exponent: a backward's sketch
PROMPTED_SKETCH_VERSION = 5  # version 2 plus the hash of the deep prompts a forward added
PROMPTED_BACKWARD_SKETCH_VERSION = 6  # version 4 plus the prompts' and their gradient's hashes
# A backward's gradient is scaled so that its largest magnitude lies in [2^14, 2^15)
GRADIENT_TOP_EXPONENT = 14
_QUANTIZATIONS = {code: name for name, code in QUANTIZATION_CODES.items()}
_NO_STATES = bytes(32)  # a version-2 sketch of a node that commits no block states
FP16_MAX = 65504.0  # largest finite float16; sketch values saturate here
_HEADER = struct.Struct("<BHIII")  # version, k, batch, tokens, hidden_size
# Below float16's smallest normal value a sketch value is stored to a fixed absolute step of
# 2^-24 (the subnormal range), so an exact recomputation may differ from it by 2^-25: measured
# against at least 2^-14 that is float16's own relative rounding 2^-11, never more. (A floor far
# below it let a client that sends tiny hidden states, ~1e-12, get an honest node slashed.)
FP16_MIN_NORMAL = 2.0**-14  # 6.1e-5, the smallest normal float16: relative errors' floor
# Errors are also measured against this share of the largest |value| of their position in the
# recomputation: a component that is the small difference of large terms (a client can cancel
# all but one component of a position) carries float32 rounding of those terms, not of itself.
# Real hidden states never reach it: SmolLM2's positions keep their 8th largest component above
# 1/128 of their largest, so it changes nothing there (docs/security.md).
POSITION_SCALE_SHARE = 2.0**-11
# A committed index the recomputation ranks just outside its top-k still counts as found when
# its |value| is within this share of the k-th largest (or of the floors above): a near-tie
# that float rounding, or the resolution the sketch records values at, cannot order.
NEAR_TIE = 2.0**-11


@dataclass(frozen=True)
class Sketch:
    """The top-k components of each position of a [batch, tokens, hidden_size] tensor."""

    hidden_size: int
    indices: torch.Tensor  # [batch, tokens, k] int64, rank order
    values: torch.Tensor  # [batch, tokens, k] float16, the components at `indices`
    mask_hash: bytes | None = None  # version 2: `mask_hash` of the step's mask columns
    states_hash: bytes | None = None  # version 2: keccak256 of the step's block states
    quantization: str | None = None  # version 3: the node's quantized weights (node.quantize)
    exponent: int | None = None  # version 4: a backward's; the values are gradient x 2^exponent
    prompts_hash: bytes | None = None  # versions 5, 6: `tensor_hash` of the deep prompts
    prompts_grad_hash: bytes | None = None  # version 6: `tensor_hash` of their gradient

    @property
    def k(self) -> int:
        return self.indices.shape[-1]

    @property
    def shape(self) -> tuple[int, int]:
        """(batch, tokens) of the sketched tensor."""
        return (self.indices.shape[0], self.indices.shape[1])

    def encode(self) -> bytes:
        """The canonical bytes (module doc)."""
        batch, tokens = self.shape
        if self.mask_hash is None and self.states_hash is not None:
            raise SketchFormatError("a sketch that commits block states commits its mask too")
        if self.quantization is not None and self.states_hash is None:
            raise SketchFormatError("a sketch of quantized weights commits block states too")
        if self.mask_hash is None:
            version, trailer = SKETCH_VERSION, b""
        else:
            version = COMMITTED_SKETCH_VERSION
            trailer = self.mask_hash + (self.states_hash or _NO_STATES)
        if self.quantization is not None:
            version = QUANTIZED_SKETCH_VERSION
            trailer += bytes([QUANTIZATION_CODES[self.quantization]])
        if self.exponent is not None:
            if self.mask_hash is None or self.states_hash is not None or self.quantization:
                raise SketchFormatError("a backward's sketch commits its mask and nothing else")
            version = BACKWARD_SKETCH_VERSION
            trailer += struct.pack("<b", self.exponent)
        if self.prompts_hash is not None:
            if self.mask_hash is None or self.states_hash is not None:
                raise SketchFormatError("a prompted sketch commits its mask and no block states")
            if (self.exponent is None) != (self.prompts_grad_hash is None):
                raise SketchFormatError(
                    "a prompted backward's sketch commits the prompts' gradient"
                )
            if self.exponent is None:
                version, trailer = PROMPTED_SKETCH_VERSION, trailer + self.prompts_hash
            else:
                version = PROMPTED_BACKWARD_SKETCH_VERSION
                assert self.prompts_grad_hash is not None  # checked above
                trailer += self.prompts_hash + self.prompts_grad_hash
        elif self.prompts_grad_hash is not None:
            raise SketchFormatError("a sketch commits a prompts' gradient only with the prompts")
        header = _HEADER.pack(version, self.k, batch, tokens, self.hidden_size)
        indices = self.indices.numpy().astype("<u4").tobytes()
        values = self.values.numpy().astype("<f2").tobytes()
        return header + indices + values + trailer

    def hash(self) -> bytes:
        """keccak256 of the encoding: the leaf's sketchHash."""
        return keccak(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> Sketch:
        """Parse canonical bytes; `SketchFormatError` for anything that is not a valid sketch
        (wrong version or length, indices out of range or repeated, non-finite values)."""
        if len(data) < _HEADER.size:
            raise SketchFormatError(f"sketch of {len(data)} bytes is shorter than its header")
        version, k, batch, tokens, hidden_size = _HEADER.unpack_from(data)
        trailer = {
            SKETCH_VERSION: 0,
            COMMITTED_SKETCH_VERSION: 64,
            QUANTIZED_SKETCH_VERSION: 65,
            BACKWARD_SKETCH_VERSION: 65,
            PROMPTED_SKETCH_VERSION: 96,
            PROMPTED_BACKWARD_SKETCH_VERSION: 129,
        }
        if version not in trailer:
            raise SketchFormatError(
                f"sketch version {version}, expected one of {', '.join(map(str, trailer))}"
            )
        trailer_size = trailer[version]
        if not 1 <= k <= hidden_size:
            raise SketchFormatError(f"sketch k={k} outside [1, hidden_size={hidden_size}]")
        count = batch * tokens * k
        expected = _HEADER.size + 6 * count + trailer_size
        if len(data) != expected:
            raise SketchFormatError(
                f"sketch of {len(data)} bytes, expected {expected} for "
                f"batch={batch}, tokens={tokens}, k={k}"
            )
        body = memoryview(data)[_HEADER.size :]
        indices = np.frombuffer(body[: 4 * count], dtype="<u4").astype(np.int64)
        values = np.frombuffer(body[4 * count : 6 * count], dtype="<f2").astype(np.float16)
        mask_hash = bytes(body[6 * count : 6 * count + 32]) if trailer_size else None
        states_hash = bytes(body[6 * count + 32 : 6 * count + 64]) if trailer_size else None
        if states_hash == _NO_STATES:
            states_hash = None
        quantization = None
        if version == QUANTIZED_SKETCH_VERSION:
            quantization = _QUANTIZATIONS.get(body[6 * count + 64])
            if quantization is None or states_hash is None:
                raise SketchFormatError(
                    f"a version-{version} sketch needs block states and a quantization code "
                    f"({', '.join(map(str, _QUANTIZATIONS))}), got code {body[6 * count + 64]}"
                )
        exponent = None
        if version in (BACKWARD_SKETCH_VERSION, PROMPTED_BACKWARD_SKETCH_VERSION):
            (exponent,) = struct.unpack_from("<b", body, 6 * count + 64)
        prompts_hash = prompts_grad_hash = None
        if version == PROMPTED_SKETCH_VERSION:
            prompts_hash = bytes(body[6 * count + 64 : 6 * count + 96])
        if version == PROMPTED_BACKWARD_SKETCH_VERSION:
            prompts_hash = bytes(body[6 * count + 65 : 6 * count + 97])
            prompts_grad_hash = bytes(body[6 * count + 97 : 6 * count + 129])
        if version >= BACKWARD_SKETCH_VERSION and states_hash is not None:
            raise SketchFormatError(f"a version-{version} sketch commits no block states")
        indices_t = torch.from_numpy(indices.reshape(batch, tokens, k))
        values_t = torch.from_numpy(values.reshape(batch, tokens, k).copy())
        if count and int(indices_t.max()) >= hidden_size:
            raise SketchFormatError(f"sketch index out of range for hidden_size={hidden_size}")
        if count and (indices_t.sort(-1).values.diff(dim=-1) == 0).any():
            raise SketchFormatError("sketch repeats an index within one position")
        if not torch.isfinite(values_t).all():
            raise SketchFormatError("sketch values must be finite")
        return cls(
            hidden_size,
            indices_t,
            values_t,
            mask_hash,
            states_hash,
            quantization,
            exponent,
            prompts_hash,
            prompts_grad_hash,
        )


def _top_k_indices(hidden: torch.Tensor, k: int) -> torch.Tensor:
    # hidden: [batch, tokens, hidden_size] -> [batch, tokens, k], ties by ascending index
    magnitude = hidden.detach().float().abs()
    order = torch.sort(magnitude, dim=-1, descending=True, stable=True).indices
    return order[..., :k]


def _check_hidden(hidden: torch.Tensor) -> None:
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
        shape = list(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise InvalidInputError(f"sketches take [batch, tokens, hidden_size] tensors, got {shape}")
    if not hidden.dtype.is_floating_point:
        raise InvalidInputError(f"sketches take floating-point tensors, got {hidden.dtype}")
    if not torch.isfinite(hidden).all():
        raise InvalidInputError("cannot sketch hidden states with NaN or infinity")


def sketch(
    hidden: torch.Tensor,
    k: int = SKETCH_TOP_K,
    *,
    mask_hash: bytes | None = None,
    states_hash: bytes | None = None,
    quantization: str | None = None,
    prompts_hash: bytes | None = None,
) -> Sketch:
    """The sketch of `hidden` [batch, tokens, hidden_size] (any float dtype); with `mask_hash`
    (and a 16-bit node's `states_hash`, `node.states.states_hash`), the version-2 sketch a
    node commits; with a `quantization` too, a quantized node's version 3; with the
    `prompts_hash` of the deep prompts a float32 forward added, version 5."""
    for name, value in (("mask", mask_hash), ("states", states_hash), ("prompts", prompts_hash)):
        if value is not None and len(value) != 32:
            raise InvalidInputError(f"a {name} hash has 32 bytes, got {len(value)}")
    if states_hash is not None and mask_hash is None:
        raise InvalidInputError("a sketch that commits block states commits its mask too")
    if prompts_hash is not None and (mask_hash is None or states_hash is not None):
        raise InvalidInputError("a prompted sketch commits its mask and no block states")
    if quantization is not None and (states_hash is None or quantization not in QUANTIZATION_CODES):
        raise InvalidInputError(
            f"a sketch of {quantization!r} weights needs block states and one of "
            f"{', '.join(QUANTIZATION_CODES)}"
        )
    _check_hidden(hidden)
    if not 1 <= k <= hidden.shape[-1]:
        raise InvalidInputError(f"k={k} outside [1, hidden_size={hidden.shape[-1]}]")
    hidden = hidden.detach().cpu()
    indices = _top_k_indices(hidden, k)
    values = hidden.float().gather(-1, indices).clamp(-FP16_MAX, FP16_MAX).half()
    return Sketch(
        hidden.shape[-1],
        indices,
        values,
        mask_hash,
        states_hash,
        quantization,
        prompts_hash=prompts_hash,
    )


def gradient_exponent(gradient: torch.Tensor) -> int:
    """The power of two a backward's sketch scales `gradient` by: its largest magnitude then
    lies in [2^14, 2^15) (0 for an all-zero gradient), within an i8."""
    largest = float(gradient.detach().abs().max()) if gradient.numel() else 0.0
    if largest == 0.0:
        return 0
    return max(-128, min(127, GRADIENT_TOP_EXPONENT - math.frexp(largest)[1] + 1))


def backward_sketch(
    gradient: torch.Tensor,
    *,
    mask_hash: bytes,
    k: int = SKETCH_TOP_K,
    exponent: int | None = None,
    prompts_hash: bytes | None = None,
    prompts_grad_hash: bytes | None = None,
) -> Sketch:
    """The version-4 sketch a node commits for a backward that sent `gradient` [batch,
    tokens, hidden_size] (float32): the sketch of gradient x 2^exponent (`gradient_exponent`
    unless given; scaling by a power of two is exact). With the deep prompts' hash and their
    gradient's (`tensor_hash` of both), version 6."""
    if (prompts_hash is None) != (prompts_grad_hash is None):
        raise InvalidInputError("a prompted backward commits the prompts and their gradient")
    if exponent is None:
        exponent = gradient_exponent(gradient)
    if not -128 <= exponent <= 127:
        raise InvalidInputError(f"a gradient exponent fits an i8, got {exponent}")
    scaled = sketch(
        torch.ldexp(gradient.detach().float(), torch.tensor(exponent)), k, mask_hash=mask_hash
    )
    return Sketch(
        scaled.hidden_size,
        scaled.indices,
        scaled.values,
        mask_hash,
        exponent=exponent,
        prompts_hash=prompts_hash,
        prompts_grad_hash=prompts_grad_hash,
    )


def mask_hash(mask: torch.Tensor, tokens: int) -> bytes:
    """keccak256 of a step's own attention-mask columns: the last `tokens` columns of `mask`
    ([batch, past + tokens], 0/1 of any integer or bool dtype) as bytes 0/1, row-major. What
    a version-2 sketch commits, so that a node cannot reveal another mask than it served."""
    if mask.ndim != 2 or not 0 < tokens <= mask.shape[1]:
        raise InvalidInputError(
            f"a mask [batch, past + tokens] with at least {tokens} columns, got {list(mask.shape)}"
        )
    columns = (mask[:, mask.shape[1] - tokens :] != 0).to(torch.uint8).contiguous().cpu()
    return keccak(columns.numpy().tobytes())


@dataclass(frozen=True)
class SketchDistance:
    """How far recomputed hidden states are from a committed sketch, per position and worst.

    Per position ([batch, tokens] float32 tensors):
    - `overlap`: the fraction of committed indices that are among the recomputed top-k, up to
      near-ties (module doc);
    - `max_abs_error` / `mean_abs_error`: |recomputed - committed| over the committed indices;
    - `max_rel_error` / `mean_rel_error`: the same divided by max(|committed|, the position's
      floor): 2^-14, or 2^-11 of the position's largest recomputed |value| if more.
    """

    overlap: torch.Tensor
    max_abs_error: torch.Tensor
    mean_abs_error: torch.Tensor
    max_rel_error: torch.Tensor
    mean_rel_error: torch.Tensor

    @property
    def min_overlap(self) -> float:
        return float(self.overlap.min())

    @property
    def mean_overlap(self) -> float:
        return float(self.overlap.mean())

    @property
    def worst_abs_error(self) -> float:
        return float(self.max_abs_error.max())

    @property
    def worst_rel_error(self) -> float:
        return float(self.max_rel_error.max())


def compare(committed: Sketch, recomputed: torch.Tensor) -> SketchDistance:
    """Measure `recomputed` [batch, tokens, hidden_size] against a `committed` sketch.
    Raises `SketchFormatError` when the shapes do not match."""
    _check_hidden(recomputed)
    batch, tokens, hidden_size = recomputed.shape
    if (batch, tokens) != committed.shape or hidden_size != committed.hidden_size:
        raise SketchFormatError(
            f"sketch of [{committed.shape[0]}, {committed.shape[1]}, {committed.hidden_size}] "
            f"cannot be compared with hidden states of {list(recomputed.shape)}"
        )
    recomputed = recomputed.detach().cpu().float()
    # magnitude: [batch, tokens, hidden_size], as the sketch sees it (saturated)
    magnitude = recomputed.abs().clamp_max(FP16_MAX)
    # floor: [batch, tokens, 1], the least each error of a position is measured against; it
    # comes from the verifier's own recomputation, never from what the node committed
    floor = (magnitude.amax(-1, keepdim=True) * POSITION_SCALE_SHARE).clamp_min(FP16_MIN_NORMAL)
    own_top = _top_k_indices(recomputed, committed.k)  # [batch, tokens, k]
    kth = magnitude.gather(-1, own_top[..., -1:])  # [batch, tokens, 1], the k-th largest
    # a committed index is found when it ranks in the top-k up to a near-tie (`NEAR_TIE`)
    found = magnitude.gather(-1, committed.indices) >= kth - NEAR_TIE * torch.maximum(kth, floor)
    overlap = found.float().mean(-1)
    actual = recomputed.gather(-1, committed.indices).clamp(-FP16_MAX, FP16_MAX)
    expected = committed.values.float()
    abs_error = (actual - expected).abs()
    rel_error = abs_error / torch.maximum(expected.abs(), floor)
    return SketchDistance(
        overlap=overlap,
        max_abs_error=abs_error.amax(-1),
        mean_abs_error=abs_error.mean(-1),
        max_rel_error=rel_error.amax(-1),
        mean_rel_error=rel_error.mean(-1),
    )
