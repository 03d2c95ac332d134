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
on-chain is reverted when the block ends); `LoopThread`, `Payer`, `Hop`, `RouteSession` and
`greedy_generate` drive nodes directly, below the client library.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from eth_account import Account
from hivemind.p2p import P2P

from client.remote import RemoteSpanSession
from ledger.chain import Chain
from ledger.compile import PROJECT_ROOT
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.eip712 import Domain, sign_voucher
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
    "Payer",
    "RouteSession",
    "chain_snapshot",
    "greedy_generate",
    "node_home",
    "running_nodes",
    "start_node",
    "start_nodes",
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

    def __init__(self, deployment: Deployment, chain: Chain, account: str = "client-0") -> None:
        self.account = Account.from_key(deployment.account(account).private_key)
        self.contracts = Contracts.from_deployment(chain, deployment, chain.sender(self.account))
        self.domain = Domain.payment_channels(chain.chain_id, deployment.contracts.payment_channels)
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
