"""Benchmark (not a test): what serving through real nodes costs over computing locally.

Measured in one run, on a random Llama with SmolLM2-135M's shape (hidden 576, 30 layers,
9 heads, 3 KV heads, intermediate 1536; built on the fly, nothing downloaded):

1. decode latency per token through 1, 2 and 3 local node processes (the blocks split evenly,
   paid per step through payment channels on a local Anvil), divided by the same blocks'
   decode latency run locally in this process with the same code;
2. decode latency per token through 1 node with commitments (leaf, sketch, receipt, ledger,
   Merkle commits) divided by the same node started with `--no-commitments`.

Every configuration decodes the same tokens after the same prompt. Each round runs every
configuration right after a local run of its own, and a configuration's ratio is the median over
rounds of (its median step / the local median step just before): load from other processes on
the machine drifts slowly, so neighbours see nearly the same load.

    .venv/bin/python benchmarks/bench_node.py [--tokens 16] [--rounds 8] [--layers 30]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from hivemind.p2p import P2P  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from node.blocks import Span, load_client_head, load_span  # noqa: E402
from node.cache import CacheManager  # noqa: E402
from stakeswarm.devnet import Devnet, DevnetConfig  # noqa: E402
from stakeswarm.home import Home  # noqa: E402
from tests.integration.nodes import (  # noqa: E402
    Hop,
    LoopThread,
    NodeProcess,
    NodeSpec,
    Payer,
    RouteSession,
    running_nodes,
)

THREADS = 2


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
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = root / "smollm2-135m-shape"
    model.save_pretrained(path)
    return path


def decode_times(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], head, prompt, tokens):  # noqa: ANN001, ANN201
    """Seconds of each decode step (embed, blocks, logits) after an untimed prefill."""
    ids, mask = prompt, torch.ones_like(prompt)
    out = step(head.embed(ids), mask)
    next_ids = head.logits(out)[:, -1].argmax(-1, keepdim=True)
    times = []
    for _ in range(tokens):
        mask = torch.cat([mask, torch.ones_like(next_ids)], 1)
        begin = time.perf_counter()
        out = step(head.embed(next_ids), mask)
        next_ids = head.logits(out)[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - begin)
    return times


def local_round(span: Span, head, prompt, tokens: int) -> list[float]:  # noqa: ANN001
    cache = CacheManager(4096).open(
        "bench", span.kv_layout, batch=1, max_length=prompt.shape[1] + tokens + 1
    )
    try:
        return decode_times(lambda h, m: span.forward(h, m, cache), head, prompt, tokens)
    finally:
        cache.close()


def remote_round(
    runner: LoopThread,
    p2p: P2P,
    payer: Payer,
    hops: list[Hop],
    head,
    prompt,
    tokens: int,  # noqa: ANN001
) -> list[float]:
    route = RouteSession(runner, p2p, payer, hops).open(prompt.shape[1] + tokens + 1)
    try:
        return decode_times(route.step, head, prompt, tokens)
    finally:
        route.close()


def splits(layers: int, parts: int) -> list[str]:
    bounds = [round(i * layers / parts) for i in range(parts + 1)]
    return [f"{a}:{b}" for a, b in zip(bounds, bounds[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16, help="decode steps per sample")
    parser.add_argument("--rounds", type=int, default=8, help="rounds over every configuration")
    parser.add_argument("--layers", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(THREADS)
    prompt = torch.tensor([[1, 200, 3000, 45, 678, 9000, 12, 345]])
    node_args = ("--threads", str(THREADS), "--commit-interval", "5", "--redeem-interval", "3600")

    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        root = Path(tmp)
        print(f"building the model ({args.layers} layers) ...", flush=True)
        model = build_model(root, args.layers)
        head = load_client_head(model)
        with Devnet.start(
            DevnetConfig(home=Home.resolve(root / "devnet"), accounts=12)
        ) as deployment:
            chain = deployment.connect()
            payer = Payer(deployment, chain)
            runner = LoopThread()
            configs: dict[str, list[NodeSpec]] = {}
            for count in (1, 2, 3):
                configs[f"{count} server(s)"] = [
                    NodeSpec(f"node-{i}", blocks, args=node_args)
                    for i, blocks in enumerate(splits(args.layers, count))
                ]
            configs["1 server, no commitments"] = [
                NodeSpec("node-3", f"0:{args.layers}", args=(*node_args, "--no-commitments"))
            ]
            results: dict[str, list[float]] = {name: [] for name in ["local", *configs]}
            ratios: dict[str, list[float]] = {name: [] for name in configs}
            span = load_span(model, 0, args.layers)
            swarms: list[tuple[str, list[Hop], P2P]] = []
            try:
                # every configuration's nodes run for the whole measurement
                with ExitStack() as stack:
                    for name, specs in configs.items():
                        print(f"starting {name} ...", flush=True)
                        workdir = root / name.replace(" ", "_").replace(",", "")
                        nodes: list[NodeProcess] = stack.enter_context(
                            running_nodes(deployment, workdir, model, specs)
                        )
                        maddrs = [m for n in nodes for m in n.maddrs]
                        p2p = runner.run(P2P.create(initial_peers=maddrs))
                        stack.callback(lambda p=p2p: runner.run(p.shutdown()))
                        hops = [
                            Hop(n, payer.open_channel(n.address, deposit=1000 * 10**18),
                                int(n.status()["price_per_token_per_block"]))
                            for n in nodes
                        ]  # fmt: skip
                        swarms.append((name, hops, p2p))
                    for r in range(args.rounds):
                        print(f"round {r + 1}/{args.rounds}", flush=True)
                        for name, hops, p2p in swarms:
                            # each configuration right after a local run: load drifts slowly,
                            # so the ratio of neighbours is steadier than either figure
                            local = local_round(span, head, prompt, args.tokens)
                            remote = remote_round(
                                runner, p2p, payer, hops, head, prompt, args.tokens
                            )
                            results["local"] += local
                            results[name] += remote
                            ratios[name].append(
                                statistics.median(remote) / statistics.median(local)
                            )
            finally:
                runner.close()

    median = {name: statistics.median(times) * 1000 for name, times in results.items()}
    ratio = {name: statistics.median(values) for name, values in ratios.items()}
    print()
    print(
        f"decode latency per token ({args.layers} layers, torch threads {THREADS}, "
        f"{args.rounds} rounds x {args.tokens} steps; ratio: median over rounds of the "
        "configuration against the local run just before it):"
    )
    print(f"  {'local (same blocks, this process)':<32} {median['local']:8.2f} ms")
    for name in configs:
        print(f"  {name:<32} {median[name]:8.2f} ms   {ratio[name]:.2f}x local")
    overhead = (ratio["1 server(s)"] / ratio["1 server, no commitments"] - 1) * 100
    print(f"  commitments overhead (1 server): {overhead:+.1f}%")


if __name__ == "__main__":
    main()
