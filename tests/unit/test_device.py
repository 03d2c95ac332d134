"""Where a node computes and whether its span fits: `--device`/`--dtype` resolved by the rules an
operator reads in docs/operator.md, and the memory plan that refuses a span (or picks a shorter
one) before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from node.blocks import block_weight_bytes, load_span
from node.cache import KVLayout
from node.config import ConfigError, NodeConfig
from node.device import (
    DeviceError,
    device_memory,
    local_device,
    local_dtype,
    resolve_device,
    resolve_dtype,
)
from node.memory import MEMORY_HEADROOM, MemoryPlanError, SpanCost, plan_span
from stakeswarm.tiny_models import make_tiny_model

GIB = 2**30
CPU = torch.device("cpu")

# --- resolution --------------------------------------------------------------------------------


def test_auto_without_cuda_is_the_cpu_in_float32() -> None:
    device = resolve_device("auto", cuda_devices=0)
    assert device == CPU
    assert resolve_dtype("auto", device, bf16_supported=False) == "float32"


def test_auto_with_cuda_is_the_first_gpu_in_16_bit() -> None:
    device = resolve_device("auto", cuda_devices=2)
    assert device == torch.device("cuda", 0)
    assert resolve_dtype("auto", device, bf16_supported=True) == "bfloat16"
    assert resolve_dtype("auto", device, bf16_supported=False) == "float16"


def test_an_explicit_dtype_stands_on_any_device() -> None:
    assert resolve_dtype("bfloat16", CPU, bf16_supported=False) == "bfloat16"
    assert resolve_dtype("float32", torch.device("cuda", 0), bf16_supported=True) == "float32"


def test_cuda_n_names_that_device_when_the_machine_has_it() -> None:
    assert resolve_device("cuda:3", cuda_devices=4) == torch.device("cuda", 3)
    assert resolve_device("cuda", cuda_devices=1) == torch.device("cuda", 0)


def test_cuda_without_a_cuda_device_is_one_clear_error() -> None:
    with pytest.raises(DeviceError) as refused:
        resolve_device("cuda", cuda_devices=0)
    assert str(refused.value) == (
        "--device cuda: this machine has no CUDA device (torch sees none); use --device cpu or auto"
    )


def test_cuda_n_out_of_range_says_which_devices_exist() -> None:
    with pytest.raises(
        DeviceError, match=r"cuda:3: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"
    ):
        resolve_device("cuda:3", cuda_devices=2)


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:-1", "CPU", "mps"])
def test_a_misspelled_device_is_refused_by_the_config(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        NodeConfig(model_path=tmp_path, device=text, devnet=True)
    with pytest.raises(DeviceError):
        resolve_device(text, cuda_devices=1)


def test_a_misspelled_dtype_is_refused_by_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dtype must be auto, float32, float16, bfloat16"):
        NodeConfig(model_path=tmp_path, dtype="fp16", devnet=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_this_machine_without_cuda_serves_auto_on_the_cpu_in_float32() -> None:
    device = local_device("auto")
    assert device == CPU
    assert local_dtype("auto", device) == "float32"
    with pytest.raises(DeviceError, match="no CUDA device"):
        local_device("cuda:0")


def test_the_cpu_reports_its_memory() -> None:
    memory = device_memory(CPU)
    assert 0 < memory.free <= memory.total
    assert memory.used == memory.total - memory.free
    assert memory.process > 0  # this process's resident memory
    assert set(memory.to_json()) == {"total_bytes", "free_bytes", "used_bytes", "process_bytes"}


# --- planning ----------------------------------------------------------------------------------

# SmolLM2-135M's shape: 30 Llama blocks, hidden 576, MLP 1536, 9 heads, 3 KV heads of 64
SMOLLM2 = LlamaConfig(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
)


def _smollm2_cost(dtype: torch.dtype, cache_tokens: int = 16384) -> SpanCost:
    with torch.device("meta"):
        block = LlamaDecoderLayer(SMOLLM2, layer_idx=0)
    itemsize = torch.empty((), dtype=dtype).element_size()
    one_block = KVLayout(0, 1, num_kv_heads=3, head_dim=64, dtype=dtype, device=CPU)
    return SpanCost(
        block_bytes=(sum(p.numel() for p in block.parameters()) * itemsize,) * 30,
        cache_bytes_per_token=one_block.bytes_per_token,
        cache_tokens=cache_tokens,
    )


def test_a_whole_smollm2_in_float32_does_not_fit_one_gib() -> None:
    cost = _smollm2_cost(torch.float32)
    # a block: 3,540,096 numbers (q, k, v, o, 3 MLP matrices, 2 norms) = 13.5 MiB in float32;
    # its cache: 16,384 positions x 2 (keys, values) x 3 heads x 64 x 4 bytes = 24 MiB
    assert cost.block_bytes[0] == 3_540_096 * 4
    assert cost.cache(1) == 24 * 2**20
    fit = int(GIB * (1 - MEMORY_HEADROOM)) // (3_540_096 * 4 + 24 * 2**20)
    assert fit == 24
    with pytest.raises(MemoryPlanError) as refused:
        plan_span(cost, device="cuda:0", free=GIB, blocks=(0, 30))
    assert str(refused.value) == (
        "blocks 0:30 need ~1.10 GiB (weights 405.1 MiB + cache 720.0 MiB for 16384 tokens) "
        "but cuda:0 has 1.00 GiB free (921.6 MiB usable after a 10% headroom): "
        "at most 24 blocks fit"
    )


def test_without_blocks_or_a_length_the_most_that_fit_serve() -> None:
    plan = plan_span(_smollm2_cost(torch.float32), device="cuda:0", free=GIB)
    assert plan.length == 24
    assert plan.need <= plan.usable < plan.free == GIB


def test_a_length_that_fits_serves_and_one_that_does_not_is_refused() -> None:
    cost = _smollm2_cost(torch.float32)
    assert plan_span(cost, device="cpu", free=GIB, num_blocks=10).length == 10
    with pytest.raises(MemoryPlanError, match=r"^25 blocks need .* at most 24 blocks fit$"):
        plan_span(cost, device="cpu", free=GIB, num_blocks=25)


def test_bfloat16_halves_the_need_and_the_whole_model_fits() -> None:
    plan = plan_span(_smollm2_cost(torch.bfloat16), device="cuda:0", free=GIB)
    assert plan.length == 30  # never more than the model has
    assert plan.weights == 30 * 3_540_096 * 2 and plan.cache == 30 * 12 * 2**20


def test_a_smaller_cache_budget_makes_room_for_more_blocks() -> None:
    plan = plan_span(_smollm2_cost(torch.float32, cache_tokens=2048), device="cuda:0", free=GIB)
    assert plan.length == 30


def test_when_not_one_block_fits_the_refusal_says_what_to_lower() -> None:
    with pytest.raises(MemoryPlanError) as refused:
        plan_span(_smollm2_cost(torch.float32), device="cpu", free=32 * 2**20)
    message = str(refused.value)
    assert message.startswith("one block needs ~37.5 MiB")
    assert message.endswith("at most 0 blocks fit; lower --cache-tokens or free memory")


# --- what a span weighs, before it loads -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_bytes_from_the_headers_are_what_the_loaded_block_holds(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    path = make_tiny_model(tmp_path, "qwen2", 3, shards=2)  # Qwen2: q/k/v biases too
    sizes = block_weight_bytes(path, dtype)
    assert len(sizes) == 3
    span = load_span(path, 1, 2, dtype)
    assert sizes[1] == sum(p.numel() * p.element_size() for p in span.parameters())
