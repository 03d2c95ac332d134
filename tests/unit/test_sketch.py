"""Sketches: a canonical encoding, and distances that stay tiny for honest recomputation
(other thread counts, batch composition, cached steps vs one pass) and grow for cheats."""

from __future__ import annotations

import struct

import pytest
import torch
from eth_utils import keccak

from node.blocks import ClientHead, Span, load_client_head, load_span
from node.cache import CacheManager
from node.errors import InvalidInputError, SketchFormatError
from node.sketch import (
    FP16_MAX,
    SKETCH_TOP_K,
    Sketch,
    backward_sketch,
    compare,
    mask_hash,
    sketch,
)
from stakeswarm.tiny_models import make_tiny_model

FP16_ROUNDING = 2.0**-11  # relative rounding error bound of float16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Span, ClientHead]:
    path = make_tiny_model(tmp_path_factory.mktemp("sketch"), "llama")
    return load_span(path, 0, 3), load_client_head(path)


def batch_input(head: ClientHead) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 450, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :5] = 0
    return head.embed(ids), mask


def test_encoding_layout_and_round_trip() -> None:
    hidden = torch.zeros(1, 2, 10)
    hidden[0, 0, [7, 2, 5]] = torch.tensor([3.0, -5.0, 1.0])
    hidden[0, 1, 4] = 1e6  # beyond float16: saturates
    committed = sketch(hidden, k=3)
    data = committed.encode()
    assert data[:15] == struct.pack("<BHIII", 1, 3, 1, 2, 10)
    indices = struct.unpack("<6I", data[15:39])
    assert indices == (2, 7, 5, 4, 0, 1)  # |value| descending, then ascending index
    values = torch.frombuffer(bytearray(data[39:]), dtype=torch.float16).tolist()
    assert values == [-5.0, 3.0, 1.0, FP16_MAX, 0.0, 0.0]
    assert len(data) == 15 + 6 * 6
    assert committed.hash() == keccak(data)

    again = Sketch.decode(data)
    assert again.encode() == data
    assert torch.equal(again.indices, committed.indices)
    assert torch.equal(again.values, committed.values)


def test_a_version_2_sketch_commits_the_mask_and_the_block_states() -> None:
    hidden = torch.zeros(1, 2, 10)
    hidden[0, 0, [7, 2, 5]] = torch.tensor([3.0, -5.0, 1.0])
    plain = sketch(hidden, k=3)
    mask = torch.tensor([[0, 1, 1, 1]])  # [batch, past + tokens]: the step's own are the last 2
    masked = mask_hash(mask, 2)
    assert masked == keccak(bytes([1, 1])) == mask_hash(mask.bool(), 2)
    assert mask_hash(mask, 4) == keccak(bytes([0, 1, 1, 1])) != masked
    states = keccak(b"block states")
    float32_node = sketch(hidden, k=3, mask_hash=masked)
    sixteen_bit_node = sketch(hidden, k=3, mask_hash=masked, states_hash=states)
    body = plain.encode()[15:]
    assert float32_node.encode() == (
        struct.pack("<BHIII", 2, 3, 1, 2, 10) + body + masked + bytes(32)
    )
    assert sixteen_bit_node.encode() == (
        struct.pack("<BHIII", 2, 3, 1, 2, 10) + body + masked + states
    )
    # the leaf's sketchHash commits each of them
    assert len({plain.hash(), float32_node.hash(), sixteen_bit_node.hash()}) == 3
    padded = torch.tensor([[1, 1, 0, 1]])  # the same step with one position padded
    assert float32_node.hash() != sketch(hidden, k=3, mask_hash=mask_hash(padded, 2)).hash()
    for committed in (float32_node, sixteen_bit_node):
        again = Sketch.decode(committed.encode())
        assert again.encode() == committed.encode()
        assert (again.mask_hash, again.states_hash) == (committed.mask_hash, committed.states_hash)
    assert Sketch.decode(plain.encode()).mask_hash is None
    with pytest.raises(InvalidInputError, match="32 bytes"):
        sketch(hidden, k=3, mask_hash=b"short")
    with pytest.raises(InvalidInputError, match="commits its mask too"):
        sketch(hidden, k=3, states_hash=states)


