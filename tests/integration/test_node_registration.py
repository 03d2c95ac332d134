"""A node's registration (`node.registration.ensure_registered`) against the real devnet: what
an operator reads when the registry refuses it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.types import Wei, model_id
from node.registration import RegistrationError, ensure_registered

PEER = b"\x00\x24\x08\x01\x12\x20" + b"\x07" * 32


def test_a_stake_the_wallet_cannot_pay_is_told_in_tokens(
    contracts_as: Callable[[str], Contracts], deployment: Deployment
) -> None:
    contracts = contracts_as("node-2")
    node = deployment.account("node-2").address
    balance = contracts.token.balance_of(node)

    with pytest.raises(RegistrationError) as refused:
        ensure_registered(
            contracts.node_registry,
            address=node,
            model_id=model_id("tiny-llama"),
            span=(0, 2),
            price_per_block=Wei(TOKEN // 1000),
            peer=PEER,
            stake_wanted=Wei(balance + 50 * TOKEN),
        )

    message = str(refused.value)
    held = f"{balance // TOKEN} SWARM"
    wanted = f"{balance // TOKEN + 50} SWARM"
    assert message.startswith(f"registering for blocks 0:2 with {wanted} staked: "), message
    assert f"balance={held}, needed={wanted}" in message, message
    assert str(balance) not in message  # no base units
    assert not contracts.node_registry.get_node(node).registered
