"""Real `python -m node serve` processes for integration tests, and a client side to drive them.

    with chain_snapshot(chain), running_nodes(deployment, tmp_path, model_path,
                                              [NodeSpec("node-0", "0:2"), NodeSpec("node-1", "2:4")]) as nodes:
        nodes[0].peer_id, nodes[0].maddrs, nodes[0].address, nodes[0].http_url, nodes[0].status()

Starting and stopping the processes is `stakeswarm.swarm`'s job (re-exported here): each node
runs with `--devnet --account NAME` in a home of its own (a copy of the test deployment file,
so no ledger or throughput cache leaks between test modules), in its own process group,
output in files under `tmp_path` whose tails are shown when a node fails to start; nodes are
stopped by PID (SIGTERM, then SIGKILL of the group) however the test ends.

Test-only helpers: `chain_snapshot` keeps the session's shared Anvil clean (what the nodes did
on-chain is reverted when the block ends), `reverted_nodes` runs nodes inside one;
`LoopThread`, `Payer`, `Hop`, `RouteSession`, `client_p2p`, `paid_swarm`, `serve_two_steps`
and `greedy_generate` drive nodes directly, below the client library; `wait_committed` waits
for a node's commitments.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hivemind.p2p import P2P

from client.remote import RemoteSpanSession
from ledger.chain import Chain
from ledger.compile import PROJECT_ROOT
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.eip712 import sign_voucher
from ledger.types import Voucher, Wei
from node.blocks import ClientHead
from node.protocol import SignedReceipt
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

T = TypeVar("T")

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


class LoopThread:
    """An asyncio loop in a thread of its own, so synchronous tests can share one hivemind
    `P2P` (bound to one loop) across many calls: `loop.run(coro)` waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_the_rest(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Payer:
    """A client paying nodes through payment channels: opens one channel per node and signs
    cumulative vouchers as it is told what each step costs."""

    def __init__(
        self, deployment: Deployment, chain: Chain, account: str | LocalAccount = "client-0"
    ) -> None:
        """`account`: a dev account's name, or any key (e.g. unlocked from a keystore)."""
        self.account = (
            Account.from_key(deployment.account(account).private_key)
            if isinstance(account, str)
            else account
        )
        self.contracts = Contracts.from_deployment(chain, deployment, chain.sender(self.account))
        self.domain = self.contracts.payment_channels.domain()
        self.paid: dict[int, int] = {}  # channel -> cumulative amount signed
        self.chain = chain

    def open_channel(self, server: str, deposit: int = 10 * TOKEN, life: int = 86_400) -> int:
        expiry = self.chain.timestamp() + life
        result = self.contracts.payment_channels.open_with_approve(server, Wei(deposit), expiry)
        channel = int(self.contracts.payment_channels.opened_channel_id(result))
        self.paid[channel] = 0
        return channel

    def sign(self, channel: int, amount: int) -> Voucher:
        return Voucher(
            channel, amount, sign_voucher(self.domain, Voucher(channel, amount), self.account)
        )

    def pay(self, channel: int, cost: int) -> Voucher:
        """The next cumulative voucher on `channel`, `cost` above the last one."""
        self.paid[channel] += cost
        return self.sign(channel, self.paid[channel])


@dataclass
class Hop:
    """One node on a route: its peer id, span, channel and price per token per block."""

    node: NodeProcess
    channel: int
    price_per_block: int

    @property
    def span(self) -> tuple[int, int]:
        return self.node.span

    @property
    def price_per_token(self) -> int:
        return self.price_per_block * (self.span[1] - self.span[0])


class RouteSession:
    """Sessions over a chain of hops, stepped together (what a client's inference does)."""

    def __init__(self, runner: LoopThread, p2p: P2P, payer: Payer, hops: Sequence[Hop]) -> None:
        self.runner = runner
        self.p2p = p2p
        self.payer = payer
        self.hops = list(hops)
        self.sessions: list[RemoteSpanSession] = []
        self.receipts: list[list[SignedReceipt]] = []

    def open(self, max_length: int, batch: int = 1) -> RouteSession:
        for hop in self.hops:
            self.sessions.append(
                self.runner.run(
                    RemoteSpanSession.open(
                        self.p2p,
                        hop.node.peer_id,
                        session_id=os.urandom(32),
                        span=hop.span,
                        max_length=max_length,
                        batch_size=batch,
                        channel_id=hop.channel,
                    )
                )
            )
        return self

    def step(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden [batch, tokens, hidden] through every hop; returns the last hop's output."""
        tokens = hidden.shape[0] * hidden.shape[1]
        receipts = []
        for hop, session in zip(self.hops, self.sessions, strict=True):
            voucher = self.payer.pay(hop.channel, tokens * hop.price_per_token)
            hidden, receipt = self.runner.run(session.step(hidden, mask, voucher))
            receipts.append(receipt)
        self.receipts.append(receipts)
        return hidden

    def close(self) -> None:
        for session in self.sessions:
            self.runner.run(session.close())


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
