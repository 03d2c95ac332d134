"""`stakeswarm dashboard`: a live web page of the swarm, served standalone.

    stakeswarm dashboard --initial-peers /ip4/127.0.0.1/tcp/PORT/p2p/PEER --devnet
    stakeswarm dashboard --initial-peers MADDR --deployment deployment.json --port 8080 \
        --verifier-url http://127.0.0.1:9100

It joins the swarm (DHT reads only: it serves nothing, pays nothing, signs nothing), reads the
chain of the deployment and the nodes' status APIs, and serves the page until Ctrl-C
(docs/dashboard.md).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from node.cli_options import DeploymentOpt, DevnetOpt, HomeOpt, check_initial_peers, fail


def dashboard(
    initial_peers: Annotated[
        list[str],
        typer.Option(
            "--initial-peers",
            help="Multiaddr of a swarm member (/ip4/HOST/tcp/PORT/p2p/PEER_ID); repeat for more.",
            show_default=False,
        ),
    ],
    devnet: DevnetOpt = False,
    deployment: DeploymentOpt = None,
    home: HomeOpt = None,
    host: Annotated[str, typer.Option(help="Address to serve the page on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve the page on (0: any free port).")] = 8080,
    verifier_url: Annotated[
        list[str] | None,
        typer.Option(
            "--verifier-url",
            help="A verifier's status API (http://HOST:PORT), for its audits; repeat for more.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
) -> None:
    """Serve a live page of the swarm: blocks map, nodes, stakes, verifiers, slashes."""
    peers = check_initial_peers(initial_peers)
    if not peers:
        fail("give --initial-peers: the multiaddr of a node of the swarm")
    if devnet == (deployment is not None):
        fail("give --devnet, or --deployment FILE")
    from dashboard.config import DashboardConfig  # web3, hivemind and torch: only when it runs
    from dashboard.service import Dashboard, DashboardError
    from ledger.deployment import Deployment
    from ledger.errors import LedgerError
    from node.logs import setup_logging
    from stakeswarm.home import Home

    setup_logging(log_level)
    console = Console(soft_wrap=True, highlight=False)
    path: Path = Home.resolve(home).devnet_deployment if devnet else deployment  # type: ignore[assignment]
    running: Dashboard | None = None
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        config = DashboardConfig(
            initial_peers=peers,
            deployment=Deployment.load(path),
            host=host,
            port=port,
            verifier_urls=tuple(verifier_url or ()),
        )
        with console.status("joining the swarm and reading the chain"):
            running = Dashboard.start(config)
        console.print(f"[bold green]dashboard[/] at {running.url}")
        console.print("ready")
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    except (DashboardError, LedgerError, ValueError) as exc:
        fail(str(exc), 1)
    finally:
        try:
            if running is not None:
                running.stop()
                console.print("dashboard stopped")
        finally:
            signal.signal(signal.SIGTERM, previous)
