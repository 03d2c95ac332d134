"""Paying and stepping nodes directly, below the client library: no routing, no receipt
checks, no ledger. Benchmarks and tests use it to measure and probe nodes on their own terms.

    runner = EventLoopThread()
    p2p = runner.run(P2P.create(initial_peers=node.maddrs))
    payer = Payer(deployment, deployment.connect())          # dev account client-0
    hop = Hop(node, payer.open_channel(node.address), price_per_block)
    route = RouteSession(runner, p2p, payer, [hop]).open(max_length=64)
    output = route.step(hidden, mask)                         # pays, sends, returns the output

`Payer` opens one channel per node and signs cumulative vouchers as it is told what each step
costs (what the client library's `Payments` does with a ledger, a budget and top-ups);
`RouteSession` steps sessions over a chain of hops together and keeps their receipts unchecked
(what the client library's `InferenceSession` does with routing, failover and receipt checks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hivemind.p2p import P2P

from client.network import EventLoopThread
from client.remote import RemoteSpanSession
from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.eip712 import sign_voucher
from ledger.types import Voucher, Wei
from node.protocol import SignedReceipt
from stakeswarm.swarm import NodeProcess


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

    def __init__(
        self, runner: EventLoopThread, p2p: P2P, payer: Payer, hops: Sequence[Hop]
    ) -> None:
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
