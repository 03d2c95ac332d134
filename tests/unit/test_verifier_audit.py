"""Audits in process, on a tiny model: the calibration matrix (honest nodes never fail, every
cheat fails on at least 99% of its leaves) and the checks of what a node reveals."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from ledger.contracts import Batch
from ledger.merkle import MerkleTree
from ledger.types import Address, BatchId, Leaf, ModelId, model_id
from node.blocks import SPAN_FP32_ATOL, ClientHead, Span, load_client_head, load_span
from node.faults import FaultMode
from node.protocol import RevealedStep, RevealResponse
from node.sketch import mask_hash, sketch
from node.tensors import tensor_hash
from stakeswarm.tiny_models import FAMILIES, Family, make_tiny_model
from verifier.audit import (
    RECOMPUTE_SCORE_BYTES,
    Opening,
    check_opening,
    judge,
    prove_leaf,
    recompute,
    recompute_chunk,
)
from verifier.calibration import HONEST, SimulatedNode, Variation, cheats, run_variation
from verifier.errors import InvalidOpeningError
from verifier.thresholds import FLOAT32_TOLERANCE, TOLERANCES, tolerance_for

NODE = Address("0x90F79bf6EB2c4F870365E785982E1f101E93b906")
MODEL = model_id("tiny-llama")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Span, ClientHead]:
    path = make_tiny_model(tmp_path_factory.mktemp("audit"), "llama", 6)
    return load_span(path, 0, 3), load_client_head(path)


# --- the calibration matrix ------------------------------------------------------------------


def test_honest_nodes_never_fail_over_hundreds_of_audits(tiny: tuple[Span, ClientHead]) -> None:
    span, head = tiny
    audited = 0
    for seed, variation in enumerate(HONEST):
        rates = run_variation(span, head, variation, sessions=8, seed=100 + seed)
        assert rates.failed == 0, (variation.name, rates.worst)
        audited += rates.leaves
    assert audited >= 200


CHEATS = [*cheats("float32"), *(v for v in cheats("bfloat16") if v.fault in {
    FaultMode.SKIP_BLOCK, FaultMode.STALE,
})]  # fmt: skip


@pytest.mark.parametrize("variation", CHEATS, ids=lambda v: v.name)
def test_every_cheat_fails_on_at_least_99_percent_of_its_leaves(
    tiny: tuple[Span, ClientHead], variation: Variation
) -> None:
    span, head = tiny
    rates = run_variation(span, head, variation, sessions=20, seed=7)
    assert rates.cheated >= 100
    assert rates.detection_rate >= 0.99, rates.worst
    assert rates.false_positive_rate == 0  # a stale node's honest steps (prefill) still pass


def test_bfloat16_hides_one_percent_noise_but_not_skipped_blocks(
    tiny: tuple[Span, ClientHead],
) -> None:
    # what the per-dtype tolerance means: a bf16 node's own rounding is larger than 1% noise
    span, head = tiny
    noise = run_variation(span, head, Variation("noise", "bfloat16", FaultMode.NOISE), sessions=4)
    assert noise.detection_rate < 0.5
    assert tolerance_for("bfloat16").max_mean_rel_error > 10 * FLOAT32_TOLERANCE.max_mean_rel_error
    assert set(TOLERANCES) == {"float32", "float16", "bfloat16"}


# --- what a node reveals ---------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    opening: Opening
    batch: Batch
    index: int  # of the audited (last revealed) leaf in the batch
    leaves: list[Leaf]


def serve(span: Span, head: ClientHead, *, fault: FaultMode | None = None) -> Served:
    """A simulated node serves one session (prefill + 3 decode steps); its 4 leaves and 3
    strangers' leaves are committed in one batch; the full reveal of its step 3."""
    node = SimulatedNode(span, Variation("served", fault=fault))
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 500, (2, 9), generator=generator)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = 0
    served = node.serve(head.embed(ids), mask, prompt=6)
    inputs, outputs = served.inputs, served.outputs
    session = os.urandom(32)
    # as a node commits them: each sketch with the hash of its step's own mask columns
    sketches = [
        sketch(out, mask_hash=mask_hash(step_mask, hidden.shape[1]))
        for (hidden, step_mask), out in zip(inputs, outputs, strict=True)
    ]
    leaves = [
        Leaf(session, MODEL, 0, 3, step, hidden.shape[0] * hidden.shape[1], tensor_hash(hidden),
             tensor_hash(out), committed.hash(), 1_767_225_600 + step)
        for step, ((hidden, _), out, committed) in enumerate(
            zip(inputs, outputs, sketches, strict=True))
    ]  # fmt: skip
    strangers = [os.urandom(32) for _ in range(3)]
    hashes = [strangers[0], *(leaf.hash() for leaf in leaves), *strangers[1:]]
    tree = MerkleTree(hashes)
    batch = Batch(BatchId(5), NODE, ModelId(MODEL), tree.root, len(hashes), 1_000)
    steps = [RevealedStep(leaf, 5, i + 1, tree.proof(i + 1)) for i, leaf in enumerate(leaves)]
    opening = Opening(
        RevealResponse(steps, full=True, batch_leaves=hashes),
        [hidden for hidden, _ in inputs],
        inputs[-1][1],  # the last step's mask: every earlier step's is a prefix of it
        torch.cat([committed.indices for committed in sketches], dim=1),
        torch.cat([committed.values for committed in sketches], dim=1),
    )
    return Served(opening, batch, 4, leaves)


