"""Building the gateway whole and stopping it whole.

    with contextlib.ExitStack() as stops:
        gateway = build_gateway(config, account=wallet, deployment=deployment, stops=stops)
        gateway.serve()                         # blocks; Ctrl-C / SIGTERM end it
    # or, beside other work (tests, examples):
    with running_gateway(config, account=wallet, deployment=deployment) as gateway:
        OpenAI(base_url=gateway.url + "/v1", api_key=key)

`build_gateway` builds, in order, the keys' database, the paying client with the model's
local ends (`DistributedModelForCausalLM`, one per generation slot, sharing the client), the
engine, the dashboard's collector (over the client's own view of the swarm), the app (the
OpenAI API under `/v1`, the live dashboard of the swarm at `/`, with the gateway's spend) and
the listening socket, pushing each started part's stop on `stops`: closing it cancels the
generations in flight and waits until they are settled, then leaves the swarm, then closes the
keys' database.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from eth_account.signers.local import LocalAccount
from fastapi import APIRouter, FastAPI

from dashboard.service import swarm_collector
from dashboard.web import dashboard_router
from gateway.accounts import Accounts
from gateway.api import ApiParts, create_app
from gateway.config import GatewayConfig, GatewayConfigError
from gateway.engine import Engine
from ledger.db import Ledger, open_ledger, sqlite_url
from ledger.deployment import Deployment

if TYPE_CHECKING:
    from client.model import DistributedModelForCausalLM

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048  # a model whose config states no context length
GRACEFUL_SHUTDOWN = 5  # seconds open connections get to finish when the gateway stops


@dataclass(frozen=True)
class Gateway:
    """A built gateway: its parts, and the socket it listens on."""

    config: GatewayConfig
    keys: Ledger  # the API keys' database
    accounts: Accounts  # keys, budgets, charges
    engine: Engine  # generations through the swarm (its client pays)
    model: DistributedModelForCausalLM  # the first slot's model: its client is the wallet's
    app: FastAPI
    listener: socket.socket  # bound to host:port, listening once served

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    @property
    def url(self) -> str:
        """The gateway's root URL (the OpenAI base URL is this plus `/v1`)."""
        return f"http://{self.config.host}:{self.port}"

    def server(self) -> _Server:
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
        return _Server(config)

    def serve(self) -> None:
        """Serve until Ctrl-C or SIGTERM (from the main thread); then return, for the caller to
        stop the parts."""
        server = self.server()

        def stop(signum: int, frame: object) -> None:
            logger.info("signal %d: the gateway stops", signum)
            server.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run(sockets=[self.listener])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway's owner stops it (`serve` on
    SIGINT/SIGTERM, `running_gateway` when its block ends) and then stops every part."""

    def capture_signals(self):  # type: ignore[no-untyped-def, override]
        return contextlib.nullcontext()


def open_keys(config: GatewayConfig) -> Ledger:
    """The API keys' database of `config` (created and migrated when new)."""
    if config.keys_url is not None:
        return open_ledger(config.keys_url)
    path = config.keys_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_ledger(sqlite_url(path))


def build_gateway(
    config: GatewayConfig,
    *,
    account: LocalAccount,
    deployment: Deployment,
    stops: contextlib.ExitStack,
    routers: Sequence[APIRouter] = (),
) -> Gateway:
    """Build every part of a gateway paying with `account` on `deployment` (see the module
    doc), with `routers` added to its app; each started part's stop goes on `stops`."""
    from client.model import DistributedModelForCausalLM

    keys = open_keys(config)
    stops.callback(keys.close)
    client_config = config.client
    model = DistributedModelForCausalLM.from_pretrained(
        client_config.model_path, initial_peers=list(client_config.initial_peers),
        wallet=account, deployment=deployment, config=client_config,
    )  # fmt: skip
    stops.callback(model.close)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise GatewayConfigError(f"{client_config.model_path} has no tokenizer files")
    # one model per generation slot: a model steps one session at a time; they share the
    # client (wallet, channels, router) and the local ends
    models = [model]
    for _ in range(config.max_concurrent - 1):
        view = DistributedModelForCausalLM(model.config, model.head, model.client, tokenizer)
        view.generation_config = model.generation_config
        view.eval()
        models.append(view)
    context = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)
    engine = Engine(models, tokenizer, context=context)
    stops.callback(engine.close)
    accounts = Accounts(keys)
    units = model.client.payments.units
    parts = ApiParts(config=config, accounts=accounts, engine=engine, units=units)
    collector = stops.enter_context(swarm_collector(deployment, network=model.client.network))
    address = model.client.address

    def spend() -> dict[str, Any]:
        figures = accounts.figures()
        return {
            "title": "This gateway",
            "rows": [
                ["wallet paying the swarm", address],
                ["API keys in use", str(figures["keys"])],
                ["requests served", str(figures["requests"])],
                [
                    "tokens (prompt / generated)",
                    f"{figures['prompt_tokens']} / {figures['completion_tokens']}",
                ],
                ["charged to keys (vouchers signed)", units.show(figures["spent"])],
                ["reserved by requests in flight", units.show(figures["reserved"])],
            ],
        }

    dashboard = dashboard_router(collector, extra=spend, title="stakeswarm gateway")
    app = create_app(parts, [*routers, dashboard])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stops.callback(listener.close)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((config.host, config.port))
    listener.listen(128)  # connections wait in the backlog until the server accepts them
    gateway = Gateway(config, keys, accounts, engine, model, app, listener)
    logger.info("gateway for %s at %s", config.served_model, gateway.url)
    return gateway


@contextlib.contextmanager
def running_gateway(
    config: GatewayConfig,
    *,
    account: LocalAccount,
    deployment: Deployment,
    routers: Sequence[APIRouter] = (),
) -> Iterator[Gateway]:
    """A gateway built and serving in a thread of its own until the block ends; then it is
    stopped whole (generations in flight cancelled and settled first)."""
    with contextlib.ExitStack() as stops:
        gateway = build_gateway(
            config, account=account, deployment=deployment, stops=stops, routers=routers
        )
        server = gateway.server()
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [gateway.listener]}, name="gateway-http",
            daemon=True,
        )  # fmt: skip
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the gateway's HTTP server stopped while starting")
                threading.Event().wait(0.02)
            yield gateway
        finally:
            gateway.engine.cancel_all()  # streams in flight end, so the server can stop
            server.should_exit = True
            thread.join(timeout=10)
