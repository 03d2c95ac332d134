"""Audits of nodes that declare a 16-bit dtype, in process on a tiny model: such a node commits
every block's output (`node.states`) and the verifier recomputes it block by block in its
dtype (`verifier.blockwise`). Honest variations never fail; every cheat fails on at least 99%
of its leaves, the small ones (1% noise, 1% weights, int8 weights, float16 compute behind
bfloat16) included; a reveal whose states do not match the leaves is a withheld one."""

from __future__ import annotations

import os

import pytest
import torch

from ledger.contracts import Batch
from ledger.merkle import MerkleTree
from ledger.types import Address, BatchId, Leaf, ModelId, model_id
from node.blocks import ClientHead, Span, load_client_head, load_span
from node.faults import FaultMode, quantized_int8, reinitialised_block
from node.protocol import RevealedStep, RevealResponse
from node.sketch import mask_hash, sketch
from node.states import states_hash
from node.tensors import tensor_hash
from stakeswarm.tiny_models import make_tiny_model
from verifier.audit import AuditSpans, Opening, check_opening, prove_leaf
from verifier.blockwise import (
    BlockAudit,
    block_of,
    matched_spans,
    precision_ratio,
    run_steps,
    span_in,
)
from verifier.calibration import (
    SimulatedNode,
    SpanCheat,
    Variation,
    cheats,
    honest_16bit,
    run_variation,
    step_bounds,
)
from verifier.errors import InvalidOpeningError
from verifier.thresholds import BLOCK_TOLERANCES, TOLERANCES

NODE = Address("0x90F79bf6EB2c4F870365E785982E1f101E93b906")
MODEL = model_id("tiny-llama")
SIXTEEN_BIT = ("bfloat16", "float16")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Span, ClientHead]:
    path = make_tiny_model(tmp_path_factory.mktemp("audit16"), "llama", 6)
    return load_span(path, 0, 3), load_client_head(path)


@pytest.mark.parametrize("declared", SIXTEEN_BIT)
def test_honest_16bit_nodes_never_fail_a_blockwise_audit(
    tiny: tuple[Span, ClientHead], declared: str
) -> None:
    """Threads, batch composition, eager attention, other matmul kernels, sdpa's math backend."""
    span, head = tiny
    audited = 0
    for seed, variation in enumerate(honest_16bit(declared)):
        rates = run_variation(span, head, variation, sessions=5, seed=200 + seed, matched=True)
        assert rates.failed == 0, (variation.name, rates.worst)
        audited += rates.leaves
    assert audited >= 200


@pytest.mark.parametrize(
    "variation", [v for d in SIXTEEN_BIT for v in cheats(d)], ids=lambda v: v.name
)
def test_every_16bit_cheat_fails_a_blockwise_audit(
    tiny: tuple[Span, ClientHead], variation: Variation
) -> None:
    """1% noise, 1% weights, int8 weights and float16 compute included: the cheats one float32
    pass (and a dtype-matched recompute of the whole span) let through."""
    span, head = tiny
    rates = run_variation(span, head, variation, sessions=12, seed=11, matched=True)
    assert rates.cheated >= 50
    assert rates.detection_rate >= 0.99, rates.worst
    assert rates.false_positive_rate == 0


def test_the_float32_way_misses_small_16bit_cheats(tiny: tuple[Span, ClientHead]) -> None:
    """Why 16-bit nodes commit block states: judged on its sketch after one float32 pass, 1%
    noise behind bfloat16 hides in the node's own rounding."""
    span, head = tiny
    noise = Variation("noise", "bfloat16", FaultMode.NOISE)
    assert run_variation(span, head, noise, sessions=3).detection_rate < 0.5
    assert run_variation(span, head, noise, sessions=3, matched=True).detection_rate == 1.0
    assert {p.partition("+")[0] for p in BLOCK_TOLERANCES} == set(SIXTEEN_BIT) < set(TOLERANCES)


