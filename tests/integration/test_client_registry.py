"""The client's on-chain check of announced servers (`client.registry.ServerRegistry`) against
the session devnet: a server that stops being active is dropped within `active_ttl`, not at the
registration cache's pace."""

from __future__ import annotations

from collections.abc import Callable

import base58

from client.registry import ServerRegistry
from ledger.contracts import Contracts
from ledger.deployment import Deployment
from ledger.types import BlockIndex, Wei, model_id
from node.protocol import ServerInfo, ServerState

MODEL = model_id("tiny-llama")
PEER = b"\x00\x24\x08\x01\x12\x20" + b"\x07" * 32  # libp2p peer id bytes (ed25519 identity)
PRICE = Wei(3)


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _announcement(address: str) -> ServerInfo:
    return ServerInfo(
        state=ServerState.ONLINE,
        span_start=0,
        span_end=4,
        throughput=10.0,
        price_per_token_per_block=PRICE,
        eth_address=address,
        dtype="float32",
        cache_tokens_left=1024,
    )


def test_a_server_that_loses_its_stake_is_dropped_within_the_active_ttl(
    contracts: Contracts,
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
) -> None:
    node = contracts_as("node-0")
    address = deployment.account("node-0").address
    required = node.node_registry.required_stake(0, 4)
    node.node_registry.register_with_approve(
        MODEL, BlockIndex(0), BlockIndex(4), PRICE, PEER, required
    )
    clock = Clock()
    checks = ServerRegistry(contracts.node_registry, MODEL, ttl=300.0, active_ttl=10.0, clock=clock)
    peer_id = base58.b58encode(PEER).decode()
    info = _announcement(address)
    assert checks.problem(peer_id, info) is None

    node.node_registry.unbond(required)  # all of it: registered, but no longer active
    clock.now += 5
    assert checks.problem(peer_id, info) is None  # both reads are still fresh
    clock.now += 5
    problem = checks.problem(peer_id, info)  # the registration is not (300 s), activity is
    assert problem is not None and "not active" in problem

    node.node_registry.add_stake_with_approve(required)
    assert checks.problem(peer_id, info) is not None  # cached for active_ttl
    checks.forget(peer_id)  # e.g. the server refused a request: read it afresh
    assert checks.problem(peer_id, info) is None


def test_a_changed_announcement_is_judged_against_the_cached_registration(
    contracts: Contracts,
    contracts_as: Callable[[str | int], Contracts],
    deployment: Deployment,
) -> None:
    node = contracts_as("node-1")
    address = deployment.account("node-1").address
    required = node.node_registry.required_stake(0, 4)
    node.node_registry.register_with_approve(
        MODEL, BlockIndex(0), BlockIndex(4), PRICE, PEER, required
    )
    checks = ServerRegistry(contracts.node_registry, MODEL, clock=Clock())
    peer_id = base58.b58encode(PEER).decode()
    assert checks.problem(peer_id, _announcement(address)) is None

    dearer = ServerInfo(**{**_announcement(address).__dict__, "price_per_token_per_block": 4})
    problem = checks.problem(peer_id, dearer)
    assert problem is not None and "the registry says 3" in problem
    unknown = checks.problem(peer_id, _announcement(deployment.account("node-2").address))
    assert unknown == "not registered in the NodeRegistry"
