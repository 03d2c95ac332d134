"""Real `python -m node serve` processes for integration tests, and a client side to drive them.

    with chain_snapshot(chain), running_nodes(deployment, tmp_path, model_path,
                                              [NodeSpec("node-0", "0:2"), NodeSpec("node-1", "2:4")]) as nodes:
        nodes[0].peer_id, nodes[0].maddrs, nodes[0].address, nodes[0].http_url, nodes[0].status()

Starting and stopping the processes is `stakeswarm.swarm`'s job (re-exported here): each node
runs with `--devnet --account NAME` in a home of its own (a copy of the test deployment file,
so no ledger or throughput cache leaks between test modules), in its own process group,
output in files under `tmp_path` whose tails are shown when a node fails to start; nodes are
stopped by PID (SIGTERM, then SIGKILL of the group) however the test ends.

`Payer`, `Hop` and `RouteSession` (`stakeswarm.direct`) and `LoopThread` (the client's
`EventLoopThread`) drive nodes directly, below the client library; benchmarks use them too.
Test-only helpers: `chain_snapshot` keeps the session's shared Anvil clean (what the nodes did
on-chain is reverted when the block ends), `reverted_nodes` runs nodes inside one;
`client_p2p`, `paid_swarm`, `serve_two_steps` and `greedy_generate` build on the above;
`wait_committed` waits for a node's commitments.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hivemind.p2p import P2P

from client.network import EventLoopThread
from ledger.chain import Chain
from ledger.compile import PROJECT_ROOT
from ledger.deployment import Deployment
from node.blocks import ClientHead
from stakeswarm.direct import Hop, Payer, RouteSession
from stakeswarm.swarm import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    NodeProcess,
    NodeSpec,
    running_nodes,
    start_node,
    start_nodes,
)
from stakeswarm.swarm import process_home as node_home

__all__ = [
    "REPO_ROOT",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "Hop",
    "LoopThread",
    "NodeProcess",
    "NodeSpec",
    "PaidSwarm",
    "Payer",
    "RouteSession",
    "chain_snapshot",
    "client_p2p",
    "greedy_generate",
    "node_home",
    "paid_swarm",
    "reverted_nodes",
    "running_nodes",
    "serve_two_steps",
    "start_node",
    "start_nodes",
    "wait_committed",
]


REPO_ROOT = PROJECT_ROOT


@contextmanager
def chain_snapshot(chain: Chain) -> Iterator[None]:
    """Revert everything sent to `chain` inside the block (nodes must be stopped by then)."""
    snapshot = chain.rpc("evm_snapshot")
    try:
        yield
    finally:
        chain.rpc("evm_revert", [snapshot])
        chain.reset_nonces()


@contextmanager
def mining_paused(chain: Chain) -> Iterator[None]:
    """Anvil mines nothing inside the block (transactions wait in its pool: a node sending one
    waits for its receipt); automine again after, which mines what waits."""
    chain.rpc("evm_setAutomine", [False])
    try:
        yield
    finally:
        chain.rpc("evm_setIntervalMining", [0])
        chain.rpc("evm_setAutomine", [True])


@contextmanager
def reverted_nodes(
    deployment: Deployment, workdir: Path, model_path: Path, specs: Sequence[NodeSpec]
) -> Iterator[list[NodeProcess]]:
    """`running_nodes` on the session's devnet; what they did on-chain is reverted once they
    stopped."""
    with (
        chain_snapshot(deployment.connect()),
        running_nodes(deployment, workdir, model_path, specs) as nodes,
    ):
        yield nodes


def wait_committed(node: NodeProcess, leaves: int, timeout: float = 60) -> None:
    """Wait until `node` says it committed at least `leaves` leaves on-chain."""
    deadline = time.monotonic() + timeout
    while node.status()["commitments"]["committed_leaves"] < leaves:
        assert time.monotonic() < deadline, f"{node.name} did not commit its leaves"
        time.sleep(0.5)


# --- the client side, for tests that drive real nodes ------------------------------------------


LoopThread = EventLoopThread  # the client's loop thread, under the name the tests use


@contextmanager
def client_p2p(initial_peers: Sequence[str]) -> Iterator[tuple[LoopThread, P2P]]:
    """A client's loop thread and hivemind `P2P` joined to `initial_peers`, shut down after."""
    runner = LoopThread()
    try:
        p2p = runner.run(P2P.create(initial_peers=list(initial_peers)))
        try:
            yield runner, p2p
        finally:
            runner.run(p2p.shutdown())
    finally:
        runner.close()


@dataclass
class PaidSwarm:
    """Running nodes and a client with a payment channel open to each of them."""

    deployment: Deployment
    nodes: list[NodeProcess]
    hops: list[Hop]  # one per node, in the nodes' order
    runner: LoopThread
    p2p: P2P
    payer: Payer
    model_path: Path
    workdir: Path  # where the nodes' homes and logs are

    def route(self, max_length: int = 32) -> RouteSession:
        """An open session through every hop."""
        return RouteSession(self.runner, self.p2p, self.payer, self.hops).open(max_length)

    def session(self, hop: Hop, max_length: int = 16) -> RouteSession:
        """An open session through `hop` alone."""
        return RouteSession(self.runner, self.p2p, self.payer, [hop]).open(max_length)


@contextmanager
def paid_swarm(
    deployment: Deployment,
    chain: Chain,
    nodes: list[NodeProcess],
    model_path: Path,
    workdir: Path,
) -> Iterator[PaidSwarm]:
    """`nodes` with a client (dev account client-0, sending through `chain`) that opened a
    channel to each at its announced price; the client's P2P is shut down after the block."""
    with client_p2p([m for node in nodes for m in node.maddrs]) as (runner, p2p):
        payer = Payer(deployment, chain)
        hops = [
            Hop(
                node,
                payer.open_channel(node.address),
                int(node.status()["price_per_token_per_block"]),
            )
            for node in nodes
        ]
        yield PaidSwarm(deployment, nodes, hops, runner, p2p, payer, model_path, workdir)


def serve_two_steps(runner: LoopThread, p2p: P2P, payer: Payer, node: NodeProcess) -> None:
    """A short paid session through `node` alone (5 tokens, then 1): two leaves it commits."""
    price = int(node.status()["price_per_token_per_block"])
    route = RouteSession(runner, p2p, payer, [Hop(node, payer.open_channel(node.address), price)])
    route.open(16)
    generator = torch.Generator().manual_seed(0)
    route.step(torch.randn(1, 5, 64, generator=generator), torch.ones(1, 5, dtype=torch.long))
    route.step(torch.randn(1, 1, 64, generator=generator), torch.ones(1, 6, dtype=torch.long))
    route.close()


def greedy_generate(
    route: RouteSession, head: ClientHead, input_ids: torch.Tensor, new_tokens: int
) -> torch.Tensor:
    """Greedy decoding with the model's ends local and its blocks on the route's nodes."""
    # input_ids: [batch, prompt]
    ids = input_ids
    mask = torch.ones_like(input_ids)
    hidden = head.embed(input_ids)
    for _ in range(new_tokens):
        out = route.step(hidden, mask)
        next_ids = head.logits(out)[:, -1].argmax(-1, keepdim=True)  # [batch, 1]
        ids = torch.cat([ids, next_ids], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
        hidden = head.embed(next_ids)
    return ids