@pytest.mark.parametrize("declared", SIXTEEN_BIT)
def test_a_block_recomputed_from_the_nodes_states_is_bit_for_bit(
    tiny: tuple[Span, ClientHead], declared: str
) -> None:
    span, head = tiny
    node = SimulatedNode(span, Variation("honest", declared, threads=2, strangers=2))
    generator = torch.Generator().manual_seed(4)
    hidden = head.embed(torch.randint(3, 500, (2, 9), generator=generator))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    served = node.serve(hidden, mask, prompt=5)
    assert len(served.inputs) == len(step_bounds(5, 9)) == 5
    assert served.states is not None
    assert [list(s.shape) for s in served.states] == [[3, 2, 5, 64]] + [[3, 2, 1, 64]] * 4
    assert torch.equal(served.states[-1][-1], served.outputs[-1])  # the last block's: sent
    own = matched_spans(span, node.dtype)[0]
    inputs = [s[0] for s in served.states]  # block 1's inputs: block 0's outputs
    recomputed = run_steps(block_of(own, 1), inputs, served.inputs[-1][1])
    assert recomputed.dtype == node.dtype
    assert torch.equal(recomputed, served.states[-1][1])  # [2, 1, 64]
    measures = BlockAudit(span, node.dtype).measure(
        [h for h, _ in served.inputs], served.states, served.inputs[-1][1]
    )
    assert [(m.block, m.error, m.position_error, m.ulp_share) for m in measures] == [
        (0, 0.0, 0.0, 0.0),
        (1, 0.0, 0.0, 0.0),
        (2, 0.0, 0.0, 0.0),
    ]
    assert precision_ratio(measures) == 0.0


def test_block_audits_try_sdpa_eager_and_sdpas_math_backend(
    tiny: tuple[Span, ClientHead],
) -> None:
    span, _ = tiny
    audit = BlockAudit(span, torch.bfloat16)
    assert [w.name for w in audit.ways] == ["sdpa", "eager", "sdpa, math backend"]
    assert all(w.span.dtype == torch.bfloat16 for w in audit.ways)
    assert all(p.dtype == torch.bfloat16 for w in audit.ways for p in w.span.layers.parameters())
    assert span.config._attn_implementation == "sdpa"  # the verifier's own span is unchanged
    assert all(p.dtype == torch.float32 for p in span.layers.parameters())
    assert span_in(span, torch.float32) is span
    hidden = torch.randn(1, 6, 64).bfloat16()  # [batch, tokens, hidden]
    sdpa, eager = (w.span.forward(hidden) for w in audit.ways[:2])
    assert not torch.equal(sdpa, eager)  # eager rounds the attention scores to bfloat16
    torch.testing.assert_close(sdpa.float(), eager.float(), atol=0.1, rtol=0.05)


def test_calibration_cheats_change_what_is_served(tiny: tuple[Span, ClientHead]) -> None:
    span, _ = tiny
    int8 = quantized_int8(span)
    weight = int8.layers[0].mlp.up_proj.weight  # [intermediate, hidden]
    levels = weight / (weight.abs().amax(dim=1, keepdim=True) / 127)
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert not torch.equal(weight, span.layers[0].mlp.up_proj.weight)
    other = reinitialised_block(span)  # the middle block of three
    changed = [not torch.equal(a.mlp.down_proj.weight, b.mlp.down_proj.weight)
               for a, b in zip(span.layers, other.layers, strict=True)]  # fmt: skip
    assert changed == [False, True, False]
    assert {v.fault for v in cheats("bfloat16")} >= set(SpanCheat) - {SpanCheat.NF4_WEIGHTS}
    assert SpanCheat.FLOAT16_COMPUTE not in {v.fault for v in cheats("float16")}
    # behind quantized weights: no int8-behind-bfloat16 cheat, nf4 behind a declared int8
    int8_cheats = {v.fault for v in cheats("bfloat16", "int8")}
    assert SpanCheat.NF4_WEIGHTS in int8_cheats and SpanCheat.INT8_WEIGHTS not in int8_cheats
    assert SpanCheat.NF4_WEIGHTS not in {v.fault for v in cheats("bfloat16", "nf4")}


