"""Benchmark (not a test): tokens/s of `DistributedModelForCausalLM.generate` through a paid
swarm against local Hugging Face `generate` on the same model and prompt, and the gas the
servers spent on-chain per token generated.

One run, on `--model` (default: the real SmolLM2-135M-Instruct): a local Anvil with every
contract, `--servers` node processes splitting the blocks evenly (one swarm), and one client in
this process that routes, opens channels, pays a voucher per step per server and checks every
receipt. Both sides decode greedily exactly `--tokens` new tokens after the same prompt; a
round times one whole `generate` call (prefill included) on each side, in alternating order,
and a round's ratio is swarm tokens/s over local tokens/s. A first, untimed swarm call opens
the channels.

Gas: the nodes commit a batch as soon as `--commit-leaves` leaves wait (their commit timer is
set to an hour, so the batch size is the leaf count, not the clock) and redeem each channel's
last voucher once, when they stop after the generation. After they stopped, every commit and
redeem transaction they sent is read from their ledgers and its gas from the chain's receipt;
the figure is that gas over the tokens the swarm generated, per 1,000 tokens.

The client's sketch check: for every hop of every step the client recomputes the sketch of the
output it received (one top-k per position and a keccak, `node.sketch`) to hold the node to
the sketch it committed. Timed in the same run on tensors of a decode step's shape, it is shown
per step per hop and as a share of the swarm's time per token.

    .venv/bin/python benchmarks/bench_client.py [--model smollm2] [--tokens 32] [--rounds 8] [--servers 3]
"""

from __future__ import annotations

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
    option,
    prompt_ids,
    resolve_model,
    timed_generate,
)
from eth_account import Account
from sqlalchemy import select
from transformers import AutoModelForCausalLM

from client.model import DistributedModelForCausalLM
from ledger.chain import Chain
from ledger.db import BatchStatus, TxStatus, open_ledger, sqlite_url
from ledger.db.models import Batch, LeafRecord, SentTransaction
from node.families import load_config
from node.sketch import sketch
from stakeswarm.devnet import Devnet, DevnetConfig
from stakeswarm.home import Home
from stakeswarm.swarm import NodeProcess, NodeSpec, running_nodes, split_blocks

SCRIPT = "bench_client.py"
WARM_UP_TOKENS = 4
PROMPT_TOKENS = 8
SKETCH_SAMPLES = 200  # timed sketch checks of a decode step's output
COMMIT = "commit"  # the Commitments function a node commits a batch with
REDEEM = "redeem"  # the PaymentChannels function a node redeems a voucher with


@dataclass(frozen=True)
class Options:
    """What `bench_client.py` measures and how long."""

    model: str = option(SMOLLM2, MODEL_HELP)
    tokens: int = option(32, "new tokens per generate call")
    rounds: int = option(8, "timed rounds per side")
    servers: int = option(3, "node processes splitting the blocks")
    threads: int = option(1, "torch threads of the local model and of each node")
    commit_leaves: int = option(64, "a node commits a batch once this many leaves wait")

    def __post_init__(self) -> None:
        for name in ("tokens", "rounds", "servers", "threads", "commit_leaves"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name.replace('_', '-')} must be at least 1")


QUICK = Options(tokens=6, rounds=2, commit_leaves=4)


@dataclass(frozen=True)
class Transaction:
    """One mined transaction: what it called and the gas its receipt says it used."""

    function: str  # "Contract.function", as the sender's ledger records it
    gas: int


@dataclass(frozen=True)
class NodeGas:
    """What one server sent on-chain for the generation, from its ledger and the receipts."""

    account: str  # dev account, e.g. "node-0"
    blocks: str  # START:END
    commits: tuple[int, ...]  # gas of each commit transaction
    redemptions: tuple[int, ...]  # gas of each redemption
    batch_leaves: tuple[int, ...]  # leaves under each committed root
    leaves: int  # leaves the node stored: one per step it served


@dataclass(frozen=True)
class ClientBenchResult:
    """Swarm generate against local generate, and the servers' gas per generated token."""

    options: Options
    model: str
    layers: int
    prompt_tokens: int
    local_tokens_per_s: Spread  # per round
    swarm_tokens_per_s: Spread  # per round
    ratio: Spread  # per round: swarm tokens/s over local tokens/s
    same_tokens: bool  # every swarm call produced exactly the local tokens
    generated_tokens: int  # through the swarm, warm-up call included: what the gas paid for
    paid: int  # base units of the stake token signed over to the servers
    nodes: tuple[NodeGas, ...]
    client_transactions: tuple[Transaction, ...]  # the client's own: approvals, channel opens
    provenance: Provenance
    sketch_check_ms: Spread | None = None  # the client's sketch of one decode step's output

    @property
    def gas(self) -> int:
        """Every commit and redemption of every server."""
        return sum(sum(n.commits) + sum(n.redemptions) for n in self.nodes)


def timed(
    generate: Callable[..., torch.Tensor], prompt: torch.Tensor, tokens: int
) -> tuple[float, list[int]]:
    """Tokens/s of one greedy `generate` of exactly `tokens` new tokens, and its tokens."""
    seconds, out = timed_generate(generate, prompt, tokens)
    return tokens / seconds, out


