"""Auditing one committed leaf from what its node revealed: pure functions, no network.

    proven = prove_leaf(opening, batch=on_chain_batch, leaf_index=i)       # or raises
    inputs = check_opening(opening, proven, batches=get_batch, hidden_size)  # or raises
    result = judge(inputs.sketch, recompute(span, inputs), inputs.dtype)

1. `prove_leaf`: the reveal's batch leaf hashes must rebuild the root the node committed
   on-chain (and be as many as it committed), and the revealed leaf must be the one at the
   sampled index. The proof used later on-chain (positional, `IndexedMerkle`) is computed
   here from those hashes, never taken from the node.
2. `check_opening`: the revealed steps must be steps 0..k of the leaf's session over its span,
   each proven at its stated position under the root of its own batch (which the same node
   committed, with its on-chain leaf count); every step's hidden states must hash to its
   leaf's inputHash, the one mask (step k's: every earlier step's mask is a prefix of it) must
   be 0/1 over all the steps' positions, and every step's revealed sketch, encoded with the
   hash of that step's columns of the mask, must hash to its leaf's sketchHash (so the mask is
   the one the node computed with and committed). Anything else is a failure to reveal
   (withheld), provable on-chain because the leaf itself is proven.
3. `recompute`: the span in float32 over the steps' inputs concatenated along the tokens axis
   with step k's mask, run the way the node ran it: in chunks of positions through a KV cache
   (node.blocks' conventions make this equal the node's cached steps up to float rounding), so
   memory stays bounded for sessions of any length; step k's positions are compared.
4. `judge`: `node.sketch.compare` against the committed sketch, with the tolerance of the
   dtype the node declared (`verifier.thresholds`).

A node that declares float16 or bfloat16 also reveals every step's block states
(`node.states`); `check_opening` checks each against its step's leaf (the last block's output
hashes to its outputHash; the sketch of that output, with the hash of the other blocks'
outputs, hashes to its sketchHash) and `AuditSpans.audit` judges such a step one block at a
time in its dtype (`verifier.blockwise`) instead of steps 3-4.

A backward's leaf (`node.training`: step 1 of a stateless forward's session, its sketch of
version 4 with the exponent the reveal states) is checked the same way, its "input" being the
output gradient the node received; `AuditSpans.audit` recomputes the gradient with respect to
step 0's input in float32 (`recompute_backward`) and judges it, scaled by the committed
exponent, against `BACKWARD_TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ledger.contracts import Batch
from ledger.merkle import MerkleTree
from ledger.merkle import verify as merkle_verify
from ledger.types import Leaf
from node.blocks import Span
from node.cache import CacheManager
from node.errors import BadTensorError, SketchFormatError
from node.precisions import precision_name
from node.protocol import BACKWARD_STEP, RevealResponse
from node.sketch import FP16_MIN_NORMAL, Sketch, SketchDistance, compare, mask_hash, sketch
from node.states import commits_states
from node.states import states_hash as node_states_hash
from node.tensors import (
    DTYPE_NAMES,
    DTYPES,
    check_attention_mask,
    check_hidden_states,
    check_prompts,
    tensor_hash,
)
from verifier.blockwise import BlockAudit, judge_blocks
from verifier.errors import InvalidOpeningError
from verifier.thresholds import (
    BACKWARD_TOLERANCE,
    PROMPTS_GRAD_TOLERANCE,
    Tolerance,
    tolerance_for,
)


@dataclass(frozen=True)
class Opening:
    """What a node revealed for one sampled leaf (a full reveal, `RevealRequest.full`)."""

    response: RevealResponse
    hidden: list[torch.Tensor]  # per step: its input hidden states [batch, tokens, hidden_size]
    mask: torch.Tensor  # [batch, positions] int64: step k's mask over every step's positions
    # full: every step's committed sketch, concatenated along the tokens axis in step order
    sketch_indices: torch.Tensor | None  # [batch, positions, k] int64
    sketch_values: torch.Tensor | None  # [batch, positions, k] float16
    states: list[torch.Tensor] | None = None  # per step: [blocks, batch, tokens, hidden]
    # deep prompts [blocks, P, hidden] (step 0's) and, for a backward, their gradient
    prompts: list[torch.Tensor] | None = None

    @classmethod
    def from_frame(cls, response: RevealResponse, tensors: Sequence[torch.Tensor]) -> Opening:
        """Split a reveal frame's tensors (`RevealResponse`); `InvalidOpeningError` if there
        are not as many as the response announces."""
        if len(tensors) != response.tensor_count:
            raise InvalidOpeningError(
                f"the reveal carries {len(tensors)} tensors, its {len(response.steps)} steps "
                f"need {response.tensor_count}"
            )
        steps = len(response.steps)
        hidden, mask = list(tensors[:steps]), tensors[steps]
        if response.full:
            after = steps + 3  # block states, then prompts, one per step each
            states = list(tensors[after : after + steps]) if response.states else None
            count = response.prompt_tensors
            prompts = list(tensors[len(tensors) - count :]) if count else None
            return cls(
                response, hidden, mask, tensors[steps + 1], tensors[steps + 2], states, prompts
            )
        return cls(response, hidden, mask, None, None)


@dataclass(frozen=True)
class ProvenLeaf:
    """A committed leaf and its Merkle proof under its batch's on-chain root: what a slash needs."""

    node: str
    batch_id: int
    leaf_index: int
    leaf: Leaf
    proof: list[bytes]

    @property
    def leaf_hash(self) -> bytes:
        return self.leaf.hash()