def test_bfloat16_values_are_kept_exactly(tiny: tuple[Span, ClientHead]) -> None:
    span, head = tiny
    hidden = span.forward(*batch_input(head)).bfloat16()
    committed = Sketch.decode(sketch(hidden).encode())
    assert torch.equal(committed.values.float(), hidden.float().gather(-1, committed.indices))
    distance = compare(committed, hidden)
    assert distance.worst_abs_error == 0 and distance.min_overlap == 1


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x08", "shorter than its header"),
        (struct.pack("<BHIII", 7, 1, 1, 1, 4) + bytes(6), "version 7"),
        # a backward's sketch (version 4) commits no block states
        (
            struct.pack("<BHIII", 4, 1, 1, 1, 4) + bytes(6 + 32) + b"\x01" * 32 + b"\x03",
            "no block states",
        ),
        (struct.pack("<BHIII", 3, 1, 1, 1, 4) + bytes(6 + 64) + b"\x09", "got code 9"),
        (struct.pack("<BHIII", 3, 1, 1, 1, 4) + bytes(6 + 64) + b"\x01", "needs block states"),
        (struct.pack("<BHIII", 2, 1, 1, 1, 4) + bytes(6), "21 bytes, expected 85"),
        (struct.pack("<BHIII", 1, 5, 1, 1, 4) + bytes(30), "k=5"),
        (struct.pack("<BHIII", 1, 1, 1, 2, 4) + bytes(6), "expected 27"),
        (struct.pack("<BHIII", 1, 1, 1, 1, 4) + struct.pack("<I", 4) + bytes(2), "out of range"),
        (struct.pack("<BHIII", 1, 2, 1, 1, 4) + struct.pack("<II", 3, 3) + bytes(4), "repeats"),
        (struct.pack("<BHIII", 1, 1, 1, 1, 4) + bytes(4) + b"\x00\x7c", "finite"),
    ],
)
def test_malformed_sketches_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(SketchFormatError, match=message):
        Sketch.decode(data)


def test_bad_tensors_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="hidden_size"):
        sketch(torch.zeros(2, 3))
    with pytest.raises(InvalidInputError, match="NaN"):
        sketch(torch.full((1, 1, 8), float("nan")))
    with pytest.raises(InvalidInputError, match="k=9"):
        sketch(torch.zeros(1, 1, 8), k=9)
    with pytest.raises(SketchFormatError, match="cannot be compared"):
        compare(sketch(torch.randn(1, 2, 8)), torch.randn(1, 3, 8))


