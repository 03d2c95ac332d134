"""Benchmark (not a test): resident memory of a node against the number of blocks it serves.

Nodes serving blocks [0, k) for several k (`--blocks`; by default a sixth, a third, a half and
all of the model's blocks: 5, 10, 15 and 30 for SmolLM2-135M) are started together on a local
Anvil, as `python -m node serve` processes. Each node's memory is read once it is ready, and
again after it served one paid session (a prompt of `--prompt` tokens, then `--tokens` decode
steps, batch 1, the session closed again): the RSS of the node's own process, and the PSS of
the node with every process it started (hivemind's DHT process, the libp2p daemons), which
counts the pages they share once. The blocks' float32 weights are given for comparison.

    .venv/bin/python benchmarks/bench_memory.py [--model smollm2] [--blocks 5,10,15,30]
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch
from common import (
    MODEL_HELP,
    SMOLLM2,
    BenchmarkError,
    Provenance,
    Stopwatch,
    bench_main,
    model_layers,
    nodes_started_together,
    option,
    process_memory,
    resolve_model,
)
from hivemind.p2p import P2P
from safetensors import safe_open

from client.network import EventLoopThread
from node.families import load_config
from stakeswarm.devnet import Devnet, DevnetConfig
from stakeswarm.direct import Hop, Payer, RouteSession
from stakeswarm.home import Home
from stakeswarm.swarm import NodeProcess, NodeSpec, accounts_for

SCRIPT = "bench_memory.py"
MIB = 2**20
FLOAT32 = 4  # bytes per parameter as a node holds its blocks (dtype float32)
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Options:
    """Which spans to measure and what each node serves before the second reading."""

    model: str = option(SMOLLM2, MODEL_HELP)
    blocks: tuple[int, ...] = option(
        (), "blocks per node, each from block 0 (default 1/6, 1/3, 1/2, all)"
    )
    prompt: int = option(128, "prompt tokens of the session each node serves")
    tokens: int = option(16, "decode steps of that session")
    threads: int = option(2, "torch threads per node")

    def __post_init__(self) -> None:
        for name in ("prompt", "tokens", "threads"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if any(k < 1 for k in self.blocks):
            raise BenchmarkError(f"--blocks must all be at least 1, got {self.blocks}")


QUICK = Options(prompt=16, tokens=4)  # run_all --quick also measures two spans only


@dataclass(frozen=True)
class NodeMemory:
    """One node's memory, in MiB."""

    blocks: int  # it served blocks [0, blocks)
    weights_mib: float  # those blocks' parameters in float32
    rss_ready_mib: float  # the node process, once ready
    rss_served_mib: float  # the node process, after serving one session
    pss_ready_mib: float  # the node and its DHT process and libp2p daemons, once ready
    pss_served_mib: float  # the same after serving one session


@dataclass(frozen=True)
class MemoryBenchResult:
    """Memory of nodes serving more and more blocks of one model."""

    options: Options
    model: str
    layers: int
    nodes: tuple[NodeMemory, ...]  # by blocks served, fewest first
    provenance: Provenance


def default_blocks(layers: int) -> tuple[int, ...]:
    """A sixth, a third, a half and all of `layers` (5, 10, 15, 30 for 30), without repeats."""
    return tuple(sorted({max(1, layers // 6), max(1, layers // 3), max(1, layers // 2), layers}))


def weights_bytes(model_path: Path, blocks: int) -> int:
    """Bytes of the float32 parameters of blocks [0, blocks), from the safetensors headers."""
    total = 0
    for file in sorted(model_path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (not a dict)
                match = _LAYER.search(name)
                if match and int(match.group(1)) < blocks:
                    total += prod(f.get_slice(name).get_shape()) * FLOAT32
    return total


def serve_one_session(
    runner: EventLoopThread, payer: Payer, node: NodeProcess, hidden_size: int, options: Options
) -> None:
    """One paid session through `node` alone: a prefill, then decode steps (random hidden
    states: the node's memory does not depend on their values)."""
    p2p = runner.run(P2P.create(initial_peers=node.maddrs))
    try:
        price = int(node.status()["price_per_token_per_block"])
        hop = Hop(node, payer.open_channel(node.address, deposit=1000 * 10**18), price)
        route = RouteSession(runner, p2p, payer, [hop]).open(options.prompt + options.tokens)
        try:
            mask = torch.ones(1, options.prompt, dtype=torch.long)
            route.step(torch.randn(1, options.prompt, hidden_size), mask)
            for _ in range(options.tokens):
                mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
                route.step(torch.randn(1, 1, hidden_size), mask)
        finally:
            route.close()
    finally:
        runner.run(p2p.shutdown())


def run(options: Options) -> MemoryBenchResult:
    """Start one node per span, read its memory, serve a session, read it again."""
    clock = Stopwatch(SCRIPT, options)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        model = resolve_model(options.model, root)
        layers = model_layers(model)
        sizes = options.blocks or default_blocks(layers)
        if max(sizes) > layers:
            raise BenchmarkError(f"{model.name} has {layers} blocks, asked for {max(sizes)}")
        hidden_size = int(load_config(model).hidden_size)
        specs = [NodeSpec(f"node-{i}", f"0:{k}") for i, k in enumerate(sizes)]
        devnet = DevnetConfig(home=Home.resolve(root / "devnet"), accounts=accounts_for(len(specs)))
        runner = EventLoopThread()
        try:
            with Devnet.start(devnet) as deployment:
                print(
                    f"starting {len(specs)} nodes of {model.name}: {sizes} blocks ...", flush=True
                )
                with nodes_started_together(
                    deployment, root / "nodes", model, specs, threads=options.threads
                ) as nodes:
                    ready = [process_memory(node.pid) for node in nodes]
                    payer = Payer(deployment, deployment.connect())
                    for node in nodes:
                        serve_one_session(runner, payer, node, hidden_size, options)
                    served = [process_memory(node.pid) for node in nodes]
        finally:
            runner.close()
        result = tuple(
            NodeMemory(
                blocks=k,
                weights_mib=round(weights_bytes(model, k) / MIB, 1),
                rss_ready_mib=round(before[0] / MIB, 1),
                rss_served_mib=round(after[0] / MIB, 1),
                pss_ready_mib=round(before[1] / MIB, 1),
                pss_served_mib=round(after[1] / MIB, 1),
            )
            for k, before, after in zip(sizes, ready, served, strict=True)
        )
    return MemoryBenchResult(options, model.name, layers, result, clock.provenance())


def main(argv: Sequence[str] | None = None) -> None:
    bench_main(Options, __doc__.split("\n\n")[0], argv, run, "memory_tables")


if __name__ == "__main__":
    main()
