"""Benchmark (not a test): tokens/s of `DistributedModelForCausalLM.generate` through the swarm,
divided by tokens/s of local Hugging Face `generate` on the same model and prompt.

Measured in one run, on a random Llama with SmolLM2-135M's shape (hidden 576, 30 layers,
9 heads, 3 KV heads, intermediate 1536, tied embeddings; built on the fly, nothing downloaded):
a local Anvil with every contract, `--servers` node processes splitting the blocks evenly, and
one client in this process that routes, opens channels, pays a voucher per step per server
and checks every receipt. Both sides decode greedily exactly `--tokens` new tokens after the
same prompt; a round times one whole `generate` call (prefill included) on each side, the
sides alternate round by round so that load from other processes hits them alike, and the
figure is the median over rounds. A first, untimed swarm round opens the channels.

    .venv/bin/python benchmarks/bench_client.py [--tokens 32] [--rounds 5] [--servers 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eth_account import Account  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from client.model import DistributedModelForCausalLM  # noqa: E402
from stakeswarm.devnet import Devnet, DevnetConfig  # noqa: E402
from stakeswarm.home import Home  # noqa: E402
from tests.integration.nodes import NodeSpec, running_nodes  # noqa: E402


def build_model(root: Path, layers: int) -> Path:
    """A random Llama with SmolLM2-135M's shape, saved as safetensors."""
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.041,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = root / "smollm2-135m-shape"
    model.save_pretrained(path)
    return path


def splits(layers: int, parts: int) -> list[str]:
    bounds = [round(i * layers / parts) for i in range(parts + 1)]
    return [f"{a}:{b}" for a, b in zip(bounds, bounds[1:], strict=False)]


def timed(generate, prompt: torch.Tensor, tokens: int) -> tuple[float, torch.Tensor]:  # noqa: ANN001
    """Tokens/s of one greedy `generate` of exactly `tokens` new tokens, and its output."""
    options = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    began = time.perf_counter()
    out = generate(prompt, **options)
    return tokens / (time.perf_counter() - began), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per generate call")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side")
    parser.add_argument("--servers", type=int, default=3, help="node processes")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the local model and of each node"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    prompt = torch.tensor([[1, 200, 3000, 45, 678, 9000, 12, 345]])
    node_args = (
        "--threads",
        str(args.threads),
        "--commit-interval",
        "5",
        "--redeem-interval",
        "3600",
    )

    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        root = Path(tmp)
        print(f"building the model ({args.layers} layers) ...", flush=True)
        path = build_model(root, args.layers)
        local = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        specs = [
            NodeSpec(f"node-{i}", blocks, args=node_args)
            for i, blocks in enumerate(splits(args.layers, args.servers))
        ]
        with Devnet.start(DevnetConfig(home=Home.resolve(root / "devnet"))) as deployment:
            print(f"starting {args.servers} node(s) ...", flush=True)
            with running_nodes(deployment, root / "nodes", path, specs) as nodes:
                wallet = Account.from_key(deployment.account("client-0").private_key)
                remote = DistributedModelForCausalLM.from_pretrained(
                    path,
                    initial_peers=[m for n in nodes for m in n.maddrs],
                    wallet=wallet,
                    deployment=deployment,
                    home=root / "client",
                )
                try:
                    timed(remote.generate, prompt, 4)  # route, channels, first touches
                    rates: dict[str, list[float]] = {"swarm": [], "local": []}
                    for r in range(args.rounds):
                        print(f"round {r + 1}/{args.rounds}", flush=True)
                        rate, swarm_out = timed(remote.generate, prompt, args.tokens)
                        rates["swarm"].append(rate)
                        rate, local_out = timed(local.generate, prompt, args.tokens)
                        rates["local"].append(rate)
                        same = swarm_out.tolist() == local_out.tolist()
                    paid = sum(c.signed_now for c in remote.client.payments.known_channels())
                finally:
                    remote.close()

    swarm, here = statistics.median(rates["swarm"]), statistics.median(rates["local"])
    print()
    print(
        f"greedy generate of {args.tokens} tokens after an {prompt.shape[1]}-token prompt, "
        f"median of {args.rounds} rounds ({args.layers} layers, {args.servers} server(s), "
        f"torch threads {args.threads}):"
    )
    print(f"  local Hugging Face generate   {here:8.2f} tokens/s")
    print(f"  swarm generate (paid)         {swarm:8.2f} tokens/s")
    print(f"  swarm / local                 {swarm / here:8.3f}")
    print(f"  same tokens as local: {'yes' if same else 'NO'}; paid {paid} base units in all")


if __name__ == "__main__":
    main()