def _served_opening(
    span: Span,
    head: ClientHead,
    variation: Variation,
    *,
    reveal_states: bool = True,
    revealed_quantization: str | None = "declared",
) -> tuple[Opening, Batch, list[torch.Tensor]]:
    """A node serves one session (prefill + 3 decode steps) in its declared precision and
    commits its leaves (with block states and its quantization, as `node.commits` does) in one
    batch; the full reveal of step 3 (saying `revealed_quantization`: by default the declared
    one), and the states it carries."""
    node = SimulatedNode(span, variation, seed=3)
    generator = torch.Generator().manual_seed(3)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = 0
    served = node.serve(
        head.embed(torch.randint(3, 500, (2, 9), generator=generator)), mask, prompt=6
    )
    assert served.states is not None
    session = os.urandom(32)
    sketches = [
        sketch(out, mask_hash=mask_hash(step_mask, hidden.shape[1]),
               states_hash=states_hash(states), quantization=variation.quantization)
        for (hidden, step_mask), out, states in zip(
            served.inputs, served.outputs, served.states, strict=True)
    ]  # fmt: skip
    leaves = [
        Leaf(session, MODEL, 0, 3, step, hidden.shape[0] * hidden.shape[1], tensor_hash(hidden),
             tensor_hash(out), committed.hash(), 1_767_225_600 + step)
        for step, ((hidden, _), out, committed) in enumerate(
            zip(served.inputs, served.outputs, sketches, strict=True))
    ]  # fmt: skip
    hashes = [leaf.hash() for leaf in leaves]
    tree = MerkleTree(hashes)
    batch = Batch(BatchId(5), NODE, ModelId(MODEL), tree.root, len(hashes), 1_000)
    steps = [RevealedStep(leaf, 5, i, tree.proof(i)) for i, leaf in enumerate(leaves)]
    states = [s.clone() for s in served.states]
    if revealed_quantization == "declared":
        revealed_quantization = variation.quantization
    opening = Opening(
        RevealResponse(
            steps,
            full=True,
            batch_leaves=hashes,
            states=reveal_states,
            quantization=revealed_quantization,
        ),
        [hidden for hidden, _ in served.inputs],
        served.inputs[-1][1],
        torch.cat([committed.indices for committed in sketches], dim=1),
        torch.cat([committed.values for committed in sketches], dim=1),
        states if reveal_states else None,
    )
    return opening, batch, states


@pytest.mark.parametrize(
    "variation, passes",
    [
        (Variation("honest", "bfloat16", threads=2), True),
        (Variation("honest, eager", "bfloat16", attention="eager"), True),
        (Variation("honest", "float16", strangers=2), True),
        (Variation("noise", "bfloat16", FaultMode.NOISE), False),
        (Variation("int8 weights", "bfloat16", SpanCheat.INT8_WEIGHTS), False),
        (Variation("float16 compute", "bfloat16", SpanCheat.FLOAT16_COMPUTE), False),
        (Variation("skip-block", "float16", FaultMode.SKIP_BLOCK), False),
        (Variation("honest", "bfloat16", threads=2, quantization="int8"), True),
        (Variation("honest", "bfloat16", strangers=2, quantization="nf4"), True),
        (Variation("honest", "float16", attention="eager", quantization="int8"), True),
        (Variation("noise", "bfloat16", FaultMode.NOISE, quantization="int8"), False),
        (Variation("nf4 weights", "bfloat16", SpanCheat.NF4_WEIGHTS, quantization="int8"), False),
        (Variation("skip-block", "float16", FaultMode.SKIP_BLOCK, quantization="nf4"), False),
    ],
    ids=lambda v: v.name if isinstance(v, Variation) else str(v),
)
def test_a_16bit_reveal_is_audited_block_by_block(
    tiny: tuple[Span, ClientHead], variation: Variation, passes: bool
) -> None:
    span, head = tiny
    opening, batch, _ = _served_opening(span, head, variation)
    proven = prove_leaf(opening, batch=batch, leaf_index=3)
    checked = check_opening(opening, proven, batches=lambda _: batch, hidden_size=64)
    assert checked.dtype == variation.declared and checked.step_tokens == (6, 1, 1, 1)
    assert checked.quantization == variation.quantization
    assert [list(s.shape) for s in checked.states] == [[3, 2, 6, 64]] + [[3, 2, 1, 64]] * 3
    judgement = AuditSpans(span).audit(checked)
    assert judgement.passed is passes, judgement.as_json()
    assert judgement.dtype == variation.precision  # bfloat16, bfloat16+int8
    assert set(judgement.measured) == {
        "ulp_share",
        "worst_block",
        "block_error",
        "position_error",
        "precision_ratio",
    }
    if passes and variation.attention == "":
        assert judgement.measured["block_error"] == 0  # the same CPU: bit for bit
        assert judgement.measured["ulp_share"] == 0
    if not passes:
        assert any(f.startswith("block ") for f in judgement.failures), judgement.failures


