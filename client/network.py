"""The client's presence in the swarm: a libp2p daemon and a client-mode DHT node, run on an
asyncio loop in a thread of its own, behind a blocking API.

hivemind's `P2P` and `DHTNode` are bound to the loop they were created on; the client's model
code is synchronous (Hugging Face `generate` calls `forward` in the caller's thread), so every
network call is submitted to that loop and waited for. Nothing here pays or decides: it reads
the DHT (`servers`), measures round trips (`ping`) and moves frames (`open_session`, `step`).

    network = Network.start(["/ip4/127.0.0.1/tcp/31337/p2p/Qm..."])
    servers = network.servers("tiny-llama", total_blocks=6)   # peer id -> ServerInfo
    info, rtt = network.ping(peer_id)
    network.shutdown()
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import psutil
import torch
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P

from client.errors import SwarmJoinError
from client.remote import RemoteSpanSession, remote_backward, remote_forward, remote_info
from ledger.types import Voucher
from node.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    BackwardRequest,
    ForwardRequest,
    InfoResponse,
    ProtocolError,
    PushRequest,
    PushTarget,
    ServerInfo,
    ServerState,
    SignedReceipt,
    block_key,
)
from node.push import push_input

logger = logging.getLogger(__name__)

T = TypeVar("T")


class EventLoopThread:
    """An asyncio loop running in a daemon thread; `run(coro)` waits for the result from any
    other thread."""

    def __init__(self, name: str = "stakeswarm-client") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and return its result (its exception is raised here)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("EventLoopThread.run called from its own loop: it would deadlock")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except (TimeoutError, KeyboardInterrupt):  # given up on (Ctrl-C too): stop it there
            future.cancel()
            raise

    def close(self) -> None:
        """Cancel what still runs, stop the loop and join the thread."""
        if self.loop.is_closed():
            return

        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_the_rest(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


async def _read_records(node: DHTNode, model_name: str, total_blocks: int) -> dict[str, ServerInfo]:
    keys = [block_key(model_name, block) for block in range(total_blocks)]
    found = await node.get_many(keys, sufficient_expiration_time=float("inf"))
    newest: dict[str, tuple[float, ServerInfo]] = {}
    for key, entry in found.items():
        if entry is None or not isinstance(entry.value, dict):
            continue
        for subkey, item in entry.value.items():
            if not isinstance(subkey, str):
                continue
            try:
                info = ServerInfo.from_wire(item.value)
            except ProtocolError as exc:
                logger.debug("ignoring a malformed record of %s under %s: %s", subkey, key, exc)
                continue
            if info.span_end > total_blocks:
                logger.debug("ignoring %s: span [%d, %d) beyond the model", subkey, *_span(info))
                continue
            if subkey not in newest or item.expiration_time > newest[subkey][0]:
                newest[subkey] = (item.expiration_time, info)
    return {
        peer: info
        for peer, (_, info) in sorted(newest.items())
        if info.state != ServerState.OFFLINE
    }


def _span(info: ServerInfo) -> tuple[int, int]:
    return info.span_start, info.span_end


async def _daemons_reaped(timeout: float = 2.0) -> None:
    """Wait (at most `timeout` s) until asyncio's child watcher has reaped our exited children.

    A p2pd that failed to start (no bootstrap peer answered) is left to the watcher; reaped
    after this loop closed, the watcher would warn that the loop "that handles pid ... is
    closed", a second line under the one error a user should see."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            exited = [c for c in me.children() if c.status() == psutil.STATUS_ZOMBIE]
        except psutil.Error:
            break
        if not exited:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0)  # the watcher's callback runs on this loop