def sketch_check_ms(hidden_size: int, threads: int) -> Spread:
    """Milliseconds the client spends recomputing the sketch (and its hash) of one hop's
    output for a decode step ([1, 1, hidden_size] float32), over `SKETCH_SAMPLES` tensors."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(SKETCH_SAMPLES):
        out = torch.randn(1, 1, hidden_size, generator=generator)
        began = time.perf_counter()
        sketch(out).hash()
        times.append((time.perf_counter() - began) * 1e3)
    return Spread.of(times)


def mined_transactions(ledger_file: Path, chain: Chain) -> list[Transaction]:
    """Every mined transaction a sender's ledger recorded, in the order sent, with the gas of
    its receipt on the chain (which must agree with what the ledger recorded)."""
    ledger = open_ledger(sqlite_url(ledger_file))
    try:
        with ledger.begin() as db:
            rows = db.scalars(
                select(SentTransaction)
                .where(SentTransaction.status == TxStatus.MINED)
                .order_by(SentTransaction.id)
            ).all()
            recorded = [(row.tx_hash, row.function, row.gas_used) for row in rows]
    finally:
        ledger.close()
    txs = []
    for tx_hash, function, gas in recorded:
        used = int(chain.receipt("0x" + tx_hash.hex())["gasUsed"])
        if used != gas:
            raise BenchmarkError(f"{ledger_file}: {function} recorded {gas} gas, receipt {used}")
        txs.append(Transaction(function, used))
    return txs


def calls(txs: Sequence[Transaction], function: str) -> tuple[int, ...]:
    """Gas of the transactions calling `function` (any contract)."""
    return tuple(tx.gas for tx in txs if tx.function.rsplit(".", 1)[-1] == function)


def node_gas(node: NodeProcess, chain: Chain) -> NodeGas:
    """A stopped node's commits, redemptions and batches, from its ledger."""
    ledger_file = node.home / "node" / node.address / "ledger.sqlite"
    if not ledger_file.is_file():
        raise BenchmarkError(f"{node.name} left no ledger at {ledger_file}")
    ledger = open_ledger(sqlite_url(ledger_file))
    try:
        with ledger.begin() as db:
            batches = db.scalars(
                select(Batch).where(Batch.status == BatchStatus.COMMITTED).order_by(Batch.id)
            ).all()
            sizes = tuple(b.leaf_count for b in batches)
            leaves = len(db.scalars(select(LeafRecord.id)).all())
    finally:
        ledger.close()
    txs = mined_transactions(ledger_file, chain)
    return NodeGas(
        account=node.name,
        blocks=f"{node.span[0]}:{node.span[1]}",
        commits=calls(txs, COMMIT),
        redemptions=calls(txs, REDEEM),
        batch_leaves=sizes,
        leaves=leaves,
    )


def run(options: Options) -> ClientBenchResult:
    """Start a devnet and the servers, time both sides, stop the servers, read their gas."""
    clock = Stopwatch(SCRIPT, options)
    torch.set_num_threads(options.threads)
    node_args = (
        "--commit-leaves", str(options.commit_leaves),
        "--commit-interval", "3600",
        "--redeem-interval", "3600",
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        root = Path(tmp)
        path = resolve_model(options.model, root)
        layers = model_layers(path)
        if options.servers > layers:
            raise BenchmarkError(f"{options.servers} servers cannot split {layers} blocks")
        prompt = prompt_ids(int(load_config(path).vocab_size), PROMPT_TOKENS)
        local = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        specs = [
            NodeSpec(f"node-{i}", f"{a}:{b}", args=node_args)
            for i, (a, b) in enumerate(split_blocks(layers, options.servers))
        ]
        rates: dict[str, list[float]] = {"swarm": [], "local": []}
        same = True
        with Devnet.start(DevnetConfig(home=Home.resolve(root / "devnet"))) as deployment:
            chain = deployment.connect()
            print(f"starting {options.servers} node(s) of {path.name} ...", flush=True)
            with running_nodes(
                deployment, root / "nodes", path, specs, threads=options.threads
            ) as nodes:
                wallet = Account.from_key(deployment.account("client-0").private_key)
                remote = DistributedModelForCausalLM.from_pretrained(
                    path,
                    initial_peers=[m for n in nodes for m in n.maddrs],
                    wallet=wallet,
                    deployment=deployment,
                    home=root / "client",
                )
                try:
                    timed(remote.generate, prompt, WARM_UP_TOKENS)  # route, channels
                    generated = WARM_UP_TOKENS
                    for r in range(options.rounds):
                        print(f"round {r + 1}/{options.rounds}", flush=True)
                        sides = ["swarm", "local"] if r % 2 == 0 else ["local", "swarm"]
                        outputs = {}
                        for side in sides:
                            generate = remote.generate if side == "swarm" else local.generate
                            rate, outputs[side] = timed(generate, prompt, options.tokens)
                            rates[side].append(rate)
                        generated += options.tokens
                        same = same and outputs["swarm"] == outputs["local"]
                    paid = sum(c.signed_now for c in remote.client.payments.known_channels())
                    client_ledger = remote.client.config.ledger_path(wallet.address)
                finally:
                    remote.close()
            # the nodes stopped: their last batches are committed and channels redeemed
            gas = tuple(node_gas(node, chain) for node in nodes)
            client_txs = tuple(mined_transactions(client_ledger, chain))

    return ClientBenchResult(
        options=options,
        model=path.name,
        layers=layers,
        prompt_tokens=PROMPT_TOKENS,
        local_tokens_per_s=Spread.of(rates["local"]),
        swarm_tokens_per_s=Spread.of(rates["swarm"]),
        ratio=Spread.of([s / h for s, h in zip(rates["swarm"], rates["local"], strict=True)]),
        same_tokens=same,
        generated_tokens=generated,
        paid=paid,
        nodes=gas,
        client_transactions=client_txs,
        provenance=clock.provenance(),
        sketch_check_ms=sketch_check_ms(int(load_config(path).hidden_size), options.threads),
    )


def main(argv: Sequence[str] | None = None) -> None:
    bench_main(Options, __doc__.split("\n\n")[0], argv, run, "client_tables")


if __name__ == "__main__":
    main()
