"""Benchmark (not a test): what serving through real nodes costs over computing locally.

Measured in one run, on `--model` (default: the real SmolLM2-135M-Instruct):

1. decode latency per token and prefill throughput through 1, 2 and 3 local node processes
   (`python -m node serve`, the blocks split evenly, every step paid with a signed voucher
   through payment channels on a local Anvil), against the same blocks run in this process
   with the same code;
2. the same through 1 node with commitments (leaf, sketch, EIP-712 receipt, ledger, Merkle
   commits every `--commit-interval` s) against 1 node built without commitments
   (`uncommitted_node.py`: receipts unsigned, nothing stored or committed).

A sample is one session: a prompt of `--prompt` tokens (the prefill, timed), then `--tokens`
decode steps (each timed: embed, blocks, LM head of the last position; batch 1). Each round
runs every configuration right after a local sample of its own, and a configuration's ratio
in that round is its figure over that local figure: load from other processes drifts slowly,
so neighbours see nearly the same load. The result gives the median and range over rounds.
The two single-node configurations run back to back, in alternating order, and a round's
commitments overhead is (median step with commitments / without) - 1.

    .venv/bin/python benchmarks/bench_node.py [--model smollm2] [--prompt 128] [--tokens 16] [--rounds 8]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    MODEL_HELP,
    SMOLLM2,
    BenchmarkError,
    Provenance,
    Spread,
    Stopwatch,
    bench_main,
    model_layers,
    nodes_started_together,
    option,
    prompt_ids,
    resolve_model,
)
from hivemind.p2p import P2P

from client.network import EventLoopThread
from node.blocks import ClientHead, Span, load_client_head, load_span
from node.cache import CacheManager
from node.families import load_config
from stakeswarm.devnet import Devnet, DevnetConfig
from stakeswarm.direct import Hop, Payer, RouteSession
from stakeswarm.home import Home
from stakeswarm.swarm import NodeSpec, accounts_for, split_blocks

SCRIPT = "bench_node.py"
WITH_COMMITMENTS = "1 server"
WITHOUT_COMMITMENTS = "1 server, no commitments"
# `node serve` with parts that sign, store and commit nothing: the baseline
UNCOMMITTED_NODE = Path(__file__).resolve().with_name("uncommitted_node.py")
DEPOSIT = 1000 * 10**18  # per channel: more than any run spends

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Options:
    """What `bench_node.py` measures and how long."""

    model: str = option(SMOLLM2, MODEL_HELP)
    prompt: int = option(128, "prompt tokens per sample (the timed prefill)")
    tokens: int = option(16, "decode steps per sample")
    rounds: int = option(8, "rounds over every configuration")
    threads: int = option(2, "torch threads here and in each node")
    commit_interval: float = option(5.0, "seconds between a node's commits")

    def __post_init__(self) -> None:
        for name in ("prompt", "tokens", "rounds", "threads"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.commit_interval > 0:
            raise BenchmarkError(f"--commit-interval must be positive, got {self.commit_interval}")


QUICK = Options(prompt=16, tokens=4, rounds=2)  # a smoke pass: the tooling, not the figures


@dataclass(frozen=True)
class Sample:
    """One session's timings, in seconds."""

    prefill: float  # the prompt's step
    steps: tuple[float, ...]  # each decode step

    @property
    def step(self) -> float:
        return statistics.median(self.steps)


@dataclass(frozen=True)
class Configuration:
    """One way of serving the model, measured against local samples taken just before."""

    name: str  # e.g. "2 servers"
    spans: tuple[str, ...]  # each node's blocks, START:END
    commitments: bool
    decode_ms: Spread  # per round: the median decode step, ms
    prefill_tokens_per_s: Spread  # per round: prompt tokens / prefill seconds
    decode_ratio: Spread  # per round: decode step / the local one before it
    prefill_ratio: Spread  # per round: prefill time / the local one before it

    @property
    def servers(self) -> int:
        return len(self.spans)


