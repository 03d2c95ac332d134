"""Canonical bytes and hashes of the hidden-state tensors that nodes receive and send.

A leaf commits `inputHash`/`outputHash` = `tensor_hash` of the exact tensors of a step. The
hash is over the tensor's DATA, independent of the transport: the row-major (C-contiguous)
elements in little-endian byte order, 4 bytes each for float32, 2 for float16, and 2 for
bfloat16 (its raw 16-bit words, read through a uint16 view — never upcast). Shape and dtype
are not part of the hash; they are fixed by the step (`[batch, tokens, hidden]`, the session
dtype). These are the bytes `node.protocol` and hivemind's uncompressed serialization put on
the wire, so a receiver can hash what it deserialized and get the sender's hash.

`tensor_from_bytes` inverts `tensor_bytes` (for a node's stored session inputs, reveals).

`check_hidden_states` and `check_attention_mask` are the one statement of what a step's
tensors must be; the node, its blocks, the client and the verifier each call them with the
rules they enforce and turn `BadTensorError` into their own refusal.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence

import torch
from eth_utils import keccak

from node.errors import BadTensorError, InvalidInputError, TensorProblem

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


def check_hidden_states(
    hidden: torch.Tensor,
    *,
    hidden_size: int,
    dtype: torch.dtype | Collection[torch.dtype] | None = None,
    batch: int | None = None,
    finite: bool = False,
    max_abs: float | None = None,
) -> None:
    """`BadTensorError` unless `hidden` is a tensor [batch, tokens, hidden_size] with at least
    one sequence and one token, and, where given: exactly `batch` sequences; in `dtype` (or in
    one of them); without NaN or infinity (`finite`); finite with no |value| over `max_abs`.
    The rules are checked in that order and the error names the first one broken."""
    if not isinstance(hidden, torch.Tensor):
        raise BadTensorError(
            TensorProblem.NOT_A_TENSOR,
            f"hidden states must be a tensor, got {type(hidden).__name__}",
        )
    # hidden: [batch, tokens, hidden_size]
    if hidden.ndim != 3 or hidden.shape[-1] != hidden_size:
        raise BadTensorError(
            TensorProblem.SHAPE,
            f"hidden states must be [batch, tokens, {hidden_size}], got {list(hidden.shape)}",
        )
    if min(hidden.shape[:2]) < 1:
        raise BadTensorError(TensorProblem.EMPTY, f"hidden states are empty: {list(hidden.shape)}")
    if batch is not None and hidden.shape[0] != batch:
        raise BadTensorError(
            TensorProblem.BATCH,
            f"the session's batch is {batch}, the hidden states have batch {hidden.shape[0]}",
        )
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if hidden.dtype not in allowed:
            raise BadTensorError(
                TensorProblem.DTYPE,
                f"hidden states are {_dtype_name(hidden.dtype)}, expected "
                + " or ".join(_dtype_name(d) for d in allowed),
            )
    if (finite or max_abs is not None) and not torch.isfinite(hidden).all():
        raise BadTensorError(TensorProblem.NOT_FINITE, "hidden states contain NaN or infinity")
    if max_abs is not None and (largest := float(hidden.abs().max())) > max_abs:
        raise BadTensorError(
            TensorProblem.TOO_LARGE,
            f"hidden states hold a value of magnitude {largest:.6g}, over {max_abs:g}",
        )


def check_prompts(
    prompts: torch.Tensor,
    *,
    blocks: int,
    hidden_size: int,
    dtype: torch.dtype,
    tokens: int,
    max_abs: float | None = None,
) -> None:
    """`BadTensorError` unless `prompts` is the deep prompts of a span of `blocks` blocks over
    a sequence of `tokens` positions: a finite tensor [blocks, P, hidden_size] in `dtype` with
    1 <= P <= tokens (they are added to the first P positions before each block), with no
    |value| over `max_abs` where given."""
    if not isinstance(prompts, torch.Tensor):
        raise BadTensorError(
            TensorProblem.NOT_A_TENSOR, f"prompts must be a tensor, got {type(prompts).__name__}"
        )
    # prompts: [blocks, P, hidden_size]
    if prompts.ndim != 3 or prompts.shape[0] != blocks or prompts.shape[2] != hidden_size:
        raise BadTensorError(
            TensorProblem.SHAPE,
            f"deep prompts must be [blocks, P, hidden_size] = [{blocks}, P, {hidden_size}], "
            f"got {list(prompts.shape)}",
        )
    if not 1 <= prompts.shape[1] <= tokens:
        raise BadTensorError(
            TensorProblem.SHAPE,
            f"deep prompts cover P = {prompts.shape[1]} positions, the sequence has {tokens}",
        )
    if prompts.dtype != dtype:
        raise BadTensorError(
            TensorProblem.DTYPE,
            f"prompts are {_dtype_name(prompts.dtype)}, expected {_dtype_name(dtype)}",
        )
    if not torch.isfinite(prompts).all():
        raise BadTensorError(TensorProblem.NOT_FINITE, "prompts contain NaN or infinity")
    if max_abs is not None and (largest := float(prompts.abs().max())) > max_abs:
        raise BadTensorError(
            TensorProblem.TOO_LARGE,
            f"prompts hold a value of magnitude {largest:.6g}, over {max_abs:g}",
        )


def check_attention_mask(
    mask: torch.Tensor, *, batch: int, length: int, any_integer: bool = False
) -> None:
    """`BadTensorError` unless `mask` is a tensor [batch, length] of 0/1 in int64 (the wire's
    mask dtype) or, with `any_integer`, in bool or any integer dtype."""
    if not isinstance(mask, torch.Tensor):
        raise BadTensorError(
            TensorProblem.NOT_A_TENSOR,
            f"the attention mask must be a tensor, got {type(mask).__name__}",
        )
    # mask: [batch, past + tokens]
    if tuple(mask.shape) != (batch, length):
        raise BadTensorError(
            TensorProblem.MASK_SHAPE,
            f"the attention mask must be [batch, past + tokens] = [{batch}, {length}], "
            f"got {list(mask.shape)}",
        )
    if any_integer and (mask.dtype.is_floating_point or mask.dtype.is_complex):
        raise BadTensorError(
            TensorProblem.MASK_DTYPE,
            f"the attention mask must be bool or integer, not {mask.dtype}",
        )
    if not any_integer and mask.dtype != torch.int64:
        raise BadTensorError(
            TensorProblem.MASK_DTYPE, f"the attention mask must be int64, got {mask.dtype}"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise BadTensorError(TensorProblem.MASK_VALUES, "attention mask values must be 0 or 1")


def _dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype))
