"""The node's registration in the NodeRegistry: what it serves, at what price, with what stake.

`plan_registration` decides (a pure function) which transactions make the registry show what
the node serves; `ensure_registered` reads the registry and sends them. A restart that changes
nothing sends nothing. A node that unbonded and serves again rebonds its unbonding stake
(`StakeRegistry.rebond`, no token moves) before it pulls fresh tokens from its balance. A
transaction the registry refuses (a wallet short of the stake, say) is a `RegistrationError`
that says so in stake tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ledger.chain import ContractRevert
from ledger.contracts import NodeRegistry
from ledger.types import BlockIndex, ModelId, Wei
from node.errors import NodeError

logger = logging.getLogger(__name__)


class RegistrationError(NodeError):
    """The registry refused a registration transaction; the message says what, in tokens."""


@dataclass(frozen=True)
class RegistrationPlan:
    """The transactions that make the node's registration match what it serves."""

    register: bool  # first registration (with `add` = the whole stake)
    update_service: bool  # model, span, price or peer id changed
    add_stake: int  # Wei of fresh tokens to add (sent first)
    rebond: int = 0  # Wei of unbonding stake to move back (after add_stake, before update_service)


def plan_registration(
    *,
    registered: bool,
    current: tuple[bytes, int, int, int, bytes],  # model id, start, end, price, peer id
    wanted: tuple[bytes, int, int, int, bytes],
    stake: int,
    target_stake: int,
    unbonding: int = 0,
    current_required: int = 0,
) -> RegistrationPlan:
    """Pure decision: what to send so that the registry shows `wanted` with at least
    `target_stake` staked. Nothing when it already does (a restart sends no transaction).

    Stake that is missing comes from `unbonding` first (a rebond moves no tokens), then from
    fresh tokens. The registry accepts a rebond only if the active stake after it covers the
    `current_required` stake of the span registered now, so the rebond also covers that (a node
    moving to a shorter span after unbonding) when `unbonding` allows; when it does not, the
    node rebonds nothing and adds fresh tokens, as a node without unbonding stake does."""
    if not registered:
        return RegistrationPlan(register=True, update_service=False, add_stake=target_stake)
    rebond = min(unbonding, max(0, max(target_stake, current_required) - stake))
    add = max(0, target_stake - stake - rebond)
    if rebond and stake + add + rebond < current_required:
        rebond, add = 0, max(0, target_stake - stake)
    return RegistrationPlan(
        register=False,
        update_service=current != wanted,
        add_stake=add,
        rebond=rebond,
    )


def ensure_registered(
    registry: NodeRegistry,
    *,
    address: str,
    model_id: ModelId,
    span: tuple[int, int],
    price_per_block: Wei,
    peer: bytes,
    stake_wanted: int | None,
) -> None:
    """Make the registry show `address` serving `span` of `model_id` at `price_per_block` as
    libp2p `peer`, staked with what the span requires or `stake_wanted` if more.
    `RegistrationError` when the registry refuses."""
    start, end = span
    units = registry.units
    node = registry.get_node(address)
    target = max(registry.required_stake(start, end), stake_wanted or 0)
    wanted = (model_id, start, end, price_per_block, peer)
    current = (
        node.model_id,
        node.span_start,
        node.span_end,
        node.price_per_token_per_block,
        node.peer_id,
    )
    current_required = 0
    if node.registered and node.span_start < node.span_end:
        current_required = registry.required_stake(node.span_start, node.span_end)
    plan = plan_registration(
        registered=node.registered,
        current=current,
        wanted=wanted,
        stake=node.stake,
        target_stake=target,
        unbonding=node.unbonding,
        current_required=current_required,
    )
    if not (plan.register or plan.add_stake or plan.rebond or plan.update_service):
        return
    units = registry.units
    blocks = f"blocks {start}:{end}"
    try:
        if plan.register:
            what = f"registering for {blocks} with {units.show(target)} staked"
            registry.register_with_approve(
                model_id, BlockIndex(start), BlockIndex(end), price_per_block, peer, Wei(target)
            )
            logger.info("registered for %s with %s staked", blocks, units.exact(target))
            return
        if plan.add_stake:
            what = f"adding {units.show(plan.add_stake)} to the stake for {blocks}"
            registry.add_stake_with_approve(Wei(plan.add_stake))
            logger.info("added %s of fresh tokens to the stake", units.exact(plan.add_stake))
        if plan.rebond:
            what = f"rebonding {units.show(plan.rebond)} of unbonding stake for {blocks}"
            registry.rebond(Wei(plan.rebond))
            logger.info(
                "rebonded %s of this node's unbonding stake into its active stake (no fresh "
                "tokens pulled; %s stays unbonding)",
                units.exact(plan.rebond),
                units.show(node.unbonding - plan.rebond),
            )
        if plan.update_service:
            what = f"updating the registration to {blocks}"
            registry.update_service(
                model_id, BlockIndex(start), BlockIndex(end), price_per_block, peer
            )
            logger.info("updated the registration to %s", blocks)
    except ContractRevert as exc:
        raise RegistrationError(f"{what}: {exc.explain(units)}") from exc
