"""Serving on a GPU: real node processes with `--device cuda` on Anvil, driven by a client.

Skipped on a machine without CUDA ("needs a CUDA device"); on a GPU machine it checks what an
operator and a client notice: a span served on cuda:0 in float32 gives the same greedy tokens
as local transformers, `--dtype auto` serves 16-bit (announced and reported as such) and a
client asking for that precision, with its own ends on the GPU, gets the local model's logits
within 16-bit rounding, and `/status` and `/metrics` show the GPU's memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from eth_account import Account

from client.model import DistributedModelForCausalLM
from ledger.deployment import Deployment
from node.blocks import load_client_head
from stakeswarm.tiny_models import load_reference_model
from tests.integration.nodes import (
    NodeProcess,
    NodeSpec,
    PaidSwarm,
    chain_snapshot,
    greedy_generate,
    paid_swarm,
    running_nodes,
)

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

NODE_ARGS = ("--commit-interval", "2", "--redeem-interval", "3600", "--cache-tokens", "4096")
PROMPT = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])


@pytest.fixture(scope="module")
def fp32_swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PaidSwarm]:
    """Blocks 0:3 and 3:6 on cuda:0 in float32."""
    chain = deployment.connect()
    workdir = tmp_path_factory.mktemp("cuda-nodes")
    args = (*NODE_ARGS, "--device", "cuda", "--dtype", "float32")
    specs = [NodeSpec("node-0", "0:3", args=args), NodeSpec("node-1", "3:6", args=args)]
    with (
        chain_snapshot(chain),
        running_nodes(deployment, workdir, model_path, specs) as nodes,
        paid_swarm(deployment, chain, nodes, model_path, workdir) as started,
    ):
        yield started


def test_a_span_on_cuda_gives_the_local_models_greedy_tokens(
    fp32_swarm: PaidSwarm, model_path: Path
) -> None:
    head = load_client_head(model_path)
    route = fp32_swarm.route()
    remote = greedy_generate(route, head, PROMPT, new_tokens=8)
    route.close()
    reference = load_reference_model(model_path)
    local = reference.generate(
        PROMPT, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(PROMPT)
    )
    assert remote.tolist() == local.tolist()


def _assert_reports_the_gpu(node: NodeProcess, dtype: str) -> None:
    status = node.status()
    assert status["dtype"] == dtype
    device = status["device"]
    assert device["name"] == "cuda:0"
    memory = device["memory"]
    free, total = torch.cuda.mem_get_info(0)
    assert memory["total_bytes"] == total
    assert 0 < memory["free_bytes"] <= total
    # the node holds at least its span's weights on the GPU
    assert memory["process_bytes"] >= device["planned"]["weights_bytes"]
    lines = node.metrics().splitlines()
    assert f'stakeswarm_serving{{device="cuda:0",dtype="{dtype}"}} 1.0' in lines
    assert any(
        line.startswith('stakeswarm_device_memory_free_bytes{device="cuda:0"}') for line in lines
    )


def test_status_and_metrics_report_the_gpu_and_its_memory(fp32_swarm: PaidSwarm) -> None:
    for node in fp32_swarm.nodes:
        _assert_reports_the_gpu(node, "float32")


def test_dtype_auto_serves_16_bit_and_a_client_on_the_gpu_gets_the_local_logits(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    expected = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
    chain = deployment.connect()
    workdir = tmp_path_factory.mktemp("cuda-auto")
    args = (*NODE_ARGS, "--device", "auto", "--dtype", "auto")
    with (
        chain_snapshot(chain),
        running_nodes(deployment, workdir, model_path, [NodeSpec("node-2", "0:6", args=args)]) as (
            node,
        ),
    ):
        _assert_reports_the_gpu(node, expected)
        wallet = Account.from_key(deployment.account("client-0").private_key)
        with DistributedModelForCausalLM.from_pretrained(
            model_path, initial_peers=node.maddrs, wallet=wallet, deployment=deployment,
            home=workdir / "client", dtype=expected, device="cuda",
        ) as model:  # fmt: skip
            assert model.head.device == torch.device("cuda", 0)
            remote = model(PROMPT).logits  # [1, tokens, vocab], back on the CPU
            generated = model.generate(PROMPT, max_new_tokens=4, do_sample=False)
        local = load_reference_model(model_path)(PROMPT).logits.detach()
        assert remote.device.type == "cpu" and remote.shape == local.shape
        # 16-bit rounding through 6 blocks: a few percent of the logits' scale
        torch.testing.assert_close(remote, local, atol=0.05 * float(local.abs().max()), rtol=0)
        assert generated.shape == (1, PROMPT.shape[1] + 4)
