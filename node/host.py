"""`ServiceHost`: what every long-running service of stakeswarm runs under (node, verifier).

    host = ServiceHost(HostConfig(initial_peers=..., identity_path=...))
    host.run(service.start)   # blocks until SIGINT/SIGTERM or `host.request_stop()`

The host owns what every service needs and none should wire twice: the signals, the hivemind
DHT (started in `run` before any thread of ours exists: it forks), the libp2p daemon the
service's RPCs run on (`host.p2p`), the HTTP status API (`serve_api`), the periodic jobs
(`start_jobs`, APScheduler in the event loop) and one exit stack (`host.stops`).

`run` calls `start(host)` inside the event loop. `start` builds and starts the service's parts
and registers how each one stops on `host.stops` as soon as it has started; then the host waits
for a stop request. However the start or the serving ends, the stack unwinds in the reverse
order of starting: the service's parts (last started, first stopped), then the status API, the
libp2p daemon, and last the DHT. A start that fails stops exactly what had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI
from hivemind import DHT
from hivemind.p2p import P2P, PeerID

from node.api import HttpApi

logger = logging.getLogger(__name__)

Job = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class HostConfig:
    """Where a service joins the swarm."""

    identity_path: str  # the libp2p key file: a stable peer id across restarts
    initial_peers: tuple[str, ...] = ()  # multiaddrs to join through (none: start a swarm)
    host_maddrs: tuple[str, ...] = ()  # where to listen
    announce_maddrs: tuple[str, ...] = ()  # what to tell others (none: what we listen on)
    name: str = "service"  # for the log


@dataclass(frozen=True)
class PeriodicJob:
    """A coroutine run every `seconds` (never two runs of one job at once; a missed run is
    merged into the next). `now`: its first run at start, else after `seconds`."""

    job: Job
    seconds: float
    id: str | None = None
    now: bool = False


class ServiceHost:
    """Runs one service: see the module doc."""

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self._dht: DHT | None = None
        self._p2p: P2P | None = None
        self._api: HttpApi | None = None
        self._stops: contextlib.AsyncExitStack | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._wake: asyncio.Event | None = None

    # --- what a service uses ---------------------------------------------------------------

    @property
    def dht(self) -> DHT:
        if self._dht is None:
            raise RuntimeError("the host is not running")
        return self._dht

    @property
    def p2p(self) -> P2P:
        if self._p2p is None:
            raise RuntimeError("the host is not serving")
        return self._p2p

    @property
    def stops(self) -> contextlib.AsyncExitStack:
        """The exit stack a service registers how its started parts stop on."""
        if self._stops is None:
            raise RuntimeError("the host is not serving")
        return self._stops

    @property
    def peer_id(self) -> PeerID:
        return self.dht.peer_id

    @property
    def maddrs(self) -> tuple[str, ...]:
        return tuple(str(m) for m in self.dht.get_visible_maddrs())

    @property
    def api(self) -> HttpApi | None:
        """The status API, once `serve_api` started it."""
        return self._api

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def serve_api(self, app: FastAPI, host: str, port: int) -> HttpApi:
        """Serve `app` on `host:port` (0: a free port) until the host stops: after every part
        of the service (a node's last commit still shows in `/status`)."""
        self._api = HttpApi(app, host, port)
        await self._api.start()
        return self._api

    def start_jobs(self, jobs: Iterable[PeriodicJob]) -> AsyncIOScheduler:
        """Run `jobs` until the stop; they stop (a running one cancelled) before the parts
        started earlier than this call."""
        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        running: set[asyncio.Task[Any]] = set()  # the runs in progress
        for job in jobs:
            extra: dict[str, Any] = {}
            if job.now:
                extra["next_run_time"] = datetime.now(UTC)
            scheduler.add_job(
                _tracked(job.job, running), "interval", seconds=job.seconds, id=job.id, **extra
            )
        scheduler.start()
        self.stops.push_async_callback(_stop_jobs, scheduler, running)
        return scheduler

    # --- lifecycle -------------------------------------------------------------------------

    def run(self, start: Callable[[ServiceHost], Awaitable[None]]) -> None:
        """Start the DHT, then in an event loop the libp2p daemon and `start(self)`; serve until
        asked to stop; stop everything in reverse order. Raises what a failed start raised. In
        the main thread SIGINT/SIGTERM stop it; in another thread, `request_stop()` does."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if main else None
        try:
            config = self.config
            self._dht = DHT(
                initial_peers=list(config.initial_peers) or None,
                host_maddrs=list(config.host_maddrs),
                announce_maddrs=list(config.announce_maddrs) or None,
                identity_path=config.identity_path,
                start=True,
            )
            asyncio.run(self._serve(start, main))
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if self._dht is not None:
                self._dht.shutdown()

    def request_stop(self) -> None:
        """Ask the running service to stop (thread-safe; before it is serving: once it is)."""
        self._stop.set()
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _serve(self, start: Callable[[ServiceHost], Awaitable[None]], main: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self.request_stop)
        async with contextlib.AsyncExitStack() as stops:
            self._stops = stops
            stops.callback(logger.info, "%s stopped", self.config.name)
            self._p2p = await self.dht.replicate_p2p()
            stops.push_async_callback(self._p2p.shutdown)
            stops.push_async_callback(self._stop_api)
            await start(self)
            if not self._stop.is_set():
                await self._wake.wait()
            logger.info("shutting down")

    async def _stop_api(self) -> None:
        if self._api is not None:
            await self._api.stop()


def _tracked(job: Job, running: set[asyncio.Task[Any]]) -> Job:
    async def run() -> None:
        task = asyncio.current_task()
        if task is not None:
            running.add(task)
        try:
            await job()
        except Exception:  # a failed run is logged; the job runs again at its next time
            logger.exception("%s failed", name)
        finally:
            if task is not None:
                running.discard(task)

    name = getattr(job, "__name__", "a job")
    run.__name__ = name
    return run


async def _stop_jobs(scheduler: AsyncIOScheduler, running: set[asyncio.Task[Any]]) -> None:
    scheduler.shutdown(wait=False)
    for task in list(running):
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
