"""Real `python -m node serve` processes for integration tests, started and always stopped.

    with chain_snapshot(chain), running_nodes(deployment, tmp_path, model_path,
                                              [NodeSpec("node-0", "0:2"), NodeSpec("node-1", "2:4")]) as nodes:
        nodes[0].peer_id, nodes[0].maddrs, nodes[0].address, nodes[0].http_url, nodes[0].status()

Each node runs with `--devnet --account NAME` and a home of its own (a copy of the test
deployment file, so no ledger or throughput cache leaks between test modules), in its own
process group; stdout and stderr go to files under `tmp_path` and their tails are shown when a
node fails to start. The first node starts a new swarm; the others join it. Nodes are stopped
by PID with SIGTERM (their clean shutdown: OFFLINE, commit, redeem) and SIGKILL of the group
after a timeout, however the test ends.

`chain_snapshot` keeps the session's shared Anvil clean: what the nodes did on-chain (stake,
commits, redemptions) is reverted when the block ends.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch
from eth_account import Account
from hivemind.p2p import P2P

from client.remote import RemoteSpanSession
from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.eip712 import Domain, sign_voucher
from ledger.types import Voucher, Wei
from node.blocks import ClientHead
from node.protocol import SignedReceipt

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # seconds for a node to load, register and announce on 2 busy cores
STOP_TIMEOUT = 30.0  # seconds for a clean shutdown before SIGKILL

_READY = re.compile(r"^ready$", re.MULTILINE)
_ADDRESS = re.compile(r"^stakeswarm node (0x[0-9a-fA-F]{40}) serving", re.MULTILINE)
_PEER = re.compile(r"^\s+peer id\s+(\S+)", re.MULTILINE)
_JOIN = re.compile(r"^\s+join with\s+--initial-peers (\S+)", re.MULTILINE)
_HTTP = re.compile(r"^\s+status api\s+(\S+)", re.MULTILINE)
_BLOCKS = re.compile(r"^\s+blocks\s+(\d+):(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: a dev account and either fixed blocks ("0:2") or a count."""

    account: str  # dev account name, e.g. "node-0"
    blocks: str | None = None  # START:END; None: choose `num_blocks` from the swarm
    num_blocks: int | None = None
    args: tuple[str, ...] = ()  # extra `node serve` options


@dataclass
class NodeProcess:
    """A started node and what it printed about itself."""

    spec: NodeSpec
    process: subprocess.Popen[bytes]
    home: Path
    stdout: Path
    stderr: Path
    address: str = ""
    peer_id: str = ""
    maddrs: list[str] = field(default_factory=list)
    http_url: str = ""
    span: tuple[int, int] = (0, 0)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def status(self) -> dict[str, Any]:
        """The node's `/status` document."""
        response = httpx.get(f"{self.http_url}/status", timeout=10)
        response.raise_for_status()
        return response.json()

    def metrics(self) -> str:
        return httpx.get(f"{self.http_url}/metrics", timeout=10).text

    def logs(self, lines: int = 40) -> str:
        out = _tail(self.stdout, lines)
        err = _tail(self.stderr, lines)
        return f"--- {self.spec.account} stdout\n{out}\n--- {self.spec.account} stderr\n{err}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = self.stdout.read_text(errors="replace") if self.stdout.exists() else ""
            if _READY.search(text):
                self._parse(text)
                return
            if not self.alive():
                raise RuntimeError(
                    f"node {self.spec.account} exited with {self.process.returncode} before "
                    f"it was ready\n{self.logs()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"node {self.spec.account} not ready after {timeout:.0f} s\n{self.logs()}"
                )
            time.sleep(0.2)

    def _parse(self, text: str) -> None:
        address, peer, http, blocks = (
            _ADDRESS.search(text),
            _PEER.search(text),
            _HTTP.search(text),
            _BLOCKS.search(text),
        )
        assert address and peer and http and blocks, f"unexpected node output:\n{text}"
        self.address = address.group(1)
        self.peer_id = peer.group(1)
        self.http_url = http.group(1)
        self.maddrs = _JOIN.findall(text)
        self.span = (int(blocks.group(1)), int(blocks.group(2)))

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait, then SIGKILL the process group; returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # the node's DHT process and libp2p daemon live in its process group
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout)


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def node_home(deployment: Deployment, root: Path) -> Path:
    """A fresh home whose devnet deployment is the test deployment."""
    root.mkdir(parents=True, exist_ok=True)
    deployment.save(root / "devnet" / "deployment.json")
    return root


def start_node(
    spec: NodeSpec,
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    *,
    initial_peers: Sequence[str] = (),
    model_name: str | None = None,
) -> NodeProcess:
    """Start one node process (not waiting for it)."""
    home = node_home(deployment, workdir / spec.account / "home")
    command = [
        sys.executable,
        "-m",
        "node",
        "serve",
        "--model",
        str(model_path),
        "--devnet",
        "--home",
        str(home),
        "--account",
        spec.account,
        "--http-port",
        "0",
        "--threads",
        "1",
    ]
    if model_name:
        command += ["--model-name", model_name]
    if spec.blocks:
        command += ["--blocks", spec.blocks]
    if spec.num_blocks:
        command += ["--num-blocks", str(spec.num_blocks)]
    for peer in initial_peers:
        command += ["--initial-peers", peer]
    command += list(spec.args)
    stdout, stderr = workdir / spec.account / "stdout.log", workdir / spec.account / "stderr.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    return NodeProcess(spec, process, home, stdout, stderr)


@contextmanager
def running_nodes(
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    specs: Sequence[NodeSpec],
    *,
    initial_peers: Sequence[str] = (),
    model_name: str | None = None,
    sequential: bool = False,
) -> Iterator[list[NodeProcess]]:
    """Start `specs` (the first alone unless `initial_peers`; then the rest together, or one
    after another with `sequential`, e.g. when each chooses its span from the swarm) and stop
    all of them when the block ends."""
    nodes: list[NodeProcess] = []
    try:
        peers = list(initial_peers)
        pending = list(specs)
        if not peers and pending:
            first = start_node(
                pending.pop(0), deployment, workdir, model_path, model_name=model_name
            )
            nodes.append(first)
            first.wait_ready()
            peers = first.maddrs
        batch: list[NodeProcess] = []
        for spec in pending:
            node = start_node(
                spec, deployment, workdir, model_path, initial_peers=peers, model_name=model_name
            )
            nodes.append(node)
            batch.append(node)
            if sequential:
                node.wait_ready()
        for node in batch:
            node.wait_ready()
        yield nodes
    finally:
        with ExitStack() as stack:
            for node in nodes:
                stack.callback(node.stop)


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
