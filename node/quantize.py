"""Quantized serving precisions: a span's linear weights in int8 or nf4 (bitsandbytes).

A node may serve with its blocks' linear layers quantized (`node serve --quantize int8|nf4`),
computing in a 16-bit dtype (bfloat16 or float16). What it serves is then its own precision,
`bfloat16+int8` for example (`precision_name`): announced in its DHT record, committed in every
leaf (the sketch, version 3, carries the quantization's code, `node.sketch`), chosen by clients
(`ClientConfig.quantization`) and audited by verifiers with the same quantization
(`verifier.blockwise`). A node never serves a precision other than the one it declared.

Quantizing is deterministic: the weights are read in the compute dtype (as every 16-bit node
reads them), then bitsandbytes quantizes them, int8 row by row (absmax, LLM.int8's
`Linear8bitLt`, outliers above `INT8_THRESHOLD` kept apart as transformers does) or nf4 in
blocks of 64 (`Linear4bit`, QLoRA's format). A verifier quantizing the same checkpoint gets the
same integers; only the kernels that multiply with them differ between machines, which the
blockwise audit's tolerances absorb (it also tries `dequantized`, the weights multiplied back
out, as another machine's kernel would).

Only the decoder blocks' `nn.Linear` layers are quantized: norms, rotary embeddings and the
client's ends stay in the compute dtype.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from node.errors import InvalidInputError
from node.precisions import QUANTIZATIONS

QUANTIZED_DTYPES = (torch.bfloat16, torch.float16)  # quantized nodes compute in these
INT8_THRESHOLD = 0.0  # no outlier decomposition (module doc)
NF4_BLOCKSIZE = 64  # bitsandbytes' default for 4-bit weights
# Bytes each weight of a quantized linear layer takes, scales included, for the memory plan:
# int8, one byte plus a float32 scale per row (under 1% for rows of 400 inputs or more); nf4,
# half a byte plus a float32 absmax per block of 64.
BYTES_PER_WEIGHT = {"int8": 1.01, "nf4": 0.5 + 4.0 / NF4_BLOCKSIZE}


def check_quantization(quantization: str | None, dtype: torch.dtype) -> None:
    """`InvalidInputError` unless `quantization` is None or one of `QUANTIZATIONS` computed
    in a 16-bit dtype."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise InvalidInputError(
            f"unknown quantization {quantization!r}; expected one of {', '.join(QUANTIZATIONS)}"
        )
    if dtype not in QUANTIZED_DTYPES:
        raise InvalidInputError(
            f"{quantization} weights compute in bfloat16 or float16, not {dtype}: "
            "serve with --dtype bfloat16 (or float16)"
        )


class _SaidOnce(logging.Filter):
    """Drops bitsandbytes' note that LLM.int8 casts bfloat16 inputs to float16 (logged on every
    layer call): it is what every bfloat16+int8 node and verifier does."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _bnb() -> Any:
    # bitsandbytes' CPU backend tries to fetch an optional kernel from a hub and logs a warning
    # when it cannot (always, offline); it then uses its own kernels, so the warning is noise
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # LLM.int8 quantizes a layer's inputs from float16: a bfloat16 node's are cast first, on
    # every node and verifier alike (documented behaviour, said once here, not every call)
    cast = logging.getLogger("bitsandbytes.autograd._functions")
    if _SaidOnce not in {type(f) for f in cast.filters}:
        cast.addFilter(_SaidOnce())
    import bitsandbytes

    return bitsandbytes


def _quantized_linear(linear: nn.Linear, quantization: str, dtype: torch.dtype) -> nn.Module:
    bnb = _bnb()
    weight = linear.weight.detach().to(dtype)
    bias = linear.bias
    device = linear.weight.device
    module: nn.Module
    if quantization == "int8":
        module = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            has_fp16_weights=False,
            threshold=INT8_THRESHOLD,
            device="meta",
        )
        module.weight = bnb.nn.Int8Params(
            weight.cpu().clone(), requires_grad=False, has_fp16_weights=False
        )
    else:
        module = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            compute_dtype=dtype,
            quant_type="nf4",
            device="meta",
        )
        module.weight = bnb.nn.Params4bit(
            weight.cpu().clone(), requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCKSIZE
        )
    if bias is not None:
        module.bias = nn.Parameter(bias.detach().to(dtype).cpu().clone(), requires_grad=False)
    # moving to a device is what quantizes (bitsandbytes' parameters do it in `.to`)
    module = module.to(device)
    module.requires_grad_(False)
    module.eval()
    return module


def quantize_layers(layers: nn.ModuleList, quantization: str, dtype: torch.dtype) -> None:
    """Replace, in place, every `nn.Linear` inside `layers` (weights in `dtype`) by its
    `quantization`'s bitsandbytes layer."""
    check_quantization(quantization, dtype)
    for layer in layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, _quantized_linear(child, quantization, dtype))


def dequantized(layers: nn.ModuleList, dtype: torch.dtype) -> nn.ModuleList:
    """A copy of quantized `layers` whose quantized linears are plain `nn.Linear`s holding
    the dequantized weights in `dtype`: the same numbers multiplied by another kernel (or, in
    float32, the reference a verifier measures precision against)."""
    bnb = _bnb()
    out = copy.deepcopy(layers)
    for layer in out:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, bnb.nn.Linear8bitLt | bnb.nn.Linear4bit):
                    setattr(parent, name, _dequantized_linear(child, dtype))
    return out.to(dtype)


def _dequantized_linear(module: Any, dtype: torch.dtype) -> nn.Linear:
    bnb = _bnb()
    weight = module.weight
    if isinstance(weight, bnb.nn.Params4bit):
        full = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    else:
        scale = module.state.SCB if module.state.SCB is not None else weight.SCB
        full = weight.data.float() * (scale.float().unsqueeze(1) / 127.0)
    linear = nn.Linear(
        module.in_features,
        module.out_features,
        bias=module.bias is not None,
        device=weight.device,
        dtype=dtype,
    )
    linear.weight = nn.Parameter(full.to(dtype), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
    linear.eval()
    return linear


def weight_bytes(numel: int, linear_numel: int, quantization: str | None, itemsize: int) -> int:
    """Bytes a block of `numel` weights takes when its `linear_numel` linear weights are
    quantized (the rest stay at `itemsize` bytes)."""
    if quantization is None:
        return numel * itemsize
    rest = numel - linear_numel
    return int(rest * itemsize + linear_numel * BYTES_PER_WEIGHT[quantization])