class Network:
    """A P2P daemon and a client-mode DHT node on a private loop thread (see the module doc)."""

    def __init__(self, runner: EventLoopThread, p2p: P2P, dht: DHTNode) -> None:
        self.runner = runner
        self.p2p = p2p
        self.dht = dht

    @classmethod
    def start(cls, initial_peers: Sequence[str], *, timeout: float = 60.0) -> Network:
        """Join the swarm through `initial_peers` (multiaddrs); raises `SwarmJoinError` (a
        `ConnectionError`) when none can be reached."""
        if not initial_peers:
            raise ValueError("give at least one initial peer (a multiaddr of a swarm member)")
        runner = EventLoopThread()

        async def start() -> tuple[P2P, DHTNode]:
            try:
                p2p = await P2P.create(initial_peers=list(initial_peers))
            except BaseException:
                await _daemons_reaped()
                raise
            try:
                dht = await DHTNode.create(
                    p2p=p2p, initial_peers=list(initial_peers), client_mode=True
                )
            except BaseException:
                await p2p.shutdown()
                raise
            return p2p, dht

        try:
            p2p, dht = runner.run(start(), timeout)
        except Exception as exc:
            runner.close()
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SwarmJoinError(
                f"cannot join the swarm: no answer from {', '.join(initial_peers)} ({cause})"
            ) from exc
        logger.info("joined the swarm as %s", p2p.peer_id)
        return cls(runner, p2p, dht)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.runner.run(coro, timeout)

    def servers(
        self, model_name: str, total_blocks: int, *, timeout: float = 30.0
    ) -> dict[str, ServerInfo]:
        """Every server announced for any block of `model_name`, by peer id: its newest valid
        record; malformed and OFFLINE records are skipped."""
        return self.run(_read_records(self.dht, model_name, total_blocks), timeout)

    def ping(self, peer_id: str, *, timeout: float = 5.0) -> tuple[InfoResponse, float]:
        """The server's `info` answer and the seconds it took (a round trip)."""
        began = time.perf_counter()
        info = self.run(remote_info(self.p2p, peer_id, timeout=timeout))
        return info, time.perf_counter() - began

    def open_session(
        self,
        peer_id: str,
        *,
        session_id: bytes,
        span: tuple[int, int],
        max_length: int,
        batch_size: int,
        channel_id: int,
        dtype: str,
        timeout: float,
        prompts: torch.Tensor | None = None,
    ) -> RemoteSpanSession:
        return self.run(
            RemoteSpanSession.open(
                self.p2p,
                peer_id,
                session_id=session_id,
                span=span,
                max_length=max_length,
                batch_size=batch_size,
                channel_id=channel_id,
                dtype=dtype,
                timeout=timeout,
                prompts=prompts,
            )
        )

    def step(
        self,
        session: RemoteSpanSession,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        voucher: Voucher,
        *,
        timeout: float,
        silence: float,
    ) -> tuple[torch.Tensor, SignedReceipt]:
        return self.run(session.step(hidden, mask, voucher, timeout=timeout, silence=silence))

    def send_step(
        self,
        session: RemoteSpanSession,
        hidden: torch.Tensor | None,
        mask: torch.Tensor,
        voucher: Voucher,
        *,
        push_to: PushTarget | None,
        pushed_from: str | None,
    ) -> None:
        async def send() -> None:
            session.send(hidden, mask, voucher, push_to=push_to, pushed_from=pushed_from)

        self.run(send())

    def receive_step(
        self, session: RemoteSpanSession, *, timeout: float, silence: float
    ) -> tuple[torch.Tensor, SignedReceipt, bool | None]:
        return self.run(session.receive(timeout=timeout, silence=silence))

    def push(
        self, peer_id: str, request: PushRequest, hidden: torch.Tensor, *, timeout: float
    ) -> None:
        """Push `hidden` as a pipelined step's input (`node.push`)."""
        self.run(
            push_input(
                self.p2p,
                peer_id,
                request,
                hidden,
                timeout=timeout,
                max_bytes=DEFAULT_MAX_FRAME_BYTES,
            )
        )

    def forward(
        self,
        peer_id: str,
        request: ForwardRequest,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        *,
        timeout: float,
        silence: float,
        prompts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, SignedReceipt]:
        """A paid stateless forward (`client.remote.remote_forward`)."""
        return self.run(
            remote_forward(
                self.p2p,
                peer_id,
                request,
                hidden,
                mask,
                timeout=timeout,
                silence=silence,
                prompts=prompts,
            )
        )

    def backward(
        self,
        peer_id: str,
        request: BackwardRequest,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        grad_output: torch.Tensor,
        *,
        timeout: float,
        silence: float,
        prompts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, SignedReceipt, torch.Tensor | None]:
        """A paid backward of a stateless forward (`client.remote.remote_backward`)."""
        return self.run(
            remote_backward(
                self.p2p,
                peer_id,
                request,
                hidden,
                mask,
                grad_output,
                timeout=timeout,
                silence=silence,
                prompts=prompts,
            )
        )

    def close_session(self, session: RemoteSpanSession) -> None:
        if not self.runner.loop.is_closed():
            self.run(session.close(), timeout=10)

    def shutdown(self) -> None:
        """Leave the swarm: stop the DHT node and the daemon, then the loop."""
        try:
            self.run(self._shutdown(), timeout=30)
        except Exception as exc:  # leaving must not fail the caller
            logger.warning("leaving the swarm: %s", exc)
        finally:
            self.runner.close()

    async def _shutdown(self) -> None:
        try:
            await self.dht.shutdown()
        finally:
            await self.p2p.shutdown()