@dataclass(frozen=True)
class CheckedInputs:
    """The revealed session inputs of a proven leaf, checked against the commitments."""

    hidden: torch.Tensor  # [batch, total tokens, hidden_size], steps 0..k concatenated
    mask: torch.Tensor  # [batch, total tokens], the last step's mask
    last_tokens: int  # tokens of step k (its positions are the last ones)
    step_tokens: tuple[int, ...]  # tokens of each step 0..k, in order (they sum to total)
    dtype: str  # the dtype the node's inputs travelled in: its declared compute dtype
    sketch: Sketch  # step k's committed sketch
    states: tuple[torch.Tensor, ...] = ()  # 16-bit: per step [blocks, batch, tokens, hidden]
    quantization: str | None = None  # the weights every step's sketch commits (node.quantize)
    hiddens: tuple[torch.Tensor, ...] = ()  # each step's input, as revealed
    # a backward's sketch exponent: step 0 is the forward's input, step 1 the output gradient
    exponent: int | None = None
    prompts: torch.Tensor | None = None  # a training forward's deep prompts [blocks, P, hidden]
    prompts_grad: torch.Tensor | None = None  # its backward's gradient of them, as revealed


def prove_leaf(opening: Opening, *, batch: Batch, leaf_index: int) -> ProvenLeaf:
    """The leaf at `leaf_index` of `batch` (as committed on-chain) with its proof, from a full
    reveal; `InvalidOpeningError` (not provable) when the reveal does not show it."""
    response = opening.response
    if not response.full:
        raise InvalidOpeningError("the node sent a reveal without the batch's leaves")
    leaves = response.batch_leaves
    if len(leaves) != batch.leaf_count:
        raise InvalidOpeningError(
            f"the reveal lists {len(leaves)} leaves, batch {batch.batch_id} has {batch.leaf_count}"
        )
    tree = MerkleTree(leaves)
    if tree.root != batch.root:
        raise InvalidOpeningError(
            f"the revealed leaves do not rebuild the root of batch {batch.batch_id}"
        )
    if not 0 <= leaf_index < len(leaves):
        raise InvalidOpeningError(f"leaf {leaf_index} is outside batch {batch.batch_id}")
    target = response.steps[-1]
    if target.batch_id != batch.batch_id or target.leaf.hash() != leaves[leaf_index]:
        raise InvalidOpeningError(
            f"the revealed leaf is not leaf {leaf_index} of batch {batch.batch_id}"
        )
    if target.leaf.model_id != batch.model_id:
        raise InvalidOpeningError("the revealed leaf is for another model than its batch")
    return ProvenLeaf(batch.node, batch.batch_id, leaf_index, target.leaf, tree.proof(leaf_index))