def honest_recomputations(span: Span, head: ClientHead) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What a node sent (cached, step by step, 2 threads) and how verifiers recompute it."""
    hidden, mask = batch_input(head)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with CacheManager(10_000).open("s", span.kv_layout, batch=2, max_length=16) as cache:
            served = torch.cat(
                [
                    span.forward(hidden[:, :9], mask[:, :9], cache),
                    *(
                        span.forward(hidden[:, t : t + 1], mask[:, : t + 1], cache)
                        for t in range(9, 16)
                    ),
                ],
                dim=1,
            )
        one_pass = span.forward(hidden, mask)
        torch.set_num_threads(1)
        one_thread = span.forward(hidden, mask)
    finally:
        torch.set_num_threads(threads)
    # other batch compositions: the first prompt alone, the second among three
    alone = span.forward(hidden[:1], mask[:1])
    stranger = torch.randn(1, 16, hidden.shape[-1], generator=torch.Generator().manual_seed(2))
    three = span.forward(
        torch.cat([stranger, hidden[1:], hidden[:1]]),
        torch.cat([torch.ones(1, 16, dtype=torch.long), mask[1:], mask[:1]]),
    )
    rebatched = torch.cat([alone, three[1:2]])
    return served, [one_pass, one_thread, rebatched]


def test_honest_recomputation_is_close_and_noise_is_not(tiny: tuple[Span, ClientHead]) -> None:
    span, head = tiny
    served, recomputations = honest_recomputations(span, head)
    assert not torch.equal(served, recomputations[0])  # the paths really differ numerically
    committed = Sketch.decode(sketch(served).encode())
    assert committed.k == SKETCH_TOP_K

    honest = [compare(committed, recomputed) for recomputed in recomputations]
    for distance in honest:
        assert distance.min_overlap == 1.0
        assert distance.worst_rel_error <= FP16_ROUNDING * 1.01
        assert distance.worst_abs_error <= FP16_ROUNDING * float(served.abs().max())

    # a cheating node adds noise of 1% of the hidden std to what it sends and commits
    generator = torch.Generator().manual_seed(1)
    noised = served + torch.randn(served.shape, generator=generator) * 0.01 * served.std()
    cheat = compare(sketch(noised), recomputations[0])
    worst_honest = max(d.worst_rel_error for d in honest)
    mean_honest = max(float(d.mean_rel_error.mean()) for d in honest)
    assert cheat.worst_rel_error > 10 * worst_honest
    assert float(cheat.mean_rel_error.mean()) > 10 * mean_honest
    assert cheat.worst_abs_error > 10 * max(d.worst_abs_error for d in honest)

    # a node that sends other numbers altogether loses the top-k indices too
    unrelated = compare(committed, torch.randn(served.shape, generator=generator))
    assert unrelated.mean_overlap < 0.5


def test_a_backward_sketch_scales_small_gradients_into_float16_and_says_it_is_a_backward() -> None:
    # gradients of a loss are small: unscaled, float16 would flush most of them to zero
    gradient = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 1e-7
    masked = mask_hash(torch.ones(2, 3, dtype=torch.long), 3)
    committed = backward_sketch(gradient, mask_hash=masked)
    assert 2**14 <= float(committed.values.float().abs().max()) < 2**15
    decoded = Sketch.decode(committed.encode())
    assert decoded.exponent == committed.exponent and decoded.hash() == committed.hash()
    # compared at its scale, the gradient itself is within float16's rounding
    scaled = torch.ldexp(gradient, torch.tensor(committed.exponent))
    assert compare(decoded, scaled).worst_rel_error < 2**-10
    # the same numbers committed as a forward's sketch hash differently: the leaf says which
    forward = sketch(scaled, mask_hash=masked)
    assert torch.equal(forward.indices, committed.indices) and forward.hash() != committed.hash()


def test_prompted_sketches_commit_the_prompts_and_their_gradient() -> None:
    # a training call with deep prompts: version 5 (forward) and 6 (backward) sketches commit
    # the prompts' hash, the backward's also their gradient's; each round-trips and differs
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 3, 64, generator=generator)
    masked = mask_hash(torch.ones(2, 3, dtype=torch.long), 3)
    prompts, other = keccak(b"prompts"), keccak(b"other prompts")
    plain = sketch(hidden, mask_hash=masked)
    prompted = sketch(hidden, mask_hash=masked, prompts_hash=prompts)
    assert Sketch.decode(prompted.encode()).hash() == prompted.hash()
    assert prompted.encode()[0] == 5 and Sketch.decode(prompted.encode()).prompts_hash == prompts
    assert prompted.hash() not in {
        plain.hash(),
        sketch(hidden, mask_hash=masked, prompts_hash=other).hash(),
    }
    gradient = hidden * 1e-6
    backward = backward_sketch(
        gradient, mask_hash=masked, prompts_hash=prompts, prompts_grad_hash=other
    )
    decoded = Sketch.decode(backward.encode())
    assert backward.encode()[0] == 6 and decoded.exponent == backward.exponent
    assert (decoded.prompts_hash, decoded.prompts_grad_hash) == (prompts, other)
    swapped = backward_sketch(
        gradient, mask_hash=masked, prompts_hash=other, prompts_grad_hash=prompts
    )
    assert swapped.hash() != backward.hash() != backward_sketch(gradient, mask_hash=masked).hash()
    with pytest.raises(InvalidInputError, match="prompts and their gradient"):
        backward_sketch(gradient, mask_hash=masked, prompts_hash=prompts)
