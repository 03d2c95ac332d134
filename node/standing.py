"""Whether the NodeRegistry still counts this node as staked for its span.

A node serves only while the registry says it is active: registered, with active stake covering
`requiredStake` of its span. A slash (or an unbond) can take that away while the node runs;
its commits then revert (`RegistryNodeInactive`) and no client should route through it.
`read_standing` asks the chain; `Standing.problem` says in words what is wrong, and how to fix
it. The server reads it on a schedule and whenever a commit fails, and stops or resumes
serving when it changes (`node.server`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ledger.contracts import NodeRegistry
from ledger.units import TokenUnits


@dataclass(frozen=True)
class Standing:
    """What the NodeRegistry says of one node at one moment."""

    active: bool  # `NodeRegistry.isActive`: registered and staked for its span
    registered: bool
    stake: int  # active stake, token base units
    required: int  # the stake its registered span needs (0 when not registered)
    unbonding: int  # stake on its way out, which `rebond` returns without new tokens
    span: tuple[int, int]  # the registered span
    units: TokenUnits  # the stake token, for `problem`
    checked_at: float = field(default_factory=time.time)  # unix seconds of the read

    def problem(self) -> str | None:
        """None while active, else why the node may not serve and what would fix it."""
        if self.active:
            return None
        if not self.registered:
            return "this node is not registered in the NodeRegistry"
        start, end = self.span
        show = self.units.show
        missing = self.required - self.stake
        if self.unbonding >= missing:
            fix = (
                f"rebond {show(missing)} of its {show(self.unbonding)} unbonding with "
                "`stakeswarm chain node rebond` (no new tokens)"
            )
        else:
            fix = f"add at least {show(missing)} with `stakeswarm chain node add-stake`"
        return (
            f"its stake {show(self.stake)} is below the {show(self.required)} its blocks "
            f"[{start}, {end}) need (slashed or unbonded?); {fix} to serve again"
        )

    def to_json(self) -> dict[str, object]:
        """For the node's `/status`: amounts as decimal strings of token base units."""
        return {
            "active": self.active,
            "stake": str(self.stake),
            "required_stake": str(self.required),
            "unbonding_stake": str(self.unbonding),
            "checked_at": self.checked_at,
        }


def read_standing(registry: NodeRegistry, address: str) -> Standing:
    """The registry's view of `address` at the latest block (blocking chain reads, pinned to
    one block so stake and activity agree; raises `ChainError`)."""
    block = registry.chain.block_number()
    node = registry.get_node(address, block=block)
    active = registry.is_active(address, block=block)
    required = registry.required_stake(node.span_start, node.span_end) if node.registered else 0
    return Standing(
        active=active,
        registered=node.registered,
        stake=int(node.stake),
        required=int(required),
        unbonding=int(node.unbonding),
        span=(node.span_start, node.span_end),
        units=registry.units,
    )