def check_opening(
    opening: Opening,
    proven: ProvenLeaf,
    *,
    batches: Callable[[int], Batch],
    hidden_size: int,
) -> CheckedInputs:
    """Check every revealed step and input against what the node committed (module doc, 2);
    `InvalidOpeningError` carrying `proven` (withheld, provable) on any failure."""

    def invalid(message: str) -> InvalidOpeningError:
        return InvalidOpeningError(message, proven)

    steps = opening.response.steps
    target = proven.leaf
    if [s.leaf.step for s in steps] != list(range(target.step + 1)):
        raise invalid(f"the reveal does not hold steps 0..{target.step} in order")
    if len(opening.hidden) != len(steps):
        raise invalid(f"the reveal has {len(opening.hidden)} inputs for {len(steps)} steps")
    hiddens: list[torch.Tensor] = []
    past = 0
    for step, hidden in zip(steps, opening.hidden, strict=True):
        leaf = step.leaf
        if (leaf.session_id, leaf.model_id, leaf.span_start, leaf.span_end) != (
            target.session_id,
            target.model_id,
            target.span_start,
            target.span_end,
        ):
            raise invalid(f"step {leaf.step} belongs to another session or span")
        if step is not steps[-1]:
            batch = _batch(batches, step.batch_id, invalid)
            if batch.node != proven.node or batch.model_id != leaf.model_id:
                raise invalid(f"step {leaf.step} is in batch {step.batch_id} of another node")
            if not merkle_verify(
                step.proof, batch.root, leaf.hash(), step.leaf_index, batch.leaf_count
            ):
                raise invalid(f"step {leaf.step} is not proven under batch {step.batch_id}")
        try:
            # every step in step 0's dtype (one of the hidden-state dtypes) and batch
            check_hidden_states(
                hidden,
                hidden_size=hidden_size,
                dtype=hiddens[0].dtype if hiddens else DTYPE_NAMES.keys(),
                batch=hiddens[0].shape[0] if hiddens else None,
            )
        except BadTensorError as exc:
            raise invalid(f"step {leaf.step}: {exc}") from None
        if tensor_hash(hidden) != leaf.input_hash:
            raise invalid(f"step {leaf.step}: the hidden states do not hash to its inputHash")
        batch_size, tokens = hidden.shape[0], hidden.shape[1]
        if leaf.tokens != batch_size * tokens:
            raise invalid(f"step {leaf.step}: {leaf.tokens} tokens committed, {tokens} revealed")
        hiddens.append(hidden)
        past += tokens
    # mask: [batch, past], step k's; step i's mask is its first (positions up to step i) columns
    mask = opening.mask
    try:
        check_attention_mask(mask, batch=hiddens[0].shape[0], length=past)
    except BadTensorError as exc:
        raise invalid(
            f"the mask is not 0/1 [batch, {past}] over the revealed positions: {exc}"
        ) from None
    if opening.sketch_indices is None or opening.sketch_values is None:
        raise invalid("the reveal has no committed sketches")
    exponent = opening.response.exponent
    if exponent is not None and (target.step != BACKWARD_STEP or hiddens[0].dtype != torch.float32):
        raise invalid("a backward is step 1 of a float32 forward's session")
    states = _check_states(opening, hiddens, proven, invalid)
    prompts = _check_prompts(opening, hiddens, proven, hidden_size, invalid)
    committed = _check_sketches(opening, hiddens, states, prompts, hidden_size, invalid)
    return CheckedInputs(
        hidden=torch.cat(hiddens, dim=1),
        mask=mask,
        last_tokens=hiddens[-1].shape[1],
        step_tokens=tuple(h.shape[1] for h in hiddens),
        dtype=DTYPE_NAMES[hiddens[0].dtype],
        sketch=committed,
        states=tuple(states),
        hiddens=tuple(hiddens),
        quantization=opening.response.quantization,
        exponent=exponent,
        prompts=prompts[0] if prompts else None,
        prompts_grad=prompts[1] if len(prompts) > 1 else None,
    )


def _check_prompts(
    opening: Opening,
    hiddens: list[torch.Tensor],
    proven: ProvenLeaf,
    hidden_size: int,
    invalid: Callable[[str], InvalidOpeningError],
) -> list[torch.Tensor]:
    """A session's revealed deep prompts (step 0's) and, for a backward, their gradient:
    float32 [blocks, P, hidden] with P within step 0's positions, finite; [] when the reveal
    has none (`_check_sketches` holds the node to its sketches)."""
    if opening.prompts is None:
        return []
    if hiddens[0].dtype != torch.float32:
        raise invalid("deep prompts go with a float32 session")
    blocks = proven.leaf.span_end - proven.leaf.span_start
    try:
        check_prompts(
            opening.prompts[0],
            blocks=blocks,
            hidden_size=hidden_size,
            dtype=torch.float32,
            tokens=hiddens[0].shape[1],
        )
    except BadTensorError as exc:
        raise invalid(f"the revealed prompts: {exc}") from None
    for grad in opening.prompts[1:]:
        if grad.shape != opening.prompts[0].shape or grad.dtype != torch.float32:
            raise invalid("the revealed gradient of the prompts is not of the prompts' shape")
        if not torch.isfinite(grad).all():
            raise invalid("the revealed gradient of the prompts must be finite")
    return list(opening.prompts)


