"""Benchmark (not a test): what a user of `generate` sees through 1, 2 and 3 servers, near
and far apart, against local Hugging Face `generate` on the same model.

For each route length k (`--servers`), k node processes split the model's blocks evenly on a
local Anvil, each behind a delaying TCP proxy (`delay_proxy.py`: the node listens on its own
port and announces the proxy's, so every connection to it crosses the proxy), and one client
in this process pays every step. Each round samples, in rotating order:

- local: the whole model loaded with transformers;
- near: the swarm with the proxies forwarding at once (loopback);
- far: the swarm with `--delay-ms` added to each direction of every link (a pipelined route,
  each server pushing to the next, crosses k + 1 links per token);
- near and far again through a client-mediated route (`pipeline=False`: every hop's output
  comes back to the client, 2k links per token), for comparison (k >= 2);
- then, near, the same number of tokens generated one per `generate` call inside one
  inference session (a long `generate` should cost no more per token than that).

A sample is what the issue measures: (time of a generate of `--tokens` + 1 new tokens - time
of a generate of 1 new token) / `--tokens`, greedy, after the same 8-token prompt: the cost of
one more token, prefill excluded; and the time of a generate of 1 new token after a
`--prefill`-token prompt (the prefill). Ratios are taken per round against that round's local
sample; figures are medians over rounds with the range. Each route length runs on a chain of
its own (its nodes' accounts start anew).

    .venv/bin/python benchmarks/bench_route.py [--model smollm2] [--servers 1,2,3] [--rounds 5]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    option,
    prompt_ids,
    resolve_model,
    timed_generate,
)
from delay_proxy import DelayProxy, free_port
from eth_account import Account
from transformers import AutoModelForCausalLM

from client.model import DistributedModelForCausalLM
from ledger.deployment import Deployment
from node.families import load_config
from stakeswarm.devnet import Devnet, DevnetConfig
from stakeswarm.home import Home
from stakeswarm.swarm import NodeSpec, running_nodes, split_blocks

SCRIPT = "bench_route.py"
PROMPT_TOKENS = 8
SIDES = ("local", "near", "far", "near-mediated", "far-mediated")
SWARM_SIDES = SIDES[1:]


@dataclass(frozen=True)
class Options:
    """What `bench_route.py` measures and how long."""

    model: str = option(SMOLLM2, MODEL_HELP)
    servers: tuple[int, ...] = option((1, 2, 3), "route lengths to measure (comma-separated)")
    tokens: int = option(32, "extra new tokens a sample's long generate makes")
    prefill: int = option(128, "prompt tokens of the prefill sample")
    rounds: int = option(5, "rounds per route length")
    delay_ms: float = option(20.0, "one-way delay of each link when far apart, ms")
    threads: int = option(1, "torch threads of the local model and of each node")

    def __post_init__(self) -> None:
        if not self.servers or min(self.servers) < 1:
            raise BenchmarkError("--servers takes route lengths of at least 1")
        for name in ("tokens", "prefill", "rounds"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name} must be at least 1")
        if self.delay_ms < 0:
            raise BenchmarkError("--delay-ms must not be negative")


QUICK = Options(servers=(2,), tokens=2, prefill=8, rounds=1, delay_ms=5.0)


@dataclass(frozen=True)
class RouteRow:
    """One route length: per-token and prefill times of each side, and the swarm's ratios."""

    servers: int
    per_token_ms: dict[str, Spread]  # side -> ms per extra token
    prefill_ms: dict[str, Spread]  # side -> ms of the prefill sample
    ratio: dict[str, Spread]  # swarm side -> per-token time over local's, per round
    prefill_ratio: dict[str, Spread]  # swarm side -> prefill time over local's, per round
    same_tokens: bool  # every swarm generate produced the local tokens
    per_call_ms: Spread | None = None  # near: ms per token generating one token per call
    # inside an inference session (what a long generate should not cost more than)


@dataclass(frozen=True)
class RouteBenchResult:
    """Every route length measured, and how."""

    options: Options
    model: str
    layers: int
    rows: tuple[RouteRow, ...]
    provenance: Provenance


def generate_ms(
    generate: Callable[..., Any], prompt: torch.Tensor, new: int
) -> tuple[float, list[int]]:
    """Milliseconds of one greedy generate of exactly `new` tokens, and its tokens."""
    seconds, out = timed_generate(generate, prompt, new)
    return seconds * 1e3, out


def sample(
    generate: Callable[..., torch.Tensor], prompt: torch.Tensor, long: torch.Tensor, tokens: int
) -> tuple[float, float, list[int]]:
    """(ms per extra token, prefill ms, the long generate's tokens) of one side."""
    one, _ = generate_ms(generate, prompt, 1)
    many, out = generate_ms(generate, prompt, tokens + 1)
    prefill, _ = generate_ms(generate, long, 1)
    return (many - one) / tokens, prefill, out


