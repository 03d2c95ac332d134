"""Whether a server announced in the DHT is who it says it is, by the NodeRegistry on-chain.

A DHT record is unauthenticated: anyone can announce any address. The client uses a server
only if the address it announces is registered and active (staked for its span) for this
model, with the announced libp2p peer id, the announced span and the announced price. Receipts
must then be signed by that address, so a server's word is backed by its stake.

Two reads, cached apart: a registration (model, peer id, span, price) changes rarely and is
reused for `ttl` seconds; whether the node is still active changes with any slash and is
re-read after `active_ttl` seconds, so a slashed node drops out of routes within seconds, not
minutes. `forget` drops both for a peer (after any failure or refusal), so the next route reads
them afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hivemind.p2p import PeerID

from ledger.chain import ChainError
from ledger.contracts import NodeInfo, NodeRegistry
from ledger.types import ModelId
from node.protocol import ServerInfo

logger = logging.getLogger(__name__)


def registration_problem(
    *,
    registered: bool,
    active: bool,
    model: ModelId,
    registered_model: bytes,
    peer_id: bytes,
    registered_peer_id: bytes,
    span: tuple[int, int],
    registered_span: tuple[int, int],
    price_per_block: int,
    registered_price_per_block: int,
) -> str | None:
    """None when an announcement matches the registration, else why not (pure)."""
    if not registered:
        return "not registered in the NodeRegistry"
    if not active:
        return "registered but not active (its stake does not cover its span)"
    if registered_model != model:
        return f"registered for another model (0x{registered_model.hex()[:16]}…)"
    if registered_peer_id != peer_id:
        return "registered with another libp2p peer id"
    if not registered_span[0] <= span[0] < span[1] <= registered_span[1]:
        return (
            f"announces blocks [{span[0]}, {span[1]}) but is registered for "
            f"[{registered_span[0]}, {registered_span[1]})"
        )
    if price_per_block != registered_price_per_block:
        return (
            f"announces a price of {price_per_block} per token per block, the registry says "
            f"{registered_price_per_block}"
        )
    return None


class ServerRegistry:
    """Cached on-chain checks of announced servers (blocking chain reads)."""

    def __init__(
        self,
        registry: NodeRegistry,
        model: ModelId,
        *,
        ttl: float = 300.0,
        active_ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.model = model
        self.ttl = ttl  # seconds a registration read is reused
        self.active_ttl = active_ttl  # seconds an `isActive` read is reused
        self.clock = clock
        # (peer id, address) -> (what was read, `clock` time of the read)
        self._registrations: dict[tuple[str, str], tuple[NodeInfo, float]] = {}
        self._activity: dict[tuple[str, str], tuple[bool, float]] = {}
        self._reported: dict[tuple[str, str], str | None] = {}  # the last problem logged

    def _registration(self, key: tuple[str, str]) -> NodeInfo:
        now = self.clock()
        found = self._registrations.get(key)
        if found is None or now - found[1] >= self.ttl:
            found = (self.registry.get_node(key[1]), now)
            self._registrations[key] = found
        return found[0]

    def _is_active(self, key: tuple[str, str]) -> bool:
        now = self.clock()
        found = self._activity.get(key)
        if found is None or now - found[1] >= self.active_ttl:
            found = (self.registry.is_active(key[1]), now)
            self._activity[key] = found
        return found[0]

    def problem(self, peer_id: str, info: ServerInfo) -> str | None:
        """None if the server announcing `info` as `peer_id` checks out on-chain, else why not.
        A chain that cannot be read is a problem too (the server is skipped, not trusted)."""
        address = info.eth_address
        key = (peer_id, address)
        try:
            node = self._registration(key)
            active = node.registered and self._is_active(key)
        except (ChainError, OSError) as exc:
            logger.warning("cannot read the registration of %s: %s", address, exc)
            return f"its registration cannot be read: {exc}"
        try:
            peer_bytes = PeerID.from_base58(peer_id).to_bytes()
        except ValueError:
            problem: str | None = f"{peer_id!r} is not a base58 peer id"
        else:
            problem = registration_problem(
                registered=node.registered,
                active=active,
                model=self.model,
                registered_model=node.model_id,
                peer_id=peer_bytes,
                registered_peer_id=node.peer_id,
                span=(info.span_start, info.span_end),
                registered_span=(node.span_start, node.span_end),
                price_per_block=info.price_per_token_per_block,
                registered_price_per_block=node.price_per_token_per_block,
            )
        if self._reported.get(key, None) != problem:
            self._reported[key] = problem
            if problem is not None:
                logger.info("not using %s (%s): %s", peer_id, address, problem)
        return problem

    def forget(self, peer_id: str) -> None:
        """Drop cached checks of `peer_id` (e.g. after it failed or refused, so it is read
        afresh)."""
        for cache in (self._registrations, self._activity):
            for key in [k for k in cache if k[0] == peer_id]:
                del cache[key]