def _check_states(
    opening: Opening,
    hiddens: list[torch.Tensor],
    proven: ProvenLeaf,
    invalid: Callable[[str], InvalidOpeningError],
) -> list[torch.Tensor]:
    """A 16-bit node's revealed block states, each of its step's shape and dtype, finite, its
    last block's output hashing to the step's outputHash (`_check_sketches` checks the rest
    against the sketchHash); [] for a float32 node, which has none. A 16-bit node that reveals
    none withholds what its audit needs."""
    dtype = hiddens[0].dtype
    if not commits_states(dtype):
        if opening.states:
            raise invalid(f"a {DTYPE_NAMES[dtype]} node has no block states to reveal")
        return []
    if opening.states is None or len(opening.states) != len(hiddens):
        raise invalid(f"a {DTYPE_NAMES[dtype]} node must reveal every step's block states")
    target = proven.leaf
    blocks = target.span_end - target.span_start
    for step, hidden, states in zip(opening.response.steps, hiddens, opening.states, strict=True):
        leaf = step.leaf
        if states.dtype != dtype or list(states.shape) != [blocks, *hidden.shape]:
            raise invalid(
                f"step {leaf.step}: block states of {list(states.shape)} {states.dtype}, "
                f"expected {[blocks, *hidden.shape]} {dtype}"
            )
        if not torch.isfinite(states).all():
            raise invalid(f"step {leaf.step}: block states must be finite")
        if tensor_hash(states[-1]) != leaf.output_hash:
            raise invalid(
                f"step {leaf.step}: the last block's output does not hash to its outputHash"
            )
    return list(opening.states)


def _check_sketches(
    opening: Opening,
    hiddens: list[torch.Tensor],
    states: list[torch.Tensor],
    prompts: list[torch.Tensor],
    hidden_size: int,
    invalid: Callable[[str], InvalidOpeningError],
) -> Sketch:
    """Every step's revealed sketch, re-encoded with the hash of that step's columns of the
    revealed mask (and of its block states), must hash to its leaf's sketchHash: so the mask is
    the one the node committed when it served the step, and (16-bit) the states are; a 16-bit
    step's sketch must also be the sketch of its last block's output. Returns step k's."""
    indices, values = opening.sketch_indices, opening.sketch_values
    assert indices is not None and values is not None  # checked by the caller
    quantization = opening.response.quantization  # bound: the sketches commit it (version 3)
    exponent = opening.response.exponent  # bound: the backward's sketch commits it (version 4)
    if quantization is not None and not states:
        raise invalid(f"{quantization} weights compute in 16 bits: the node has block states")
    positions = sum(h.shape[1] for h in hiddens)
    if (
        indices.ndim != 3
        or indices.shape != values.shape
        or indices.dtype != torch.int64
        or tuple(indices.shape[:2]) != (hiddens[0].shape[0], positions)
    ):
        raise invalid(
            f"the revealed sketches are not [batch, {positions}, k] int64 indices and values"
        )
    prompts_hash = tensor_hash(prompts[0]) if prompts else None  # once: every step commits it
    end = 0
    committed: Sketch | None = None
    for i, (step, hidden) in enumerate(zip(opening.response.steps, hiddens, strict=True)):
        leaf, tokens = step.leaf, hidden.shape[1]
        start, end = end, end + tokens
        masked = mask_hash(opening.mask[:, :end], tokens)
        hashed = node_states_hash(states[i]) if states else None
        # a prompted session's steps commit the prompts; a backward, them and their gradient
        backward = exponent is not None and i == len(hiddens) - 1
        prompts_grad_hash = tensor_hash(prompts[1]) if prompts and backward else None
        try:
            # re-encode canonically, then parse: the format's own checks (ranges, repeats)
            encoded = Sketch(
                hidden_size,
                indices[:, start:end].contiguous(),
                values[:, start:end].half().contiguous(),
                masked,
                hashed,
                quantization,
                exponent if i == len(hiddens) - 1 else None,
                prompts_hash,
                prompts_grad_hash,
            ).encode()
            committed = Sketch.decode(encoded)
        except (SketchFormatError, RuntimeError, TypeError, ValueError) as exc:
            raise invalid(f"step {leaf.step}: the revealed sketch is malformed: {exc}") from None
        if committed.hash() != leaf.sketch_hash:
            what = "mask or block states" if states else "mask"
            if prompts:
                what += " and deep prompts"
            if quantization is not None:
                what += f" and {quantization} weights"
            raise invalid(
                f"step {leaf.step}: the revealed sketch, with the step's {what}, does not hash "
                "to its sketchHash"
            )
        if committed.shape != (hidden.shape[0], tokens):
            raise invalid(f"step {leaf.step}: the revealed sketch does not cover its positions")
        if states:
            own = sketch(
                states[i][-1],
                committed.k,
                mask_hash=masked,
                states_hash=hashed,
                quantization=quantization,
            )
            if own.hash() != leaf.sketch_hash:
                raise invalid(
                    f"step {leaf.step}: the sketch is not the sketch of its last block's output"
                )
    assert committed is not None  # a reveal has step 0
    return committed


