"""Audits of nodes that declare a 16-bit dtype, in process on a tiny model: the verifier
recomputes them in their dtype and step structure (`verifier.audit.AuditSpans`), honest
variations never fail, and the cheats this way can see fail on at least 99% of their leaves."""

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
from node.sketch import sketch
from node.tensors import tensor_hash
from stakeswarm.tiny_models import make_tiny_model
from verifier.audit import (
    AuditSpans,
    Opening,
    check_opening,
    matched_spans,
    prove_leaf,
    recompute_steps,
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
from verifier.thresholds import MATCHED_TOLERANCES, TOLERANCES, matched_tolerance_for

NODE = Address("0x90F79bf6EB2c4F870365E785982E1f101E93b906")
MODEL = model_id("tiny-llama")
SIXTEEN_BIT = ("bfloat16", "float16")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Span, ClientHead]:
    path = make_tiny_model(tmp_path_factory.mktemp("audit16"), "llama", 6)
    return load_span(path, 0, 3), load_client_head(path)


@pytest.mark.parametrize("declared", SIXTEEN_BIT)
def test_honest_16bit_nodes_never_fail_a_matched_audit(
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


CAUGHT = (FaultMode.SKIP_BLOCK, FaultMode.STALE, SpanCheat.OTHER_CHECKPOINT)


@pytest.mark.parametrize(
    "variation",
    [v for d in SIXTEEN_BIT for v in cheats(d) if v.fault in CAUGHT],
    ids=lambda v: v.name,
)
def test_gross_16bit_cheats_fail_a_matched_audit(
    tiny: tuple[Span, ClientHead], variation: Variation
) -> None:
    span, head = tiny
    rates = run_variation(span, head, variation, sessions=15, seed=11, matched=True)
    assert rates.cheated >= 70
    assert rates.detection_rate >= 0.99, rates.worst
    assert rates.false_positive_rate == 0


def test_small_16bit_cheats_hide_in_another_kernels_rounding(
    tiny: tuple[Span, ClientHead],
) -> None:
    """What the matched tolerance cannot see (docs/benchmarks.md): 1% noise sits inside what
    an honest node on other kernels differs by, so a bound that caught it would slash those."""
    span, head = tiny
    noise = run_variation(
        span, head, Variation("noise", "bfloat16", FaultMode.NOISE), sessions=3, matched=True
    )
    assert noise.detection_rate < 0.5
    for dtype in SIXTEEN_BIT:  # tighter than the float32 way, looser than float32's own
        matched, one_pass = matched_tolerance_for(dtype), TOLERANCES[dtype]
        assert matched.max_mean_rel_error < one_pass.max_mean_rel_error
        assert matched.max_rel_error < one_pass.max_rel_error
    assert set(MATCHED_TOLERANCES) == set(SIXTEEN_BIT)


@pytest.mark.parametrize("declared", SIXTEEN_BIT)
def test_matched_recompute_reproduces_an_honest_cpu_node_bit_for_bit(
    tiny: tuple[Span, ClientHead], declared: str
) -> None:
    span, head = tiny
    node = SimulatedNode(span, Variation("honest", declared, threads=2, strangers=2))
    generator = torch.Generator().manual_seed(4)
    hidden = head.embed(torch.randint(3, 500, (2, 9), generator=generator))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    inputs, outputs, _ = node.serve(hidden, mask, prompt=5)
    assert len(inputs) == len(step_bounds(5, 9)) == 5
    own = matched_spans(span, node.dtype)[0]
    recomputed = recompute_steps(own, [h for h, _ in inputs], inputs[-1][1])
    assert recomputed.dtype == node.dtype
    assert torch.equal(recomputed, outputs[-1])  # [2, 1, 64]
    with pytest.raises(ValueError, match="one or more steps"):  # steps not in the node's dtype
        recompute_steps(own, [h.float() for h, _ in inputs], inputs[-1][1])


def test_matched_spans_are_copies_in_the_dtype_with_each_attention(
    tiny: tuple[Span, ClientHead],
) -> None:
    span, _ = tiny
    spans = matched_spans(span, torch.bfloat16)
    assert [s.config._attn_implementation for s in spans] == ["sdpa", "eager"]
    assert all(s.dtype == torch.bfloat16 for s in spans)
    assert all(p.dtype == torch.bfloat16 for s in spans for p in s.layers.parameters())
    assert span.config._attn_implementation == "sdpa"  # the verifier's own span is unchanged
    assert all(p.dtype == torch.float32 for p in span.layers.parameters())
    assert span_in(span, torch.float32) is span
    hidden = torch.randn(1, 6, 64).bfloat16()  # [batch, tokens, hidden]
    sdpa, eager = (s.forward(hidden) for s in spans)
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
    assert {v.fault for v in cheats("bfloat16")} >= set(SpanCheat)
    assert SpanCheat.FLOAT16_COMPUTE not in {v.fault for v in cheats("float16")}


def _served_opening(span: Span, head: ClientHead, variation: Variation) -> tuple[Opening, Batch]:
    """A node serves one session (prefill + 3 decode steps) in its declared dtype; its leaves
    are committed in one batch; the full reveal of step 3."""
    node = SimulatedNode(span, variation, seed=3)
    generator = torch.Generator().manual_seed(3)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = 0
    inputs, outputs, _ = node.serve(
        head.embed(torch.randint(3, 500, (2, 9), generator=generator)), mask, prompt=6
    )
    session = os.urandom(32)
    leaves = [
        Leaf(session, MODEL, 0, 3, step, hidden.shape[0] * hidden.shape[1], tensor_hash(hidden),
             tensor_hash(out), sketch(out).hash(), 1_767_225_600 + step)
        for step, ((hidden, _), out) in enumerate(zip(inputs, outputs, strict=True))
    ]  # fmt: skip
    hashes = [leaf.hash() for leaf in leaves]
    tree = MerkleTree(hashes)
    batch = Batch(BatchId(5), NODE, ModelId(MODEL), tree.root, len(hashes), 1_000)
    steps = [RevealedStep(leaf, 5, i, tree.proof(i)) for i, leaf in enumerate(leaves)]
    committed = sketch(outputs[-1])
    opening = Opening(
        RevealResponse(steps, full=True, batch_leaves=hashes),
        [hidden for hidden, _ in inputs],
        inputs[-1][1],
        committed.indices,
        committed.values,
    )
    return opening, batch


@pytest.mark.parametrize(
    "variation, passes",
    [
        (Variation("honest", "bfloat16", threads=2), True),
        (Variation("honest, eager", "bfloat16", attention="eager"), True),
        (Variation("honest", "float16", strangers=2), True),
        (Variation("skip-block", "bfloat16", FaultMode.SKIP_BLOCK), False),
        (Variation("other checkpoint", "bfloat16", SpanCheat.OTHER_CHECKPOINT), False),
        (Variation("skip-block", "float16", FaultMode.SKIP_BLOCK), False),
    ],
    ids=lambda v: v.name if isinstance(v, Variation) else str(v),
)
def test_a_16bit_reveal_is_audited_in_its_dtype_and_steps(
    tiny: tuple[Span, ClientHead], variation: Variation, passes: bool
) -> None:
    span, head = tiny
    opening, batch = _served_opening(span, head, variation)
    proven = prove_leaf(opening, batch=batch, leaf_index=3)
    checked = check_opening(opening, proven, batches=lambda _: batch, hidden_size=64)
    assert checked.dtype == variation.declared and checked.step_tokens == (6, 1, 1, 1)
    judgement = AuditSpans(span).audit(checked)
    assert judgement.passed is passes, judgement.as_json()
    if passes and variation.attention == "":
        assert judgement.measured["mean_rel_error"] == 0  # the same CPU: bit for bit