def test_a_16bit_reveal_without_its_states_is_withheld(tiny: tuple[Span, ClientHead]) -> None:
    span, head = tiny
    opening, batch, _ = _served_opening(
        span, head, Variation("honest", "bfloat16"), reveal_states=False
    )
    proven = prove_leaf(opening, batch=batch, leaf_index=3)
    with pytest.raises(InvalidOpeningError, match="must reveal every step's block states"):
        check_opening(opening, proven, batches=lambda _: batch, hidden_size=64)


@pytest.mark.parametrize("step", [1, 3])
def test_16bit_states_other_than_the_committed_ones_are_withheld(
    tiny: tuple[Span, ClientHead], step: int
) -> None:
    """A node cannot choose its states after the fact: not an earlier step's (the context a
    block attends to), not the audited step's; nor can it reveal states that are not the
    output it sent."""
    span, head = tiny
    opening, batch, states = _served_opening(span, head, Variation("honest", "bfloat16"))
    proven = prove_leaf(opening, batch=batch, leaf_index=3)
    original = states[step].clone()
    states[step][0, 0, 0, 0] += 1  # block 0's output, one component
    with pytest.raises(InvalidOpeningError, match=f"step {step}: the revealed sketch, with the"):
        check_opening(opening, proven, batches=lambda _: batch, hidden_size=64)
    states[step] = original.clone()
    states[step][-1, 0, 0, 0] += 1  # the output sent
    with pytest.raises(InvalidOpeningError, match=f"step {step}: the last block's output"):
        check_opening(opening, proven, batches=lambda _: batch, hidden_size=64)
    states[step] = original[:2]  # a block short
    with pytest.raises(InvalidOpeningError, match=f"step {step}: block states of"):
        check_opening(opening, proven, batches=lambda _: batch, hidden_size=64)


QUANTIZED = [("bfloat16", "int8"), ("bfloat16", "nf4"), ("float16", "int8"), ("float16", "nf4")]


@pytest.mark.parametrize("declared, quantization", QUANTIZED)
def test_honest_quantized_nodes_never_fail_a_blockwise_audit(
    tiny: tuple[Span, ClientHead], declared: str, quantization: str
) -> None:
    """The verifier quantizes the same checkpoint to the same integers: threads, batch
    composition, eager attention, other kernels and (nf4) dequantized weights all pass."""
    span, head = tiny
    audited = 0
    for seed, variation in enumerate(honest_16bit(declared, quantization)):
        rates = run_variation(span, head, variation, sessions=3, seed=300 + seed, matched=True)
        assert rates.failed == 0, (variation.name, rates.worst)
        audited += rates.leaves
    assert audited >= 100


@pytest.mark.parametrize(
    "variation",
    [v for d, q in QUANTIZED[:2] for v in cheats(d, q)],
    ids=lambda v: v.name,
)
def test_every_cheat_behind_quantized_weights_fails_a_blockwise_audit(
    tiny: tuple[Span, ClientHead], variation: Variation
) -> None:
    """1% noise, 1% weights quantized, a skipped block, another checkpoint, a stale output,
    float16 compute, nf4 weights behind a declared int8."""
    span, head = tiny
    rates = run_variation(span, head, variation, sessions=8, seed=17, matched=True)
    assert rates.cheated >= 30
    assert rates.detection_rate >= 0.99, rates.worst
    assert rates.false_positive_rate == 0


@pytest.mark.parametrize("revealed", [None, "nf4"])
def test_a_reveal_that_misstates_its_quantization_is_withheld(
    tiny: tuple[Span, ClientHead], revealed: str | None
) -> None:
    """The leaves of an int8 node commit int8 (sketch version 3): a reveal that says full
    weights, or nf4, to be audited by another precision's rules, does not hash to them."""
    span, head = tiny
    variation = Variation("honest", "bfloat16", quantization="int8")
    opening, batch, _ = _served_opening(span, head, variation, revealed_quantization=revealed)
    proven = prove_leaf(opening, batch=batch, leaf_index=3)
    with pytest.raises(InvalidOpeningError, match="step 0: the revealed sketch, with the"):
        check_opening(opening, proven, batches=lambda _: batch, hidden_size=64)
