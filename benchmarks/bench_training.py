"""Benchmark (not a test): one prompt-tuning step through 1 and 2 servers against the same step
with the whole model in this process, and tokens trained per second.

A step is what a trainer's loop does: the forward of a batch of `--batch` sequences of
`--length` tokens behind `--pre-seq-len` trainable prompt positions, the next-token loss, the
backward to the prompts and an Adam update. Locally the model is loaded with transformers
(frozen weights, float32); through the swarm, k node processes split its blocks evenly on a
local Anvil and the client pays every forward and backward (`client.training`). Each round
times one step of each side in alternating order; figures are medians over `--rounds` rounds
with the range. Tokens trained per second count every position of the batch, prompts
included.

    .venv/bin/python benchmarks/bench_training.py [--model smollm2] [--servers 1,2] [--rounds 5]
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
    resolve_model,
)
from eth_account import Account
from transformers import AutoModelForCausalLM

from client.model import DistributedModelForCausalLM
from node.families import load_config
from stakeswarm.devnet import Devnet, DevnetConfig
from stakeswarm.home import Home
from stakeswarm.swarm import NodeSpec, running_nodes, split_blocks

SCRIPT = "bench_training.py"


@dataclass(frozen=True)
class Options:
    """What `bench_training.py` measures and how long."""

    model: str = option(SMOLLM2, MODEL_HELP)
    servers: tuple[int, ...] = option((1, 2), "route lengths to measure (comma-separated)")
    batch: int = option(8, "sequences per step")
    length: int = option(32, "tokens per sequence")
    pre_seq_len: int = option(4, "trainable prompt positions")
    rounds: int = option(5, "rounds per route length")
    threads: int = option(1, "torch threads of the local model and of each node")

    def __post_init__(self) -> None:
        if not self.servers or min(self.servers) < 1:
            raise BenchmarkError("--servers takes route lengths of at least 1")
        for name in ("batch", "length", "pre_seq_len", "rounds"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name.replace('_', '-')} must be at least 1")


QUICK = Options(servers=(1,), batch=2, length=8, rounds=1)


@dataclass(frozen=True)
class TrainingRow:
    """One route length: a step's time locally and through the swarm."""

    servers: int
    local_ms: Spread
    swarm_ms: Spread
    ratio: Spread  # swarm over local, per round
    local_tokens_per_s: Spread
    swarm_tokens_per_s: Spread
    same_loss: bool  # the swarm's loss equals the local one within float32 rounding, every step


@dataclass(frozen=True)
class TrainingBenchResult:
    options: Options
    model: str
    layers: int
    rows: tuple[TrainingRow, ...]
    provenance: Provenance


def local_step(
    model: Any, prompts: torch.nn.Parameter, optimizer: torch.optim.Optimizer
) -> Callable[[torch.Tensor], float]:
    """One prompt-tuning step of `model` (whole, local): the loss before the update."""

    def step(ids: torch.Tensor) -> float:
        optimizer.zero_grad()
        embeds = model.get_input_embeddings()(ids)
        hidden = torch.cat([prompts.unsqueeze(0).expand(ids.shape[0], -1, -1), embeds], dim=1)
        logits = model(inputs_embeds=hidden).logits[:, prompts.shape[0] :]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
        )
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def swarm_step(
    model: DistributedModelForCausalLM, optimizer: torch.optim.Optimizer
) -> Callable[[torch.Tensor], float]:
    def step(ids: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return float(loss.item())

    return step


def timed(step: Callable[[torch.Tensor], float], ids: torch.Tensor) -> tuple[float, float]:
    began = time.perf_counter()
    loss = step(ids)
    return (time.perf_counter() - began) * 1e3, loss


def run(options: Options) -> TrainingBenchResult:
    clock = Stopwatch(SCRIPT, options)
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        path = resolve_model(options.model, root)
        layers = model_layers(path)
        vocab = int(load_config(path).vocab_size)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(3, vocab, (options.batch, options.length), generator=generator)
        tokens = options.batch * (options.length + options.pre_seq_len)
        rows = []
        for servers in options.servers:
            home = Home.resolve(root / f"devnet-{servers}")
            with Devnet.start(DevnetConfig(home=home)) as deployment:
                specs = [
                    NodeSpec(f"node-{i}", f"{a}:{b}", args=("--commit-interval", "3600"))
                    for i, (a, b) in enumerate(split_blocks(layers, servers))
                ]
                with running_nodes(
                    deployment, root / f"nodes-{servers}", path, specs, threads=options.threads
                ) as nodes:
                    remote = DistributedModelForCausalLM.from_pretrained(
                        path,
                        initial_peers=[m for n in nodes for m in n.maddrs],
                        wallet=Account.from_key(deployment.account("client-0").private_key),
                        deployment=deployment,
                        home=root / f"client-{servers}",
                        tuning_mode="ptune",
                        pre_seq_len=options.pre_seq_len,
                    )
                    try:
                        rows.append(measure(options, servers, path, remote, ids, tokens))
                    finally:
                        remote.close()
    return TrainingBenchResult(options, path.name, layers, tuple(rows), clock.provenance())


def measure(
    options: Options,
    servers: int,
    path: Path,
    remote: DistributedModelForCausalLM,
    ids: torch.Tensor,
    tokens: int,
) -> TrainingRow:
    """Interleaved rounds of one local and one swarm step, from the same starting prompts."""
    local = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    local.requires_grad_(False)
    assert remote.prompts is not None
    prompts = torch.nn.Parameter(remote.prompts.embeddings.detach().clone())
    steps = {
        "local": local_step(local, prompts, torch.optim.Adam([prompts], lr=1e-3)),
        "swarm": swarm_step(remote, torch.optim.Adam(remote.prompts.parameters(), lr=1e-3)),
    }
    remote.train()
    timed(steps["swarm"], ids)  # routes and channels, untimed (and one step of each side)
    timed(steps["local"], ids)
    times: dict[str, list[float]] = {"local": [], "swarm": []}
    same = True
    for r in range(options.rounds):
        print(f"{servers} server(s): round {r + 1}/{options.rounds}", flush=True)
        losses = {}
        for side in ("local", "swarm") if r % 2 == 0 else ("swarm", "local"):
            ms, losses[side] = timed(steps[side], ids)
            times[side].append(ms)
        same = same and abs(losses["local"] - losses["swarm"]) <= 1e-4 * abs(losses["local"])
    return TrainingRow(
        servers=servers,
        local_ms=Spread.of(times["local"]),
        swarm_ms=Spread.of(times["swarm"]),
        ratio=Spread.of([s / lo for s, lo in zip(times["swarm"], times["local"], strict=True)]),
        local_tokens_per_s=Spread.of([tokens / ms * 1e3 for ms in times["local"]]),
        swarm_tokens_per_s=Spread.of([tokens / ms * 1e3 for ms in times["swarm"]]),
        same_loss=same,
    )


def main(argv: Sequence[str] | None = None) -> None:
    bench_main(Options, __doc__.splitlines()[0], argv, run, "training_tables")


if __name__ == "__main__":
    main()
