"""The standalone dashboard: its config, built whole, run in the background, stopped whole.

    with running_dashboard(DashboardConfig(initial_peers=peers, deployment=deployment)) as board:
        print(board.url)     # http://127.0.0.1:8080/

`Dashboard.start` joins the swarm (a client-mode DHT node), connects to the chain of the
deployment, builds the `Collector` (`swarm_collector`) and a FastAPI app with
`dashboard_router`, and serves it with uvicorn in a thread of its own; `stop` shuts all of it
down in reverse order. The CLI (`stakeswarm dashboard`), `stakeswarm dev swarm` and the demo
run it this way. An application with a FastAPI app of its own (the OpenAI gateway) enters
`swarm_collector(deployment, peers)` (or passes its client's `network=`) and mounts
`dashboard_router(collector, extra=...)` instead.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from client.network import Network
from dashboard.collector import Collector
from dashboard.config import DashboardConfig
from dashboard.web import dashboard_router
from ledger.deployment import Deployment

logger = logging.getLogger(__name__)


class DashboardError(Exception):
    """The dashboard could not start (no swarm to join, no chain, the port taken)."""


class _ServerThread:
    """uvicorn serving `app` on an already bound socket, in a daemon thread."""

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._socket = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="dashboard-http", daemon=True
        )

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive():
                raise DashboardError("the dashboard's HTTP server stopped while starting")
            if waited > timeout:
                raise DashboardError(f"the dashboard's HTTP server not up after {timeout:.0f} s")
            self._thread.join(0.05)
            waited += 0.05

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()


def _listen(config: DashboardConfig) -> socket.socket:
    """A socket bound to the config's host and port (any free port when that one is taken and
    `any_port_if_taken`); `DashboardError` when neither works."""
    ports = [config.port, 0] if config.any_port_if_taken and config.port else [config.port]
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, port))
            return sock
        except OSError as exc:
            sock.close()
            problem = exc.strerror or str(exc)
            logger.info("cannot listen on %s:%d: %s", config.host, port, problem)
    raise DashboardError(f"cannot listen on {config.host}:{config.port}: {problem}")


@dataclass(frozen=True)
class Dashboard:
    """A running dashboard; `url` is where its page is."""

    url: str
    collector: Collector
    _stack: ExitStack

    def watch_verifier(self, url: str) -> None:
        """Show the audits of the verifier whose status API is at `url` from now on (one
        started after the dashboard)."""
        self.collector.watch_verifier(url)

    @classmethod
    def start(cls, config: DashboardConfig) -> Dashboard:
        """Build and start every part (see the module doc); what started is stopped again if a
        later part fails. `DashboardError` (or the chain's `LedgerError`) says why."""
        stack = ExitStack()
        try:
            sock = _listen(config)
            stack.callback(sock.close)
            collector = stack.enter_context(
                swarm_collector(
                    config.deployment,
                    config.initial_peers,
                    verifier_urls=config.verifier_urls,
                    models=config.models,
                    min_interval=config.min_interval,
                    http_timeout=config.http_timeout,
                    join_timeout=config.join_timeout,
                )
            )
            app = FastAPI(title="stakeswarm dashboard", docs_url=None, redoc_url=None)
            app.include_router(
                dashboard_router(collector, title=config.title, refresh_seconds=config.refresh)
            )
            server = _ServerThread(app, sock)
            server.start()
            stack.callback(server.stop)
        except BaseException:
            stack.close()
            raise
        host, port = sock.getsockname()[:2]
        shown = "127.0.0.1" if host == "0.0.0.0" else host
        url = f"http://{shown}:{port}/"
        logger.info("dashboard at %s", url)
        return cls(url, collector, stack)

    def stop(self) -> None:
        """Stop the HTTP server, leave the swarm (reverse order of start)."""
        self._stack.close()


@contextmanager
def swarm_collector(
    deployment: Deployment,
    initial_peers: Sequence[str] = (),
    *,
    network: Network | None = None,
    verifier_urls: Sequence[str] = (),
    models: Mapping[str, int] | None = None,
    min_interval: float = 2.0,
    http_timeout: float = 3.0,
    join_timeout: float = 60.0,
) -> Iterator[Collector]:
    """A `Collector` of the swarm and chain of `deployment` for the duration of the block: it
    joins the swarm through `initial_peers` (a client-mode DHT node, left at the end), or reads
    through `network` when given (e.g. an application's own client, which it does not stop).
    What an application mounting `dashboard_router` builds its collector with. `DashboardError`
    when the swarm cannot be joined; the chain's `LedgerError` when it cannot be read."""
    from client.errors import SwarmJoinError
    from ledger.contracts import Contracts

    with ExitStack() as stack:
        chain = deployment.connect()
        if network is None:
            try:
                network = Network.start(initial_peers, timeout=join_timeout)
            except (SwarmJoinError, ValueError) as exc:
                raise DashboardError(str(exc)) from None
            stack.callback(network.shutdown)
        http = stack.enter_context(httpx.Client(timeout=http_timeout))
        yield Collector(
            network=network,
            chain=chain,
            contracts=Contracts.from_deployment(chain, deployment),
            deployment=deployment,
            http=http,
            verifier_urls=verifier_urls,
            models=models,
            min_interval=min_interval,
        )


@contextmanager
def running_dashboard(config: DashboardConfig) -> Iterator[Dashboard]:
    """A started dashboard for the duration of the block, stopped however it ends."""
    dashboard = Dashboard.start(config)
    try:
        yield dashboard
    finally:
        dashboard.stop()