def per_call_ms(model: DistributedModelForCausalLM, prompt: torch.Tensor, tokens: int) -> float:
    """Milliseconds per token of `tokens` one-token generate calls continuing one inference
    session (after an untimed first call with the prompt)."""
    with model.inference_session(max_length=prompt.shape[1] + tokens + 1) as session:
        model.generate(prompt, max_new_tokens=1, do_sample=False, session=session)
        began = time.perf_counter()
        for _ in range(tokens):
            model.generate(None, max_new_tokens=1, do_sample=False, session=session)
        return (time.perf_counter() - began) * 1e3 / tokens


def run_route(
    options: Options,
    servers: int,
    path: Path,
    local: Any,
    root: Path,
    deployment: Deployment,
) -> RouteRow:
    """Start `servers` nodes behind proxies, sample every side for every round, stop them."""
    layers = model_layers(path)
    vocab = int(load_config(path).vocab_size)
    prompt, long = prompt_ids(vocab, PROMPT_TOKENS), prompt_ids(vocab, options.prefill, seed=1)
    per_token: dict[str, list[float]] = {side: [] for side in SIDES}
    prefill: dict[str, list[float]] = {side: [] for side in SIDES}
    per_call: list[float] = []
    same = True
    with DelayProxy() as proxy:
        specs = []
        for i, (a, b) in enumerate(split_blocks(layers, servers)):
            port = free_port()
            announced = proxy.forward(port)
            specs.append(
                NodeSpec(
                    f"node-{i}",
                    f"{a}:{b}",
                    args=(
                        "--host-maddrs",
                        f"/ip4/127.0.0.1/tcp/{port}",
                        "--announce-maddrs",
                        f"/ip4/127.0.0.1/tcp/{announced}",
                        "--commit-leaves",
                        "64",
                        "--commit-interval",
                        "3600",
                        "--redeem-interval",
                        "3600",
                    ),
                )  # fmt: skip
            )
        print(f"starting {servers} node(s) behind delaying proxies ...", flush=True)
        with running_nodes(
            deployment,
            root / f"nodes-{servers}",
            path,
            specs,
            threads=options.threads,
        ) as nodes:
            wallet = Account.from_key(deployment.account("client-0").private_key)
            clients = {
                pipeline: DistributedModelForCausalLM.from_pretrained(
                    path,
                    initial_peers=[m for n in nodes for m in n.maddrs],
                    wallet=wallet,
                    deployment=deployment,
                    home=root / f"client-{servers}-{'pipelined' if pipeline else 'mediated'}",
                    pipeline=pipeline,
                )
                for pipeline in (True, False)
            }
            # one server: nothing to pipeline, the two routes are the same
            sides = SIDES if servers > 1 else SIDES[:3]
            try:
                for remote in clients.values():
                    generate_ms(remote.generate, prompt, 2)  # route and channels, untimed
                for r in range(options.rounds):
                    print(f"{servers} server(s): round {r + 1}/{options.rounds}", flush=True)
                    shift = r % len(sides)
                    outputs = {}
                    for side in sides[shift:] + sides[:shift]:
                        far = side.startswith("far")
                        proxy.delay = options.delay_ms / 1e3 if far else 0.0
                        generate = (
                            local.generate
                            if side == "local"
                            else clients[not side.endswith("mediated")].generate
                        )
                        step, first, outputs[side] = sample(generate, prompt, long, options.tokens)
                        per_token[side].append(step)
                        prefill[side].append(first)
                    proxy.delay = 0.0
                    same = same and all(out == outputs["local"] for out in outputs.values())
                    per_call.append(per_call_ms(clients[True], prompt, options.tokens))
            finally:
                proxy.delay = 0.0
                for remote in clients.values():
                    remote.close()

    def ratios(values: dict[str, list[float]]) -> dict[str, Spread]:
        return {
            side: Spread.of([s / lo for s, lo in zip(values[side], values["local"], strict=True)])
            for side in SWARM_SIDES
            if values[side]
        }

    return RouteRow(
        servers=servers,
        per_token_ms={side: Spread.of(v) for side, v in per_token.items() if v},
        prefill_ms={side: Spread.of(v) for side, v in prefill.items() if v},
        ratio=ratios(per_token),
        prefill_ratio=ratios(prefill),
        same_tokens=same,
        per_call_ms=Spread.of(per_call),
    )


def run(options: Options) -> RouteBenchResult:
    clock = Stopwatch(SCRIPT, options)
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        root = Path(tmp)
        path = resolve_model(options.model, root)
        layers = model_layers(path)
        if max(options.servers) > layers:
            raise BenchmarkError(f"{max(options.servers)} servers cannot split {layers} blocks")
        local = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        rows = []
        for servers in options.servers:  # a fresh chain each: the nodes' accounts start anew
            home = Home.resolve(root / f"devnet-{servers}")
            with Devnet.start(DevnetConfig(home=home)) as deployment:
                rows.append(run_route(options, servers, path, local, root, deployment))
    return RouteBenchResult(
        options=options,
        model=path.name,
        layers=layers,
        rows=tuple(rows),
        provenance=clock.provenance(),
    )


def main(argv: Sequence[str] | None = None) -> None:
    bench_main(Options, __doc__.splitlines()[0], argv, run, "route_tables")


if __name__ == "__main__":
    main()