def batches_of(served: Served):  # noqa: ANN201
    def get(batch_id: int) -> Batch:
        if batch_id != served.batch.batch_id:
            raise LookupError(batch_id)
        return served.batch

    return get


def audit(span: Span, served: Served, score_bytes: int = RECOMPUTE_SCORE_BYTES) -> bool:
    proven = prove_leaf(served.opening, batch=served.batch, leaf_index=served.index)
    checked = check_opening(served.opening, proven, batches=batches_of(served), hidden_size=64)
    recomputed = recompute(
        span, checked.hidden, checked.mask, checked.last_tokens, score_bytes=score_bytes
    )
    return judge(checked.sketch, recomputed, checked.dtype).passed


def test_an_honest_reveal_is_proven_checked_and_passes(tiny: tuple[Span, ClientHead]) -> None:
    span, head = tiny
    served = serve(span, head)
    proven = prove_leaf(served.opening, batch=served.batch, leaf_index=served.index)
    assert proven.leaf == served.leaves[-1] and proven.node == NODE
    assert MerkleTree(served.opening.response.batch_leaves).proof(4) == proven.proof
    assert audit(span, served)


def test_a_cheat_is_caught_by_the_same_audit(tiny: tuple[Span, ClientHead]) -> None:
    span, head = tiny
    assert not audit(span, serve(span, head, fault=FaultMode.NOISE))


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])
def test_other_families_are_audited_by_the_same_recompute(
    family: Family, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = make_tiny_model(tmp_path_factory.mktemp(family), family, 4, sliding_window=4)
    span, head = load_span(path, 0, 3), load_client_head(path)
    assert audit(span, serve(span, head))
    assert not audit(span, serve(span, head, fault=FaultMode.SKIP_BLOCK))
    bfloat16 = next(v for v in HONEST if v.declared == "bfloat16" and v.fault is None)
    assert run_variation(span, head, bfloat16, sessions=2, seed=9).failed == 0


def test_a_long_session_is_recomputed_in_chunks_as_in_one_pass(
    tiny: tuple[Span, ClientHead],
) -> None:
    """Past RECOMPUTE_SCORE_BYTES of attention the verifier runs a session chunk by chunk
    through a KV cache, as its node served it, never the [positions, positions] attention of
    one pass: the same outputs within fp32 rounding, the same verdicts."""
    span, head = tiny
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 40, 64, generator=generator)  # [batch, positions, hidden]
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    seven = 2 * span.config.num_attention_heads * 40 * 4 * 7  # scores of 7 positions' queries
    assert recompute_chunk(span, 2, 40, seven) == 7
    assert recompute_chunk(span, 2, 40) >= 40  # a short session: one stateless pass
    one_pass = recompute(span, hidden, mask, 5)
    chunked = recompute(span, hidden, mask, 5, score_bytes=seven)
    assert chunked.shape == one_pass.shape == (2, 5, 64)
    torch.testing.assert_close(chunked, one_pass, atol=SPAN_FP32_ATOL, rtol=0)
    assert audit(span, serve(span, head), score_bytes=2 * 4 * 9 * 4)  # one position a chunk
    assert not audit(span, serve(span, head, fault=FaultMode.NOISE), score_bytes=2 * 4 * 9 * 4)


def test_a_reveal_that_does_not_show_the_sampled_leaf_proves_nothing(
    tiny: tuple[Span, ClientHead],
) -> None:
    span, head = tiny
    served = serve(span, head)
    # asked for leaf 2 (step 1), the node shows step 3
    with pytest.raises(InvalidOpeningError, match="not leaf 2") as refused:
        prove_leaf(served.opening, batch=served.batch, leaf_index=2)
    assert refused.value.proven is None
    leaves = list(served.opening.response.batch_leaves)
    leaves[0] = os.urandom(32)
    forged = dataclasses.replace(
        served.opening, response=dataclasses.replace(served.opening.response, batch_leaves=leaves)
    )
    with pytest.raises(InvalidOpeningError, match="do not rebuild the root"):
        prove_leaf(forged, batch=served.batch, leaf_index=4)
    partial = dataclasses.replace(served.opening.response, batch_leaves=leaves[:3])
    with pytest.raises(InvalidOpeningError, match="lists 3 leaves"):
        prove_leaf(dataclasses.replace(served.opening, response=partial), batch=served.batch,
                   leaf_index=4)  # fmt: skip


