"""The full reveal on the wire and on the node's disk: the request flag, the batch's leaf
hashes, the committed sketch stored with a step's inputs and sent back as two tensors, each
step's own mask columns stored and one mask revealed, the frame streamed, and the limits that
keep every session a node opens revealable."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
from hivemind.proto import runtime_pb2
from safetensors.torch import load_file, save_file

import node.protocol as protocol
from ledger.db import open_ledger, sqlite_url
from node.blocks import load_span
from node.cache import CacheManager
from node.commits import InputStore
from node.protocol import (
    MAX_BATCH_LEAVES,
    MAX_MESSAGES_PER_FRAME,
    MAX_METADATA_BYTES,
    ErrorCode,
    Frame,
    OpenSession,
    ProtocolError,
    RevealedStep,
    RevealRequest,
    RevealResponse,
    decode_frame,
    encode_frame,
    longest_revealable,
    read_frame,
    reveal_limits,
    stream_frame,
)
from node.sessions import SessionManager
from node.sketch import SKETCH_TOP_K, sketch
from stakeswarm.tiny_models import make_tiny_model
from verifier.audit import Opening
from verifier.errors import InvalidOpeningError
from verifier.reveal import (
    MAX_REVEAL_BYTES,
    MAX_REVEAL_MESSAGES,
    MAX_REVEAL_METADATA_BYTES,
    reveal_request,
)

NODE = "0x00000000000000000000000000000000000000AA"  # checksummed
LEAF = {
    "session": b"s" * 32, "model": b"m" * 32, "span": [0, 2], "step": 0, "tokens": 3,
    "in": b"i" * 32, "out": b"o" * 32, "sketch": b"k" * 32, "issued": 1_767_225_600,
}  # fmt: skip


def test_a_verifier_signs_a_full_request_the_node_can_check() -> None:
    account = Account.create()
    request = reveal_request(account, node=NODE, batch_id=7, leaf_index=3, issued_at=1000)
    wire = request.to_wire()
    assert wire["full"] is True
    again = RevealRequest.from_wire(wire)
    assert again == request
    signer = Account.recover_message(
        encode_defunct(text=again.message()), signature=again.signature
    )
    assert signer == account.address
    # a request without the flag (an older verifier) is a plain reveal
    del wire["full"]
    assert RevealRequest.from_wire(wire).full is False
    with pytest.raises(ProtocolError, match="full must be a boolean"):
        RevealRequest.from_wire({**wire, "full": "yes"})


def test_a_full_response_carries_the_batch_leaves_and_each_steps_sketch() -> None:
    step = RevealedStep.from_wire({"leaf": LEAF, "batch": 7, "index": 1, "proof": [b"p" * 32]})
    assert step.leaf_index == 1 and step.leaf.issued_at == 1_767_225_600
    response = RevealResponse([step], full=True, batch_leaves=[b"a" * 32, b"b" * 32])
    assert response.tensor_count == 4
    committed = sketch(torch.randn(1, 3, 16))
    tensors = [torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.long)]
    tensors += [committed.indices, committed.values]
    frame = decode_frame(list(encode_frame(Frame(response.to_wire(), tensors), _response())))
    parsed = RevealResponse.from_wire(frame.metadata)
    assert parsed == response
    opening = Opening.from_frame(parsed, frame.tensors)
    assert torch.equal(opening.sketch_indices, committed.indices)
    assert torch.equal(opening.sketch_values, committed.values)
    with pytest.raises(InvalidOpeningError, match="carries 2 tensors"):
        Opening.from_frame(parsed, frame.tensors[:2])
    # a plain response: each step's hidden states and the mask, no leaves
    plain = RevealResponse([step])
    assert "leaves" not in plain.to_wire() and plain.tensor_count == 2
    with pytest.raises(ProtocolError) as refused:
        RevealResponse.from_wire({**response.to_wire(), "leaves": [b"short"]})
    assert refused.value.code is ErrorCode.BAD_REQUEST


def test_a_16bit_nodes_full_response_ends_with_every_steps_block_states() -> None:
    steps = [
        RevealedStep.from_wire({"leaf": LEAF, "batch": 7, "index": i, "proof": [b"p" * 32]})
        for i in range(2)
    ]
    response = RevealResponse(steps, full=True, batch_leaves=[b"a" * 32] * 2, states=True)
    assert response.tensor_count == 2 + 1 + 2 + 2
    hiddens = [torch.randn(1, 3, 16).bfloat16(), torch.randn(1, 1, 16).bfloat16()]
    committed = sketch(torch.cat(hiddens, dim=1))  # both steps' sketches, concatenated
    states = [torch.randn(4, 1, 3, 16).bfloat16(), torch.randn(4, 1, 1, 16).bfloat16()]
    tensors = [*hiddens, torch.ones(1, 4, dtype=torch.long), committed.indices, committed.values]
    frame = decode_frame(
        list(encode_frame(Frame(response.to_wire(), tensors + states), _response()))
    )
    parsed = RevealResponse.from_wire(frame.metadata)
    assert parsed == response and parsed.to_wire()["states"] is True
    opening = Opening.from_frame(parsed, frame.tensors)
    assert torch.equal(opening.sketch_indices, committed.indices)
    assert opening.states is not None and len(opening.states) == 2
    assert all(torch.equal(a, b) for a, b in zip(opening.states, states, strict=True))
    # without `full`, `states` means nothing: no states are read
    assert not RevealResponse.from_wire({**response.to_wire(), "full": False}).states
    # a full reveal of a float32 node has none
    assert Opening.from_frame(
        RevealResponse(steps[:1], full=True, batch_leaves=[b"a" * 32]),
        [hiddens[0].float(), torch.ones(1, 3, dtype=torch.long), committed.indices[:, :3],
         committed.values[:, :3]],
    ).states is None  # fmt: skip


def test_block_states_multiply_a_16bit_sessions_largest_reveal() -> None:
    plain = reveal_limits(hidden_size=576, dtype="bfloat16", batch=1, max_length=4096)
    states = reveal_limits(hidden_size=576, dtype="bfloat16", batch=1, max_length=4096, blocks=10)
    hidden_bytes = 4096 * 576 * 2
    assert states.tensor_bytes - plain.tensor_bytes == 10 * hidden_bytes
    assert states.messages > plain.messages
    longest = longest_revealable(hidden_size=8192, dtype="bfloat16", batch=1)
    with_states = longest_revealable(hidden_size=8192, dtype="bfloat16", batch=1, blocks=8)
    assert 0 < with_states < longest / 4  # 7,277 positions of a 70B-wide span of 8 blocks


def test_the_reveal_of_a_long_session_is_read_whole() -> None:
    """2100 decode steps with 12-hash proofs and a 4096-leaf batch: more metadata and more
    messages than any other frame may have. The verifier reads it (else an honest node with a
    long session could not reveal, and would be slashed for withholding); others refuse it."""
    steps = [
        RevealedStep.from_wire(
            {"leaf": {**LEAF, "step": i}, "batch": 7, "index": i, "proof": [b"p" * 32] * 12}
        )
        for i in range(2100)
    ]
    response = RevealResponse(steps, full=True, batch_leaves=[b"a" * 32] * 4096)
    tensors = [torch.randn(1, 1, 16) for _ in steps] + [torch.ones(1, 2100, dtype=torch.long)]
    every = sketch(torch.randn(1, len(steps), 16))  # every step's sketch, concatenated
    tensors += [every.indices, every.values]
    messages = list(encode_frame(Frame(response.to_wire(), tensors), _response()))
    assert len(messages) > MAX_MESSAGES_PER_FRAME
    assert len(messages[0].metadata) > MAX_METADATA_BYTES

    async def read(**limits: int) -> Frame | None:
        async def stream() -> AsyncIterator[Any]:
            for message in messages:
                yield message

        return await read_frame(stream(), MAX_REVEAL_BYTES, **limits)

    frame = asyncio.run(
        read(max_metadata_bytes=MAX_REVEAL_METADATA_BYTES, max_messages=MAX_REVEAL_MESSAGES)
    )
    assert frame is not None
    opening = Opening.from_frame(RevealResponse.from_wire(frame.metadata), frame.tensors)
    assert len(opening.hidden) == 2100 and torch.equal(opening.hidden[-1], tensors[2099])
    assert torch.equal(opening.mask, tensors[2100])
    assert opening.sketch_indices is not None and opening.sketch_indices.shape[1] == 2100
    with pytest.raises(ProtocolError) as refused:
        asyncio.run(read())
    assert refused.value.code is ErrorCode.TOO_LARGE


def _response():  # noqa: ANN202
    from hivemind.proto import runtime_pb2

    return runtime_pb2.ExpertResponse


def test_the_node_keeps_the_committed_sketch_with_the_step_inputs(tmp_path: Path) -> None:
    store = InputStore(tmp_path)
    hidden, mask = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.long)
    encoded = sketch(hidden).encode()
    rel = store.save(b"s" * 32, 0, 2, 0, hidden, mask, encoded)
    loaded_hidden, loaded_mask = store.load(rel)
    assert torch.equal(loaded_hidden, hidden) and torch.equal(loaded_mask, mask)
    assert store.load_sketch(rel) == encoded
    assert keccak(store.load_sketch(rel) or b"") == sketch(hidden).hash()
    bare = store.save(b"s" * 32, 0, 2, 1, hidden, mask)  # commitments off: no sketch
    assert store.load_sketch(bare) is None


def test_a_step_is_stored_with_its_own_mask_columns_and_older_files_still_read(
    tmp_path: Path,
) -> None:
    """The node keeps [batch, tokens] of each step's mask, not [batch, past + tokens]: its
    stored inputs grow linearly with the session. A file from before (the whole mask) reads
    the same."""
    store = InputStore(tmp_path)
    hidden = torch.randn(2, 3, 16)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :2] = 0  # left padding in the past: not this step's columns
    mask[1, 7] = 0
    rel = store.save(b"s" * 32, 0, 2, 4, hidden, mask)
    assert load_file(str(tmp_path / rel))["mask"].shape == (2, 3)  # on disk: [batch, tokens]
    loaded_hidden, columns = store.load(rel)
    assert torch.equal(loaded_hidden, hidden) and torch.equal(columns, mask[:, 5:])
    assert store.shapes(rel) == ([2, 3, 16], "F32")
    old = tmp_path / "old.safetensors"
    save_file({"hidden": hidden, "mask": mask}, str(old))
    assert torch.equal(store.load("old.safetensors")[1], mask[:, 5:])
    save_file({"hidden": hidden, "mask": mask[:, :2].contiguous()}, str(old))
    with pytest.raises(ValueError, match="does not cover"):
        store.load("old.safetensors")


def test_a_frame_streamed_tensor_by_tensor_is_the_frame_encode_frame_sends() -> None:
    tensors = [torch.randn(1, 300_000), torch.ones(1, 5, dtype=torch.long), torch.empty(0)]
    sizes = [t.numel() * t.element_size() for t in tensors]
    metadata = {"type": "revealed", "steps": []}
    response = runtime_pb2.ExpertResponse
    streamed = list(stream_frame(metadata, iter(tensors), sizes, response))
    assert streamed == list(encode_frame(Frame(metadata, tensors), response))
    frame = decode_frame(streamed)
    assert all(torch.equal(a, b) for a, b in zip(frame.tensors, tensors, strict=True))
    # a tensor that is not the size announced in the header breaks the frame: refused
    with pytest.raises(ProtocolError) as refused:
        list(stream_frame(metadata, iter(tensors), [sizes[0], 8, 0], response))
    assert refused.value.code is ErrorCode.INTERNAL
    with pytest.raises(ProtocolError, match="announced 4 tensors"):
        list(stream_frame(metadata, iter(tensors), [*sizes, 4], response))


def test_every_session_the_default_cache_admits_is_revealable() -> None:
    """The default `--cache-tokens 16384` in one sequence, for the tiny test model,
    SmolLM2-135M (hidden 576, float32) and a large model (hidden 8192): the largest reveal
    it can need fits what every verifier reads. A hidden size of 16384 in float32 does not."""
    for hidden_size, dtype in [(64, "float32"), (576, "float32"), (8192, "float32"),
                               (8192, "bfloat16")]:  # fmt: skip
        size = reveal_limits(hidden_size=hidden_size, dtype=dtype, batch=1, max_length=16384)
        assert size.fits, (hidden_size, dtype, size.excess())
        assert longest_revealable(hidden_size=hidden_size, dtype=dtype, batch=1) >= 16384
    assert reveal_limits(hidden_size=8192, dtype="float32", batch=4, max_length=4096).fits
    huge = reveal_limits(hidden_size=16384, dtype="float32", batch=1, max_length=16384)
    assert not huge.fits and "tensor bytes" in huge.excess()[0]
    assert 16000 < longest_revealable(hidden_size=16384, dtype="float32", batch=1) < 16384
    # the verifier reads up to the very caps the node checks against
    assert (MAX_REVEAL_BYTES, MAX_REVEAL_METADATA_BYTES, MAX_REVEAL_MESSAGES) == (
        protocol.MAX_REVEAL_BYTES,
        protocol.MAX_REVEAL_METADATA_BYTES,
        protocol.MAX_REVEAL_MESSAGES,
    )


def test_the_reveal_limits_bound_the_largest_reveal_of_a_session() -> None:
    """A session of 300 one-token steps with leaves and proofs at their largest and a full
    batch of leaves: its encoded reveal stays within `reveal_limits` on every count."""
    steps_count, hidden_size = 300, 16
    largest = {
        **LEAF, "span": [2**16 - 1, 2**16 - 1], "step": 2**32 - 1, "tokens": 2**32 - 1,
        "issued": 2**63 - 1,
    }  # fmt: skip
    steps = [
        RevealedStep.from_wire(
            {"leaf": largest, "batch": 2**64 - 1, "index": 2**32 - 1, "proof": [b"p" * 32] * 16}
        )
        for _ in range(steps_count)
    ]
    response = RevealResponse(steps, full=True, batch_leaves=[b"a" * 32] * MAX_BATCH_LEAVES)
    committed = sketch(torch.randn(1, 1, hidden_size))
    tensors = [torch.randn(1, 1, hidden_size) for _ in steps]
    tensors += [torch.ones(1, steps_count, dtype=torch.long)]
    every = sketch(torch.randn(1, steps_count, hidden_size))  # every step's, concatenated
    tensors += [every.indices, every.values]
    messages = list(encode_frame(Frame(response.to_wire(), tensors), _response()))
    bound = reveal_limits(hidden_size=hidden_size, dtype="float32", batch=1, max_length=300)
    assert len(messages[0].metadata) <= bound.metadata_bytes
    assert len(messages) <= bound.messages
    assert sum(t.numel() * t.element_size() for t in tensors) <= bound.tensor_bytes
    assert committed.indices.shape[-1] == SKETCH_TOP_K


def test_a_node_refuses_to_open_a_session_it_could_not_reveal(tmp_path: Path) -> None:
    """A session whose largest reveal would exceed what verifiers read is refused when it
    opens (LENGTH_EXCEEDED, saying how long a session may be), before any cache is reserved:
    the node never serves a leaf it could not reveal. As long as its cache allows is fine."""
    span = load_span(make_tiny_model(tmp_path, "llama", 2), 0, 2)
    ledger = open_ledger(sqlite_url(tmp_path / "ledger.sqlite"))
    caches = CacheManager(max_tokens=2**20)
    sessions = SessionManager(caches, ledger)
    longest = longest_revealable(hidden_size=span.hidden_size, dtype="float32", batch=1)

    def request(max_length: int) -> OpenSession:
        return OpenSession(os.urandom(32), 0, 2, max_length, batch_size=1, channel_id=1)

    try:
        with pytest.raises(ProtocolError) as refused:
            asyncio.run(sessions.open(request(longest + 1), span, NODE, 1))
        assert refused.value.code is ErrorCode.LENGTH_EXCEEDED
        assert f"up to max_length {longest}" in refused.value.message
        assert caches.tokens_in_use == 0 and len(sessions) == 0
        opened = asyncio.run(sessions.open(request(16384), span, NODE, 1))
        assert opened.cache.max_length == 16384
        sessions.close(opened)
    finally:
        ledger.close()
