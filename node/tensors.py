"""Canonical bytes and hashes of the hidden-state tensors that nodes receive and send.

A leaf commits `inputHash`/`outputHash` = `tensor_hash` of the exact tensors of a step. The
hash is over the tensor's DATA, independent of the transport: the row-major (C-contiguous)
elements in little-endian byte order, 4 bytes each for float32, 2 for float16, and 2 for
bfloat16 (its raw 16-bit words, read through a uint16 view — never upcast). Shape and dtype
are not part of the hash; they are fixed by the step (`[batch, tokens, hidden]`, the session
dtype). These are the bytes `node.protocol` and hivemind's uncompressed serialization put on
the wire, so a receiver can hash what it deserialized and get the sender's hash.

`tensor_from_bytes` inverts `tensor_bytes` (for a node's stored session inputs, reveals).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from eth_utils import keccak

from node.errors import InvalidInputError

# Wire names of the dtypes hidden states travel in.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

if sys.byteorder != "little":  # torch/numpy write native order; every supported host is LE
    raise ImportError("node.tensors assumes a little-endian host")


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype of a wire dtype name ("float32", "float16", "bfloat16")."""
    try:
        return DTYPES[name]
    except KeyError:
        raise InvalidInputError(
            f"unsupported dtype {name!r}; expected one of {list(DTYPES)}"
        ) from None


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The canonical data bytes of a float32/float16/bfloat16 tensor (see the module doc)."""
    if tensor.dtype not in DTYPE_NAMES:
        raise InvalidInputError(
            f"cannot hash a {tensor.dtype} tensor; expected one of {list(DTYPES)}"
        )
    data = tensor.detach().cpu().contiguous()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.uint16)  # numpy has no bfloat16: the raw 16-bit words
    return data.numpy().tobytes()


def tensor_hash(tensor: torch.Tensor) -> bytes:
    """keccak256 of `tensor_bytes(tensor)`: 32 bytes, the leaf's input/output hash."""
    return keccak(tensor_bytes(tensor))


def tensor_from_bytes(data: bytes, dtype: str | torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """Rebuild the tensor whose `tensor_bytes` are `data`; raises `InvalidInputError` when the
    byte count does not match the shape and dtype."""
    torch_dtype = dtype_from_name(dtype) if isinstance(dtype, str) else dtype
    if torch_dtype not in DTYPE_NAMES:
        raise InvalidInputError(f"unsupported dtype {torch_dtype}; expected one of {list(DTYPES)}")
    if any(size < 0 for size in shape):
        raise InvalidInputError(f"negative size in shape {list(shape)}")
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    numel = 1
    for size in shape:
        numel *= size
    if len(data) != numel * itemsize:
        raise InvalidInputError(
            f"{len(data)} bytes do not hold a {torch_dtype} tensor of shape {list(shape)} "
            f"({numel * itemsize} bytes)"
        )
    if numel == 0:
        return torch.empty(tuple(shape), dtype=torch_dtype)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return raw.view(torch_dtype).reshape(tuple(shape))
