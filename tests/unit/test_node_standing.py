"""What a node operator reads when the registry stops counting the node as staked."""

from __future__ import annotations

from ledger.units import TokenUnits
from node.standing import Standing

SWARM = TokenUnits(decimals=18, symbol="SWARM")


def test_a_node_below_its_required_stake_is_told_in_tokens_what_to_add() -> None:
    standing = Standing(
        active=False,
        registered=True,
        stake=25 * 10**18,
        required=40 * 10**18,
        unbonding=10 * 10**18,
        span=(0, 4),
        units=SWARM,
    )

    assert standing.problem() == (
        "its stake 25 SWARM is below the 40 SWARM its blocks [0, 4) need (slashed or unbonded?); "
        "add at least 15 SWARM with `stakeswarm chain node add-stake` to serve again"
    )
    assert standing.to_json()["stake"] == str(25 * 10**18)  # /status keeps base units


def test_a_node_with_enough_unbonding_stake_is_told_to_rebond_it() -> None:
    standing = Standing(
        active=False,
        registered=True,
        stake=25 * 10**18,
        required=40 * 10**18,
        unbonding=20 * 10**18,
        span=(0, 4),
        units=SWARM,
    )

    assert standing.problem() == (
        "its stake 25 SWARM is below the 40 SWARM its blocks [0, 4) need (slashed or unbonded?); "
        "rebond 15 SWARM of its 20 SWARM unbonding with `stakeswarm chain node rebond` "
        "(no new tokens) to serve again"
    )


def test_an_active_node_has_no_problem() -> None:
    standing = Standing(
        active=True, registered=True, stake=40 * 10**18, required=40 * 10**18, unbonding=0,
        span=(0, 4), units=SWARM,
    )  # fmt: skip
    assert standing.problem() is None