def _batch(
    batches: Callable[[int], Batch], batch_id: int, invalid: Callable[[str], Exception]
) -> Batch:
    try:
        return batches(batch_id)
    except LookupError:
        raise invalid(f"batch {batch_id} was never committed") from None


# Memory one recomputed chunk's attention scores may take, were they materialized
# ([batch, heads, chunk, positions] float32): it sets how many positions a chunk holds.
RECOMPUTE_SCORE_BYTES = 256 * 1024 * 1024


def recompute_chunk(
    span: Span, batch: int, positions: int, score_bytes: int = RECOMPUTE_SCORE_BYTES
) -> int:
    """Positions per chunk when recomputing `positions` positions of `batch` sequences: as many
    as keep one chunk's attention scores within `score_bytes` (at least one)."""
    per_position = batch * span.config.num_attention_heads * positions * 4
    return max(1, score_bytes // per_position)


def recompute(
    span: Span,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    last_tokens: int,
    *,
    score_bytes: int = RECOMPUTE_SCORE_BYTES,
    prompts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The span's float32 output at the last `last_tokens` positions of `hidden`
    [batch, total, hidden_size] with `mask` [batch, total]. A session whose attention fits
    `score_bytes` runs in one stateless pass; a longer one runs the way the node served it:
    chunk by chunk (`recompute_chunk` positions) through a KV cache of the session's length,
    so memory is the cache plus one chunk's attention, never [total, total]."""
    if span.dtype != torch.float32:
        raise ValueError(f"the verifier recomputes in float32, this span runs in {span.dtype}")
    hidden = hidden.to(torch.float32)
    batch, total, _ = hidden.shape
    chunk = recompute_chunk(span, batch, total, score_bytes)
    if prompts is not None:  # deep prompts: added to the first chunk's first P positions
        chunk = max(chunk, prompts.shape[1])
    if chunk >= total:
        # output: [batch, total, hidden_size] -> the last step's [batch, last_tokens, hidden_size]
        return span.forward(hidden, mask, prompts=prompts)[:, -last_tokens:]
    first_kept = total - last_tokens  # the last step's first position
    kept: list[torch.Tensor] = []
    caches = CacheManager(max_tokens=batch * total)
    with caches.open("recompute", span.kv_layout, batch=batch, max_length=total) as cache:
        for start in range(0, total, chunk):
            end = min(start + chunk, total)
            # output: [batch, end - start, hidden_size], attending to positions [0, end)
            output = span.forward(
                hidden[:, start:end],
                mask[:, :end],
                cache,
                prompts=prompts if start == 0 else None,
            )
            if end > first_kept:
                kept.append(output[:, max(0, first_kept - start) :])
    return torch.cat(kept, dim=1)  # [batch, last_tokens, hidden_size]


@dataclass(frozen=True)
class Judgement:
    """What an audit measured and whether it passed."""

    passed: bool
    dtype: str
    measured: dict[str, float]  # min_overlap, worst_rel_error, mean_rel_error, worst_abs_error
    failures: list[str] = field(default_factory=list)  # which bounds broke, in words

    def as_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, **self.measured, "failures": list(self.failures)}


def measure(distance: SketchDistance) -> dict[str, float]:
    """The numbers a judgement rests on."""
    return {
        "min_overlap": distance.min_overlap,
        "worst_rel_error": distance.worst_rel_error,
        "mean_rel_error": float(distance.mean_rel_error.mean()),
        "worst_abs_error": distance.worst_abs_error,
    }


def judge_distance(
    distance: SketchDistance, tolerance: Tolerance
) -> tuple[dict[str, float], list[str]]:
    """The measurements of `distance` and the bounds of `tolerance` they break."""
    measured = measure(distance)
    failures = []
    if measured["min_overlap"] < tolerance.min_overlap:
        failures.append(f"top-k overlap {measured['min_overlap']:.3f} < {tolerance.min_overlap}")
    if measured["worst_rel_error"] > tolerance.max_rel_error:
        failures.append(
            f"worst relative error {measured['worst_rel_error']:.3g} > {tolerance.max_rel_error}"
        )
    if measured["mean_rel_error"] > tolerance.max_mean_rel_error:
        failures.append(
            f"mean relative error {measured['mean_rel_error']:.3g} > {tolerance.max_mean_rel_error}"
        )
    return measured, failures


def judge(committed: Sketch, recomputed: torch.Tensor, dtype: str) -> Judgement:
    """Compare the float32 `recomputed` [batch, tokens, hidden_size] with the `committed`
    sketch under the tolerance of the declared `dtype`."""
    measured, failures = judge_distance(compare(committed, recomputed), tolerance_for(dtype))
    return Judgement(not failures, dtype, measured, failures)


def recompute_backward(
    span: Span, checked: CheckedInputs
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A backward leaf's gradient, scaled by its committed exponent: the span's gradient with
    respect to step 0's input (the forward's) given step 1's (the output gradient), in
    float32, [batch, tokens, hidden_size]; and with deep prompts, the gradient with respect
    to them [blocks, P, hidden_size] (unscaled), else None."""
    assert checked.exponent is not None and len(checked.hiddens) == 2  # check_opening's
    hidden, grad = checked.hiddens
    tokens = hidden.shape[1]
    # the backward's own mask columns are the forward's mask (both steps commit them)
    mask = checked.mask[:, tokens:]
    grad_input, grad_prompts = span.backward(hidden.float(), mask, grad.float(), checked.prompts)
    return torch.ldexp(grad_input, torch.tensor(checked.exponent)), grad_prompts


def prompts_grad_error(recomputed: torch.Tensor, revealed: torch.Tensor) -> float:
    """The worst |difference| between two gradients of deep prompts, relative to the largest
    |value| of the `recomputed` one (`PROMPTS_GRAD_TOLERANCE` bounds it)."""
    scale = max(float(recomputed.abs().max()), FP16_MIN_NORMAL)
    return float((recomputed - revealed.float()).abs().max()) / scale


class AuditSpans:
    """What a verifier recomputes a span with: its float32 `span`, and for every 16-bit
    precision a node declares (a dtype, maybe with quantized weights), a `BlockAudit` in that
    precision (built on first use, then kept: the verifier audits in one compute thread)."""

    def __init__(self, span: Span) -> None:
        if span.dtype != torch.float32:
            raise ValueError(f"the verifier holds its span in float32, not {span.dtype}")
        self.span = span
        self._blockwise: dict[tuple[str, str | None], BlockAudit] = {}

    def blockwise(self, dtype: str, quantization: str | None = None) -> BlockAudit:
        key = (dtype, quantization)
        if key not in self._blockwise:
            self._blockwise[key] = BlockAudit(self.span, DTYPES[dtype], quantization)
        return self._blockwise[key]

    def audit(self, checked: CheckedInputs) -> Judgement:
        """Recompute and judge one checked leaf: a float32 node in one float32 pass
        (`recompute`, `judge`); a 16-bit node block by block from its states
        (`verifier.blockwise`)."""
        if checked.exponent is not None:
            recomputed, grad_prompts = recompute_backward(self.span, checked)
            measured, failures = judge_distance(
                compare(checked.sketch, recomputed), BACKWARD_TOLERANCE
            )
            if grad_prompts is not None:
                assert checked.prompts_grad is not None  # check_opening's
                error = prompts_grad_error(grad_prompts, checked.prompts_grad)
                measured["prompts_grad_error"] = error
                if error > PROMPTS_GRAD_TOLERANCE:
                    failures.append(
                        f"prompts' gradient error {error:.3g} > {PROMPTS_GRAD_TOLERANCE}"
                    )
            return Judgement(not failures, "float32 backward", measured, failures)
        if not checked.states:
            recomputed = recompute(
                self.span,
                checked.hidden,
                checked.mask,
                checked.last_tokens,
                prompts=checked.prompts,
            )
            return judge(checked.sketch, recomputed, checked.dtype)
        measures = self.blockwise(checked.dtype, checked.quantization).measure(
            checked.hiddens, checked.states, checked.mask
        )
        precision = precision_name(checked.dtype, checked.quantization)
        measured, failures = judge_blocks(measures, precision)
        return Judgement(not failures, precision, measured, failures)
