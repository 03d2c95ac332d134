"""The full reveal on the wire and on the node's disk: the request flag, the batch's leaf
hashes, the committed sketch stored with a step's inputs and sent back as two tensors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

from node.commits import InputStore
from node.protocol import (
    MAX_MESSAGES_PER_FRAME,
    MAX_METADATA_BYTES,
    ErrorCode,
    Frame,
    ProtocolError,
    RevealedStep,
    RevealRequest,
    RevealResponse,
    decode_frame,
    encode_frame,
    read_frame,
)
from node.sketch import sketch
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


def test_a_full_response_carries_the_batch_leaves_and_two_sketch_tensors() -> None:
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
    # a plain response keeps its old shape: 2 tensors per step, no leaves
    plain = RevealResponse([step])
    assert "leaves" not in plain.to_wire() and plain.tensor_count == 2
    with pytest.raises(ProtocolError) as refused:
        RevealResponse.from_wire({**response.to_wire(), "leaves": [b"short"]})
    assert refused.value.code is ErrorCode.BAD_REQUEST


def test_the_reveal_of_a_long_session_is_read_whole() -> None:
    """2000 decode steps with 12-hash proofs and a 4096-leaf batch: more metadata and more
    messages than any other frame may have. The verifier reads it (else an honest node with a
    long session could not reveal, and would be slashed for withholding); others refuse it."""
    steps = [
        RevealedStep.from_wire(
            {"leaf": {**LEAF, "step": i}, "batch": 7, "index": i, "proof": [b"p" * 32] * 12}
        )
        for i in range(2000)
    ]
    response = RevealResponse(steps, full=True, batch_leaves=[b"a" * 32] * 4096)
    tensors = [
        t for _ in steps for t in (torch.randn(1, 1, 16), torch.ones(1, 1, dtype=torch.long))
    ]
    committed = sketch(torch.randn(1, 1, 16))
    tensors += [committed.indices, committed.values]
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
    assert len(opening.inputs) == 2000 and torch.equal(opening.inputs[-1][0], tensors[-4])
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
