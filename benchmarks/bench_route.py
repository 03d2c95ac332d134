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

Through the longest route, `--sessions` clients (each its own wallet) then generate at once,
each in a thread of its own and an inference session of its own, against the same generations
made one after another by the local model: the swarm's tokens per second against local
Hugging Face's (throughput; the nodes compute different sessions' steps at the same time).

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
import threading
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
    sessions: int = option(
        8, "concurrent sessions (clients) of the throughput sample, longest route; 0: none"
    )

    def __post_init__(self) -> None:
        if not self.servers or min(self.servers) < 1:
            raise BenchmarkError("--servers takes route lengths of at least 1")
        if self.sessions < 0:
            raise BenchmarkError("--sessions must not be negative")
        for name in ("tokens", "prefill", "rounds"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name} must be at least 1")
        if self.delay_ms < 0:
            raise BenchmarkError("--delay-ms must not be negative")


QUICK = Options(servers=(2,), tokens=2, prefill=8, rounds=1, delay_ms=5.0, sessions=2)


@dataclass(frozen=True)
class Throughput:
    """`sessions` generations of `tokens` new tokens each: at once through the swarm against
    one after another locally (tokens per second, medians over rounds)."""

    sessions: int
    tokens: int  # new tokens of each generation
    local_tps: Spread  # local Hugging Face, the generations one after another
    swarm_tps: Spread  # the swarm, every session at once
    ratio: Spread  # swarm over local, per round
    same_tokens: bool  # every session produced its local generation's tokens


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
    throughput: Throughput | None = None  # concurrent sessions (the longest route only)


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


def concurrent_tps(
    models: Sequence[DistributedModelForCausalLM], prompts: Sequence[torch.Tensor], new: int
) -> tuple[float, list[list[int]]]:
    """Tokens per second of every model generating `new` tokens after its prompt at once (one
    thread each, released together), and each generation's tokens."""
    outs: list[list[int]] = [[] for _ in models]
    errors: list[BaseException] = []
    start = threading.Barrier(len(models) + 1)

    def one(i: int) -> None:
        start.wait()
        try:
            outs[i] = timed_generate(models[i].generate, prompts[i], new)[1]
        except BaseException as exc:  # re-raised in the benchmark's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(models))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise BenchmarkError(f"a concurrent session failed: {errors[0]!r}") from errors[0]
    return len(models) * new / seconds, outs


def sequential_tps(
    generate: Callable[..., Any], prompts: Sequence[torch.Tensor], new: int
) -> tuple[float, list[list[int]]]:
    """Tokens per second of `generate` making every prompt's `new` tokens one after another,
    and each generation's tokens."""
    began = time.perf_counter()
    outs = [timed_generate(generate, prompt, new)[1] for prompt in prompts]
    return len(prompts) * new / (time.perf_counter() - began), outs


def run_throughput(
    options: Options,
    path: Path,
    local: Any,
    nodes: Sequence[Any],
    deployment: Deployment,
    root: Path,
    vocab: int,
) -> Throughput:
    """`--sessions` clients generating at once through the running nodes against the local
    model generating the same one after another, `--rounds` times in alternating order."""
    new = options.tokens + 1
    prompts = [prompt_ids(vocab, PROMPT_TOKENS, seed=10 + i) for i in range(options.sessions)]
    clients = deployment.accounts_with_role("client")
    if len(clients) < options.sessions:
        raise BenchmarkError(f"{options.sessions} sessions need as many dev client accounts")
    models: list[DistributedModelForCausalLM] = []
    try:
        for i in range(options.sessions):
            models.append(
                DistributedModelForCausalLM.from_pretrained(
                    path,
                    initial_peers=[m for n in nodes for m in n.maddrs],
                    wallet=Account.from_key(clients[i].private_key),
                    deployment=deployment,
                    home=root / f"throughput-client-{i}",
                )
            )
        concurrent_tps(models, prompts, 2)  # routes and channels, untimed
        local_tps: list[float] = []
        swarm_tps: list[float] = []
        same = True
        for r in range(options.rounds):
            print(
                f"{options.sessions} sessions at once: round {r + 1}/{options.rounds}", flush=True
            )
            order = ("local", "swarm") if r % 2 == 0 else ("swarm", "local")
            outs = {}
            for side in order:
                if side == "local":
                    tps, outs[side] = sequential_tps(local.generate, prompts, new)
                    local_tps.append(tps)
                else:
                    tps, outs[side] = concurrent_tps(models, prompts, new)
                    swarm_tps.append(tps)
            same = same and outs["local"] == outs["swarm"]
    finally:
        for model in models:
            model.close()
    return Throughput(
        sessions=options.sessions,
        tokens=new,
        local_tps=Spread.of(local_tps),
        swarm_tps=Spread.of(swarm_tps),
        ratio=Spread.of([s / lo for s, lo in zip(swarm_tps, local_tps, strict=True)]),
        same_tokens=same,
    )


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
            throughput = None
            if options.sessions and servers == max(options.servers):
                throughput = run_throughput(options, path, local, nodes, deployment, root, vocab)

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
        throughput=throughput,
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
            # a dev client account for each concurrent session (a third of the accounts)
            accounts = max(10, 3 * options.sessions + 1)
            with Devnet.start(DevnetConfig(home=home, accounts=accounts)) as deployment:
                rows.append(run_route(options, servers, path, local, root, deployment))
    return RouteBenchResult(
        options=options,
        model=path.name,
        layers=layers,
        rows=tuple(rows),
        provenance=clock.provenance(),
    )


def main(argv: Sequence[str] | None = None) -> None:
    bench_main(Options, __doc__.splitlines()[0], argv, run, "route_results")


if __name__ == "__main__":
    main()
