"""What an operator sees of a node's traffic and pay: two real nodes serve the same blocks of a
tiny Llama at different prices; a client that caps its price routes through the cheaper one.
The dearer node's /status and log say it ranks 2nd of 2 and no route chose it; the cheaper one
counts its routes; `stakeswarm chain node earnings` shows what the cheaper one is owed.

Both nodes announce the same throughput (their throughput caches are written before they
start), so a client equally near both would rank them by price alone. Everything the nodes and
the client did on-chain is reverted afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from typer.testing import CliRunner

from client.model import DistributedModelForCausalLM
from ledger.deployment import Deployment
from ledger.units import TokenUnits
from node.throughput import THROUGHPUT_FILE, Throughput
from stakeswarm.cli import app
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.nodes import NodeProcess, NodeSpec, reverted_nodes

pytestmark = pytest.mark.timeout(600)

BLOCKS = 4
CHEAP, DEAR = "0.000001", "0.000002"  # tokens per token per block
CHEAP_ROUTE = BLOCKS * 10**12  # base units per token through the cheap node's 4 blocks
NODE_ARGS = ("--announce-interval", "2", "--redeem-interval", "3600")
UNITS = TokenUnits(decimals=18, symbol="SWARM")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"), "llama", BLOCKS)


def _same_throughput(home: Path, model: str) -> None:
    """Write the throughput cache of a node home so it announces 50 tokens/s, whatever its
    torch thread count."""
    entries = {}
    for threads in range(1, 129):
        measured = Throughput(model, "float32", threads, BLOCKS, 50.0, 50.0 * BLOCKS, time.time())
        entries[measured.key] = asdict(measured)
    (home / "cache").mkdir(parents=True, exist_ok=True)
    (home / "cache" / THROUGHPUT_FILE).write_text(json.dumps(entries))


@pytest.fixture(scope="module")
def swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[NodeProcess]]:
    workdir = tmp_path_factory.mktemp("operator")
    for account in ("node-0", "node-1"):
        _same_throughput(workdir / account / "home", model_path.name)
    specs = [
        NodeSpec("node-0", f"0:{BLOCKS}", args=(*NODE_ARGS, "--price", CHEAP)),
        NodeSpec("node-1", f"0:{BLOCKS}", args=(*NODE_ARGS, "--price", DEAR)),
    ]
    with reverted_nodes(deployment, workdir, model_path, specs) as nodes:
        yield nodes


def _wait_for(node: NodeProcess, ok: Callable[[dict[str, Any]], bool], timeout: float = 60):  # noqa: ANN202
    deadline = time.monotonic() + timeout
    while True:
        status = node.status()
        if ok(status):
            return status
        assert time.monotonic() < deadline, f"{node.name}: {status['routing']}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def generated(
    swarm: list[NodeProcess], deployment: Deployment, model_path: Path, tmp_path_factory
) -> torch.Tensor:  # noqa: ANN001
    wallet = Account.from_key(deployment.account("client-0").private_key)
    peers = [m for node in swarm for m in node.maddrs]
    model = DistributedModelForCausalLM.from_pretrained(
        model_path, initial_peers=peers, wallet=wallet, deployment=deployment,
        home=tmp_path_factory.mktemp("client"), max_price=CHEAP_ROUTE,
    )  # fmt: skip
    try:
        return model.generate(torch.tensor([[1, 17, 42, 99]]), max_new_tokens=3)
    finally:
        model.close()


def test_the_dearer_node_says_it_ranks_second_and_no_route_chose_it(
    swarm: list[NodeProcess], generated: torch.Tensor
) -> None:
    cheap, dear = swarm
    assert generated.shape == (1, 7)
    routed = _wait_for(cheap, lambda s: s["routing"]["rank"] is not None)
    assert routed["routing"]["routes_total"] >= 1  # every session the client opened came here
    assert routed["routing"]["routes_last_hour"] == routed["routing"]["routes_total"]
    assert routed["routing"]["rank"]["position"] == 1
    assert routed["routing"]["rank"]["cheaper"] == 0

    status = _wait_for(dear, lambda s: (s["routing"]["rank"] or {}).get("servers") == 2)
    rank = status["routing"]["rank"]
    assert (rank["position"], rank["servers"], rank["cheaper"]) == (2, 2, 1)
    assert rank["price_per_block"] == "0.000002 SWARM"
    assert rank["cheapest_per_block"] == "0.000001 SWARM"
    assert rank["max_price_needed_base_units"] == str(2 * CHEAP_ROUTE)
    assert (status["routing"]["routes_total"], status["routing"]["routes_last_hour"]) == (0, 0)
    assert status["routing"]["last_route_at"] is None
    assert "2nd choice of 2 server(s) for blocks 0:4" in rank["summary"]
    assert "--max-price below 0.000008 skip it" in rank["summary"]
    assert "routing rank: it is the 2nd choice of 2" in dear.stderr.read_text()
    assert status["earnings"]["unredeemed"] == "0 SWARM"
    assert status["price"]["per_token"] == "0.000008 SWARM"
    assert status["stake"]["active_base_units"] == status["registry"]["stake"]


def test_earnings_show_each_channel_and_what_is_owed_in_tokens(
    swarm: list[NodeProcess], generated: torch.Tensor, deployment: Deployment
) -> None:
    cheap = swarm[0]
    owed = int(cheap.status()["earnings"]["unredeemed_base_units"])
    assert owed > 0
    runner = CliRunner()
    base = ["chain", "node", "earnings", "--devnet", "--account", "node-0"]
    result = runner.invoke(app, [*base, "--home", str(cheap.home)])
    assert result.exit_code == 0, result.output
    client = deployment.account("client-0").address
    assert "(open)" in result.output and client in result.output
    assert f"owed      {UNITS.show(owed)}" in result.output
    assert "redeemed  0 SWARM" in result.output  # nothing redeemed yet (hourly redemption)
    assert "Earnings of node" in result.output and "channels  1" in result.output
    assert "UTC" in result.output  # the expiry as a date

    # a home without the node's ledger: the chain's side, and owed is said to be unknown
    elsewhere = runner.invoke(
        app, [*base, "--home", str(cheap.home.parent.parent / "node-1" / "home")]
    )
    assert elsewhere.exit_code == 0, elsewhere.output
    assert "owed      unknown" in elsewhere.output
    assert "owed is unknown: no node ledger at" in elsewhere.output
