"""The node's HTTP status API (FastAPI, served by uvicorn inside the node's event loop).

    GET /health   200 {"status": "ok"} while the node serves; 503 {"status": "unavailable",
                  "reason": ...} while starting, stopping, or after a ledger failure
    GET /status   state, standing in the registry, span, dtype, device and its memory,
                  throughput, prices, stake, sessions,
                  cache use, earnings, routing rank and routes, commitments (JSON; amounts
                  as tokens beside exact `..._base_units`)
    GET /metrics  Prometheus text: steps, tokens, errors by code, cache tokens, commits, redeems,
                  whether the registry counts the node as active, the device and dtype served
                  and the device's memory (total, free, in use, held by this process)

`NodeMetrics` holds the Prometheus series on a registry of its own (never the process-global
one, so several nodes can live in one test process).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from node.device import DeviceMemory
from node.protocol import ErrorCode

logger = logging.getLogger(__name__)


class NodeMetrics:
    """The node's Prometheus series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.steps = Counter("stakeswarm_steps", "Inference steps served", registry=r)
        self.tokens = Counter("stakeswarm_tokens", "Token positions computed", registry=r)
        self.errors = Counter(
            "stakeswarm_errors", "Requests refused, by error code", ["code"], registry=r
        )
        self.sessions_open = Gauge("stakeswarm_sessions_open", "Open sessions", registry=r)
        self.cache_tokens = Gauge(
            "stakeswarm_cache_tokens_used", "KV cache tokens reserved by sessions", registry=r
        )
        self.commits = Counter("stakeswarm_commits", "Batches committed on-chain", registry=r)
        self.redeems = Counter("stakeswarm_redeems", "Vouchers redeemed on-chain", registry=r)
        self.challenges_answered = Counter(
            "stakeswarm_challenges_answered", "Receipt challenges answered on-chain", registry=r
        )
        self.reveals = Counter("stakeswarm_reveals", "Reveals answered", registry=r)
        self.active = Gauge(
            "stakeswarm_registry_active",
            "1 while the NodeRegistry counts this node as active (staked for its span), else 0",
            registry=r,
        )

    def watch_device(self, device: str, dtype: str, memory: Callable[[], DeviceMemory]) -> None:
        """Serve the device the node computes on and the precision it serves in (`dtype`:
        bfloat16, bfloat16+int8), and `memory()` read at each scrape, as series labelled with
        the device."""
        r = self.registry
        Gauge(
            "stakeswarm_serving",
            "1, labelled with the device the node computes on and the dtype it serves in",
            ["device", "dtype"],
            registry=r,
        ).labels(device=device, dtype=dtype).set(1)
        readings: dict[str, tuple[str, Callable[[DeviceMemory], int]]] = {
            "total": ("What the device has", lambda m: m.total),
            "free": ("What new allocations may still take (CPU: RAM available)", lambda m: m.free),
            "used": ("In use on the device, by any process", lambda m: m.used),
            "process": ("Held by this node on the device", lambda m: m.process),
        }
        for name, (about, read) in readings.items():
            gauge = Gauge(
                f"stakeswarm_device_memory_{name}_bytes", about, ["device"], registry=r
            ).labels(device=device)
            gauge.set_function(functools.partial(_reading, read, memory))

    def served(self, tokens: int) -> None:
        self.steps.inc()
        self.tokens.inc(tokens)

    def error(self, code: ErrorCode) -> None:
        self.errors.labels(code=code.value).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _reading(read: Callable[[DeviceMemory], int], memory: Callable[[], DeviceMemory]) -> float:
    return float(read(memory()))


def status_app(
    title: str,
    *,
    status: Callable[[], dict[str, Any]],
    healthy: Callable[[], bool],
    problem: Callable[[], str | None] | None = None,
) -> FastAPI:
    """`/health` over `healthy()` (with `problem()`, when given, as the reason it fails) and
    `/status` over `status()` (called in a worker thread: it may read the ledger): what a
    node's and a verifier's API both serve."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> JSONResponse:
        if healthy():
            return JSONResponse({"status": "ok"}, 200)
        body: dict[str, Any] = {"status": "unavailable"}
        reason = problem() if problem is not None else None
        if reason is not None:
            body["reason"] = reason
        return JSONResponse(body, 503)

    @app.get("/status")
    def get_status() -> dict[str, Any]:
        return status()

    return app


def build_app(
    *,
    status: Callable[[], dict[str, Any]],
    healthy: Callable[[], bool],
    metrics: NodeMetrics,
    problem: Callable[[], str | None] | None = None,
) -> FastAPI:
    """The API over the node's `status()` (called in a worker thread: it may read the ledger),
    `healthy()` and `problem()` (why it is not healthy)."""
    app = status_app("stakeswarm node", status=status, healthy=healthy, problem=problem)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the node's loop: the node handles SIGINT/SIGTERM itself."""

    def capture_signals(self):  # type: ignore[no-untyped-def, override]
        import contextlib

        return contextlib.nullcontext()


class HttpApi:
    """Runs the API on `host:port` (0: a free port, see `port` once started)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it stopped
                raise RuntimeError("the HTTP API stopped while starting")
            await asyncio.sleep(0.01)
        logger.info("status API at %s", self.url)

    async def stop(self) -> None:
        if self._task is None:
            self._socket.close()
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5)
        except TimeoutError:
            self._task.cancel()
        self._socket.close()