@dataclass(frozen=True)
class NodeBenchResult:
    """Decode and prefill through 1, 2 and 3 servers against local, with and without
    commitments."""

    options: Options
    model: str  # the model folder's name
    layers: int
    local_decode_ms: Spread  # over every local sample: its median decode step
    local_prefill_tokens_per_s: Spread  # over every local sample
    configurations: tuple[Configuration, ...]
    commitments_overhead: Spread  # per round: decode step with / without commitments - 1
    prefill_commitments_overhead: Spread  # per round: the same for the prefill
    provenance: Provenance

    def configuration(self, name: str) -> Configuration:
        for config in self.configurations:
            if config.name == name:
                return config
        raise KeyError(name)


def timed_session(step: Step, head: ClientHead, prompt: torch.Tensor, tokens: int) -> Sample:
    """Prefill `prompt` [1, prompt] then decode `tokens` tokens greedily through `step`."""
    mask = torch.ones_like(prompt)
    began = time.perf_counter()
    out = step(head.embed(prompt), mask)
    next_ids = head.logits(out[:, -1:])[:, -1].argmax(-1, keepdim=True)  # [1, 1]
    prefill = time.perf_counter() - began
    steps = []
    for _ in range(tokens):
        mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
        began = time.perf_counter()
        out = step(head.embed(next_ids), mask)
        next_ids = head.logits(out[:, -1:])[:, -1].argmax(-1, keepdim=True)
        steps.append(time.perf_counter() - began)
    return Sample(prefill, tuple(steps))


def local_sample(span: Span, head: ClientHead, prompt: torch.Tensor, tokens: int) -> Sample:
    """The whole model's blocks in this process, through the node's own cache and code."""
    length = prompt.shape[1] + tokens + 1
    with CacheManager(length).open("bench", span.kv_layout, batch=1, max_length=length) as cache:
        return timed_session(lambda h, m: span.forward(h, m, cache), head, prompt, tokens)


def remote_sample(
    route: Callable[[], RouteSession], head: ClientHead, prompt: torch.Tensor, tokens: int
) -> Sample:
    session = route().open(prompt.shape[1] + tokens + 1)
    try:
        return timed_session(session.step, head, prompt, tokens)
    finally:
        session.close()


def plans(layers: int) -> dict[str, tuple[list[str], bool]]:
    """Configuration name -> (each node's span, commitments on)."""
    whole = [f"0:{layers}"]
    return {
        WITH_COMMITMENTS: (whole, True),
        WITHOUT_COMMITMENTS: (whole, False),
        **{
            f"{n} servers": ([f"{a}:{b}" for a, b in split_blocks(layers, n)], True) for n in (2, 3)
        },
    }


def summarise(
    name: str,
    spans: list[str],
    commitments: bool,
    pairs: Sequence[tuple[Sample, Sample]],
    prompt: int,
) -> Configuration:
    """A configuration's figures from its rounds' (local, remote) samples."""
    return Configuration(
        name=name,
        spans=tuple(spans),
        commitments=commitments,
        decode_ms=Spread.of([remote.step * 1e3 for _, remote in pairs]),
        prefill_tokens_per_s=Spread.of([prompt / remote.prefill for _, remote in pairs]),
        decode_ratio=Spread.of([remote.step / local.step for local, remote in pairs]),
        prefill_ratio=Spread.of([remote.prefill / local.prefill for local, remote in pairs]),
    )


