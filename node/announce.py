"""The node in the swarm's DHT: announcing its span, reading everyone else's.

One record per block, key `node.protocol.block_key(model, block)`, subkey the node's base58
peer id, value `ServerInfo.to_wire()`, expiring `ttl` seconds after each refresh, so a node
that dies silently drops out of the swarm by itself. `Announcer.swarm` reads every block's
records and returns the servers that are online, for span choice (`node.throughput`) and for
clients' routing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from hivemind import DHT
from hivemind.dht.node import DHTNode
from hivemind.utils.timed_storage import get_dht_time

from node.protocol import ProtocolError, ServerInfo, ServerState, block_key

logger = logging.getLogger(__name__)


async def _store(
    dht: DHT, node: DHTNode, *, keys: list[str], values: list[Any], subkey: str, expiration: float
) -> dict[str, bool]:
    return await node.store_many(
        keys, values, expiration_time=expiration, subkeys=[subkey] * len(keys)
    )


async def _get(dht: DHT, node: DHTNode, *, keys: list[str]) -> dict[str, Any]:
    found = await node.get_many(keys, sufficient_expiration_time=float("inf"))
    # plain data only: the answer crosses a process boundary
    result: dict[str, Any] = {}
    for key, entry in found.items():
        if entry is None or not isinstance(entry.value, dict):
            continue
        result[key] = {
            subkey: (item.value, item.expiration_time) for subkey, item in entry.value.items()
        }
    return result


@dataclass(frozen=True)
class SwarmServer:
    """A server seen in the DHT."""

    peer_id: str  # base58
    info: ServerInfo


class Announcer:
    """Announces one node's `ServerInfo` for each of its blocks and reads the swarm."""

    def __init__(self, dht: DHT, model_name: str, peer_id: str, *, ttl: float) -> None:
        self.dht = dht
        self.model_name = model_name
        self.peer_id = peer_id
        self.ttl = ttl

    async def announce(self, info: ServerInfo, *, ttl: float | None = None) -> bool:
        """Store `info` under each block of its span; True if every record was stored."""
        keys = [block_key(self.model_name, b) for b in range(info.span_start, info.span_end)]
        expiration = get_dht_time() + (self.ttl if ttl is None else ttl)
        future = self.dht.run_coroutine(
            partial(
                _store,
                keys=keys,
                values=[info.to_wire()] * len(keys),
                subkey=self.peer_id,
                expiration=expiration,
            ),
            return_future=True,
        )
        stored = await future
        ok = len(stored) == len(keys) and all(stored.values())
        if not ok:
            logger.warning("some DHT records of %s were not stored: %s", self.peer_id, stored)
        return ok

    async def swarm(self, total_blocks: int) -> list[SwarmServer]:
        """Every server announced for any block of the model (one entry per peer, its newest
        record), excluding those that announced OFFLINE."""
        keys = [block_key(self.model_name, b) for b in range(total_blocks)]
        found = await self.dht.run_coroutine(partial(_get, keys=keys), return_future=True)
        newest: dict[str, tuple[float, ServerInfo]] = {}
        for records in found.values():
            for subkey, (value, expiration) in records.items():
                if not isinstance(subkey, str):
                    continue
                try:
                    info = ServerInfo.from_wire(value)
                except ProtocolError as exc:
                    logger.debug("ignoring a malformed DHT record of %s: %s", subkey, exc)
                    continue
                if info.span_end > total_blocks:
                    continue
                if subkey not in newest or expiration > newest[subkey][0]:
                    newest[subkey] = (expiration, info)
        return [
            SwarmServer(peer, info)
            for peer, (_, info) in sorted(newest.items())
            if info.state != ServerState.OFFLINE
        ]