@pytest.mark.parametrize(
    "tamper, message",
    [
        ("hidden", "do not hash to its inputHash"),
        ("hidden dtype", "step 1: hidden states are float16, expected float32"),
        ("hidden batch", "step 2: the session's batch is 2, the hidden states have batch 1"),
        ("hidden shape", r"step 0: hidden states must be \[batch, tokens, 64\]"),
        ("mask", "the mask is not 0/1 \\[batch, 9\\]"),
        ("mask values", "the mask is not 0/1 \\[batch, 9\\]"),
        ("sketch", "step 3: the revealed sketch, with the step's mask, does not hash"),
        # the client padded row 0's first two positions; a node that computed without that
        # padding (or reveals another mask) cannot show the mask its sketches committed
        ("padding", "step 0: the revealed sketch, with the step's mask, does not hash"),
        ("sketches", r"the revealed sketches are not \[batch, 9, k\]"),
        ("steps", "does not hold steps 0..3"),
        ("proof", "is not proven under batch 5"),
        ("index", "is not proven under batch 5"),
    ],
)
def test_a_proven_leaf_with_bad_inputs_is_withheld_and_provable(
    tiny: tuple[Span, ClientHead], tamper: str, message: str
) -> None:
    span, head = tiny
    served = serve(span, head)
    opening, response = served.opening, served.opening.response
    inputs = list(opening.hidden)
    if tamper == "hidden":
        inputs[1] = inputs[1] + 1e-3
        opening = dataclasses.replace(opening, hidden=inputs)
    elif tamper == "hidden dtype":
        inputs[1] = inputs[1].half()
        opening = dataclasses.replace(opening, hidden=inputs)
    elif tamper == "hidden batch":
        inputs[2] = inputs[2][:1]
        opening = dataclasses.replace(opening, hidden=inputs)
    elif tamper == "hidden shape":
        inputs[0] = inputs[0][0]
        opening = dataclasses.replace(opening, hidden=inputs)
    elif tamper == "mask":  # step 2's mask: it does not cover step 3's position
        opening = dataclasses.replace(opening, mask=opening.mask[:, :-1])
    elif tamper == "mask values":
        mask = opening.mask.clone()
        mask[1, 0] = 2
        opening = dataclasses.replace(opening, mask=mask)
    elif tamper == "sketch":  # step 3's (the last position's)
        other = sketch(torch.randn(2, 1, 64))
        indices, values = opening.sketch_indices.clone(), opening.sketch_values.clone()
        indices[:, -1:], values[:, -1:] = other.indices, other.values
        opening = dataclasses.replace(opening, sketch_indices=indices, sketch_values=values)
    elif tamper == "padding":
        opening = dataclasses.replace(opening, mask=torch.ones_like(opening.mask))
    elif tamper == "sketches":  # step k's sketch alone
        opening = dataclasses.replace(
            opening,
            sketch_indices=opening.sketch_indices[:, -1:],
            sketch_values=opening.sketch_values[:, -1:],
        )
    elif tamper == "steps":
        steps = [response.steps[0], *response.steps[2:]]
        opening = dataclasses.replace(
            opening,
            response=dataclasses.replace(response, steps=steps),
            hidden=[inputs[0], *inputs[2:]],
        )
    elif tamper == "proof":
        steps = list(response.steps)
        steps[0] = dataclasses.replace(steps[0], proof=[os.urandom(32)])
        opening = dataclasses.replace(opening, response=dataclasses.replace(response, steps=steps))
    elif tamper == "index":  # step 0's own proof, claimed at its neighbour's position
        steps = list(response.steps)
        steps[0] = dataclasses.replace(steps[0], leaf_index=steps[0].leaf_index - 1)
        opening = dataclasses.replace(opening, response=dataclasses.replace(response, steps=steps))
    proven = prove_leaf(opening, batch=served.batch, leaf_index=served.index)
    with pytest.raises(InvalidOpeningError, match=message) as refused:
        check_opening(opening, proven, batches=batches_of(served), hidden_size=64)
    assert refused.value.proven == proven  # the leaf itself is proven: a withheld slash holds