def run(options: Options) -> NodeBenchResult:
    """Start the nodes of every configuration, measure `options.rounds` rounds, stop them."""
    clock = Stopwatch(SCRIPT, options)
    torch.set_num_threads(options.threads)
    node_args = ("--commit-interval", str(options.commit_interval), "--redeem-interval", "3600")
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        root = Path(tmp)
        model = resolve_model(options.model, root)
        layers = model_layers(model)
        if layers < 3:
            raise BenchmarkError(f"{model.name} has {layers} blocks: 3 servers need at least 3")
        head = load_client_head(model)
        span = load_span(model, 0, layers)
        prompt = prompt_ids(int(load_config(model).vocab_size), options.prompt)
        configs = plans(layers)
        specs: dict[str, list[NodeSpec]] = {}
        every: list[NodeSpec] = []
        for name, (spans, commitments) in configs.items():
            program = ("-m", "node") if commitments else (str(UNCOMMITTED_NODE),)
            specs[name] = [
                NodeSpec(f"node-{len(every) + i}", b, args=node_args, program=program)
                for i, b in enumerate(spans)
            ]
            every += specs[name]
        devnet = DevnetConfig(home=Home.resolve(root / "devnet"), accounts=accounts_for(len(every)))
        runner = EventLoopThread()
        pairs: dict[str, list[tuple[Sample, Sample]]] = {name: [] for name in configs}
        try:
            with Devnet.start(devnet) as deployment:
                print(
                    f"starting {len(every)} nodes of {model.name} ({layers} blocks) ...", flush=True
                )
                with nodes_started_together(
                    deployment, root / "nodes", model, every, threads=options.threads
                ) as nodes:
                    by_account = {node.name: node for node in nodes}
                    payer = Payer(deployment, deployment.connect())
                    routes: dict[str, Callable[[], RouteSession]] = {}
                    clients: list[P2P] = []
                    for name, group in specs.items():
                        members = [by_account[spec.account] for spec in group]
                        p2p = runner.run(
                            P2P.create(initial_peers=[m for n in members for m in n.maddrs])
                        )
                        clients.append(p2p)
                        hops = [
                            Hop(n, payer.open_channel(n.address, deposit=DEPOSIT),
                                int(n.status()["price_per_token_per_block"]))
                            for n in members
                        ]  # fmt: skip
                        routes[name] = lambda p=p2p, h=hops: RouteSession(runner, p, payer, h)
                    # untimed: the first session of each kind pays one-time costs (lazy
                    # initialisation in torch, first connections, first ledger writes)
                    local_sample(span, head, prompt, 1)
                    for route in routes.values():
                        remote_sample(route, head, prompt, 1)
                    for r in range(options.rounds):
                        print(f"round {r + 1}/{options.rounds}", flush=True)
                        single = [WITH_COMMITMENTS, WITHOUT_COMMITMENTS]
                        order = [
                            *(single if r % 2 == 0 else single[::-1]),
                            "2 servers",
                            "3 servers",
                        ]
                        for name in order:
                            local = local_sample(span, head, prompt, options.tokens)
                            remote = remote_sample(routes[name], head, prompt, options.tokens)
                            pairs[name].append((local, remote))
                    for p2p in clients:
                        runner.run(p2p.shutdown())
        finally:
            runner.close()

    locals_ = [local for rounds in pairs.values() for local, _ in rounds]
    with_, without = pairs[WITH_COMMITMENTS], pairs[WITHOUT_COMMITMENTS]
    return NodeBenchResult(
        options=options,
        model=model.name,
        layers=layers,
        local_decode_ms=Spread.of([s.step * 1e3 for s in locals_]),
        local_prefill_tokens_per_s=Spread.of([options.prompt / s.prefill for s in locals_]),
        configurations=tuple(
            summarise(name, spans, commitments, pairs[name], options.prompt)
            for name, (spans, commitments) in configs.items()
        ),
        commitments_overhead=Spread.of(
            [a.step / b.step - 1 for (_, a), (_, b) in zip(with_, without, strict=True)]
        ),
        prefill_commitments_overhead=Spread.of(
            [a.prefill / b.prefill - 1 for (_, a), (_, b) in zip(with_, without, strict=True)]
        ),
        provenance=clock.provenance(),
    )


def main(argv: Sequence[str] | None = None) -> None:
    bench_main(Options, __doc__.split("\n\n")[0], argv, run, "node_tables")


if __name__ == "__main__":
    main()
