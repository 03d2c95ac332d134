"""Tensor hashes are of the data bytes as sent: equal across transports, exact, per dtype."""

from __future__ import annotations

import pytest
import torch
from eth_utils import keccak
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import runtime_pb2

from node.errors import InvalidInputError
from node.tensors import DTYPES, tensor_bytes, tensor_from_bytes, tensor_hash


def hidden(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0)).to(dtype)


def test_known_bytes_for_every_dtype() -> None:
    # 1.0 and -2.0: float32 3f800000 c0000000, float16 3c00 c000, bfloat16 3f80 c000 (LE)
    values = torch.tensor([1.0, -2.0])
    assert tensor_bytes(values) == bytes.fromhex("0000803f000000c0")
    assert tensor_bytes(values.half()) == bytes.fromhex("003c00c0")
    assert tensor_bytes(values.bfloat16()) == bytes.fromhex("803f00c0")
    assert tensor_hash(values) == keccak(bytes.fromhex("0000803f000000c0"))


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
def test_the_hash_is_that_of_the_bytes_on_the_wire(dtype: torch.dtype) -> None:
    from node.protocol import serialize_tensor

    tensor = hidden(dtype)
    assert keccak(serialize_tensor(tensor).buffer) == tensor_hash(tensor)

    # hivemind's own serialization: by default it upcasts bfloat16 to 4-byte floats on the
    # wire, yet the hash of what arrives is the sender's hash — it is of the data, not the bytes
    # of one transport.
    wire = serialize_torch_tensor(tensor, runtime_pb2.CompressionType.NONE)
    if dtype != torch.bfloat16:
        assert keccak(wire.buffer) == tensor_hash(tensor)
    assert tensor_hash(deserialize_torch_tensor(wire)) == tensor_hash(tensor)


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
def test_bytes_round_trip(dtype: torch.dtype) -> None:
    tensor = hidden(dtype)
    again = tensor_from_bytes(tensor_bytes(tensor), str(dtype).removeprefix("torch."), (2, 3, 8))
    assert again.dtype == dtype and torch.equal(again, tensor)


def test_layout_does_not_matter_but_every_bit_does() -> None:
    tensor = hidden(torch.float32)
    strided = tensor.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not strided.is_contiguous()
    assert tensor_hash(strided) == tensor_hash(tensor)
    flipped = tensor.clone()
    flipped.view(torch.int32)[0, 0, 0] ^= 1  # one ulp
    assert tensor_hash(flipped) != tensor_hash(tensor)
    assert tensor_hash(tensor.half()) != tensor_hash(tensor.bfloat16())


def test_unsupported_tensors_and_bad_bytes_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="int64"):
        tensor_hash(torch.arange(3))
    with pytest.raises(InvalidInputError, match="do not hold"):
        tensor_from_bytes(b"\x00" * 10, "float32", (3,))
    with pytest.raises(InvalidInputError, match="float64"):
        tensor_from_bytes(b"\x00" * 8, "float64", (1,))
