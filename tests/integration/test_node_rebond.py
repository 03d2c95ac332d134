"""A node that unbonded and serves again rebonds its unbonding stake instead of pulling fresh
tokens; `stakeswarm chain node rebond` and `chain verifier rebond` do it by hand. Against the
session devnet (each test's chain state is reverted after it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from typer.testing import CliRunner, Result

from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.types import ModelId, Wei, model_id
from node.registration import ensure_registered
from stakeswarm.cli import app
from stakeswarm.home import Home

PEER = b"\x00\x24\x08\x01\x12\x20" + b"\x07" * 32
MODEL: ModelId = model_id("tiny-llama")


@pytest.fixture
def run(devnet_home: Home, chain) -> Callable[..., Result]:  # noqa: ANN001
    """`stakeswarm chain ARGS --devnet --home <the devnet's home>` (chain: reverted after)."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, ["chain", *args, "--devnet", "--home", str(devnet_home.root)])

    return invoke


def test_serving_again_after_unbonding_rebonds_instead_of_pulling_fresh_tokens(
    contracts_as: Callable[[str], Contracts], deployment: Deployment, caplog
) -> None:  # noqa: ANN001
    node = contracts_as("node-2")
    address = deployment.account("node-2").address
    registry = node.node_registry

    def serve() -> None:  # what `node serve` does at start
        ensure_registered(
            registry, address=address, model_id=MODEL, span=(0, 4),
            price_per_block=Wei(10**12), peer=PEER, stake_wanted=None,
        )  # fmt: skip

    serve()
    required = registry.required_stake(0, 4)
    assert registry.get_node(address).stake == required
    registry.unbond(required)  # the operator stopped and unbonded everything
    assert not registry.is_active(address)
    balance = node.token.balance_of(address)

    with caplog.at_level("INFO", logger="node.registration"):
        serve()
    after = registry.get_node(address)
    assert (after.stake, after.unbonding, after.unbonding_release_at) == (required, 0, 0)
    assert registry.is_active(address)
    assert node.token.balance_of(address) == balance  # no fresh tokens pulled
    assert "rebonded" in caplog.text and "no fresh tokens pulled" in caplog.text
    assert "SWARM" in caplog.text


def test_serving_a_longer_span_rebonds_first_then_adds_only_the_rest(
    contracts_as: Callable[[str], Contracts], deployment: Deployment
) -> None:
    node = contracts_as("node-2")
    address = deployment.account("node-2").address
    registry = node.node_registry
    per_block = registry.min_stake_per_block()
    registry.register_with_approve(MODEL, 0, 2, Wei(10**12), PEER, Wei(2 * per_block))
    registry.unbond(Wei(2 * per_block))
    balance = node.token.balance_of(address)
    ensure_registered(
        registry, address=address, model_id=MODEL, span=(0, 3),
        price_per_block=Wei(10**12), peer=PEER, stake_wanted=None,
    )  # fmt: skip
    after = registry.get_node(address)
    assert (after.span_start, after.span_end, after.stake, after.unbonding) == (
        0, 3, 3 * per_block, 0,
    )  # fmt: skip
    assert node.token.balance_of(address) == balance - per_block  # one block's stake is fresh


def test_chain_node_rebond_moves_unbonding_back(
    run: Callable[..., Result], contracts: Contracts, deployment: Deployment
) -> None:
    register = run(
        "node", "register", "--model", "tiny-llama", "--blocks", "0:2", "--price", "0.001",
        "--peer-id", "12D3KooWAbc", "--stake", "50", "--account", "node-3",
    )  # fmt: skip
    assert register.exit_code == 0, register.output
    assert run("node", "unbond", "--amount", "30", "--account", "node-3").exit_code == 0
    nothing = run("node", "rebond", "--amount", "31", "--account", "node-3")
    assert nothing.exit_code == 1 and "StakeRebondExceedsUnbonding" in nothing.output
    part = run("node", "rebond", "--amount", "10", "--account", "node-3")
    assert part.exit_code == 0, part.output
    assert "rebonded 10 SWARM" in part.output
    rest = run("node", "rebond", "--account", "node-3")  # default: all that is unbonding
    assert rest.exit_code == 0, rest.output
    assert "rebonded 20 SWARM" in rest.output
    node = contracts.node_registry.get_node(deployment.account("node-3").address)
    assert (node.stake, node.unbonding) == (50 * TOKEN, 0)
    again = run("node", "rebond", "--account", "node-3")
    assert again.exit_code == 2 and "nothing to rebond" in again.output  # a usage error


def test_chain_verifier_rebond_moves_unbonding_back(
    run: Callable[..., Result], contracts: Contracts, deployment: Deployment
) -> None:
    minimum = contracts.verifier_registry.min_stake()
    stake = str(2 * minimum // TOKEN)
    assert run("verifier", "register", "--stake", stake, "--account", "client-2").exit_code == 0
    unbond = str(minimum // TOKEN)
    assert run("verifier", "unbond", "--amount", unbond, "--account", "client-2").exit_code == 0
    result = run("verifier", "rebond", "--account", "client-2")
    assert result.exit_code == 0, result.output
    assert f"rebonded {unbond} SWARM" in result.output
    info = contracts.verifier_registry.get_verifier(deployment.account("client-2").address)
    assert (info.stake, info.unbonding) == (2 * minimum, 0)
