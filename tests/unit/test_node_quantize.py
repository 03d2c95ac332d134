"""Quantized serving precisions (`node.quantize`): what an operator asks for with `--quantize`,
what the node loads and announces, and what every leaf commits (sketch version 3)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from eth_utils import keccak
from torch import nn

from node.blocks import block_weight_bytes, load_span
from node.config import ConfigError, NodeConfig
from node.device import resolve_dtype
from node.errors import InvalidInputError
from node.protocol import ProtocolError, ServerInfo, ServerState
from node.quantize import dequantized
from node.sketch import Sketch, mask_hash, sketch
from node.throughput import get_throughput
from stakeswarm.tiny_models import make_tiny_model

ADDRESS = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("quantized"), "llama", 4)


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_a_quantized_span_serves_close_to_full_weights(llama: Path, quantization: str) -> None:
    full = load_span(llama, 0, 2, torch.bfloat16)
    quantized = load_span(llama, 0, 2, torch.bfloat16, quantization=quantization)
    assert quantized.quantization == quantization and full.quantization is None
    assert not any(type(m) is nn.Linear for m in quantized.layers.modules())
    assert quantization in repr(quantized)
    hidden = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    ours, theirs = quantized.forward(hidden).float(), full.forward(hidden).float()
    error = float((ours - theirs).norm() / theirs.norm())
    assert 0 < error < (0.05 if quantization == "int8" else 0.25)  # nf4 keeps 4 bits
    again = load_span(llama, 0, 2, torch.bfloat16, quantization=quantization)
    assert torch.equal(again.forward(hidden), quantized.forward(hidden))  # deterministic
    # the same integers multiplied back out: full-size weights, close to the output
    plain = dequantized(quantized.layers, torch.float32)
    assert all(type(m) is not nn.Linear or m.weight.dtype == torch.float32 for m in plain.modules())


def test_quantized_weights_take_less_memory(llama: Path) -> None:
    full = block_weight_bytes(llama, torch.bfloat16)
    int8 = block_weight_bytes(llama, torch.bfloat16, "int8")
    nf4 = block_weight_bytes(llama, torch.bfloat16, "nf4")
    assert all(f * 0.45 < i < f * 0.6 for f, i in zip(full, int8, strict=True))
    assert all(n < i * 0.7 for n, i in zip(nf4, int8, strict=True))


def test_quantized_weights_compute_in_16_bits(llama: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="compute in bfloat16 or float16"):
        load_span(llama, 0, 1, torch.float32, quantization="int8")
    with pytest.raises(InvalidInputError, match="unknown quantization 'int4'"):
        load_span(llama, 0, 1, torch.bfloat16, quantization="int4")
    with pytest.raises(ConfigError, match="compute in bfloat16 or float16, not float32"):
        NodeConfig(model_path=tmp_path, devnet=True, quantize="int8")
    with pytest.raises(ConfigError, match="quantize must be int8, nf4"):
        NodeConfig(model_path=tmp_path, devnet=True, dtype="bfloat16", quantize="fp8")
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, bf16_supported=False, quantized=True) == "bfloat16"
    assert resolve_dtype("auto", cpu, bf16_supported=False) == "float32"


def test_the_record_says_the_precision_and_refuses_impossible_ones() -> None:
    info = ServerInfo(
        ServerState.ONLINE, 0, 4, 10.0, 5, ADDRESS, "bfloat16", 100, quantization="nf4"
    )
    wire = info.to_wire()
    assert wire["quant"] == "nf4" and info.precision == "bfloat16+nf4"
    assert ServerInfo.from_wire(wire) == info
    full = ServerInfo(ServerState.ONLINE, 0, 4, 10.0, 5, ADDRESS, "bfloat16", 100)
    assert "quant" not in full.to_wire() and ServerInfo.from_wire(full.to_wire()) == full
    for dtype, quant in (("bfloat16", "int4"), ("float32", "int8")):
        with pytest.raises(ProtocolError, match="is not a precision"):
            ServerInfo.from_wire({**wire, "dtype": dtype, "quant": quant})


def test_a_version_3_sketch_commits_the_quantization() -> None:
    hidden = torch.zeros(1, 2, 10)
    hidden[0, 0, [7, 2, 5]] = torch.tensor([3.0, -5.0, 1.0])
    masked, states = mask_hash(torch.ones(1, 2), 2), keccak(b"block states")
    full = sketch(hidden, k=3, mask_hash=masked, states_hash=states)
    int8 = sketch(hidden, k=3, mask_hash=masked, states_hash=states, quantization="int8")
    nf4 = sketch(hidden, k=3, mask_hash=masked, states_hash=states, quantization="nf4")
    assert int8.encode() == struct.pack("<B", 3) + full.encode()[1:] + b"\x01"
    assert nf4.encode()[-1] == 2
    assert len({full.hash(), int8.hash(), nf4.hash()}) == 3  # a leaf says which it served
    assert Sketch.decode(int8.encode()).quantization == "int8"
    assert Sketch.decode(full.encode()).quantization is None
    with pytest.raises(InvalidInputError, match="needs block states"):
        sketch(hidden, k=3, mask_hash=masked, quantization="int8")


def test_a_quantized_span_measures_its_own_throughput(llama: Path, tmp_path: Path) -> None:
    """The throughput cache holds one measurement per precision: a node switching to int8
    weights measures again instead of announcing its bfloat16 speed."""
    full = get_throughput(load_span(llama, 0, 2, torch.bfloat16), "tiny", tmp_path, steps=2)
    quantized = load_span(llama, 0, 2, torch.bfloat16, quantization="int8")
    measured = get_throughput(quantized, "tiny", tmp_path, steps=2)
    assert (full.dtype, measured.dtype) == ("bfloat16", "bfloat16+int8")
    assert measured.key != full.key and measured.measured_at >= full.measured_at
