"""`Router`: routes over the servers the swarm announces, as usable right now.

It reads the model's records from the DHT (reused for `swarm_ttl` s), keeps the servers that
are ONLINE, speak this protocol version, compute in the client's dtype with the weights it
accepts (full, a quantization, or any: `ClientConfig.weights`), are not backed off
after recent failures, and check out on-chain (`client.registry`); it measures each one's
round trip with an `info` RPC (reused for `ping_ttl` s) and hands them to the pure planner
`node.routing.plan_route`. Failures reported by the session back a server off
exponentially (`node.routing.Backoff`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from client.errors import NoRouteError
from client.network import Network
from client.registry import ServerRegistry
from client.remote import RemoteError, RemoteUnavailableError
from ledger.units import TokenUnits
from node.protocol import PROTOCOL_VERSION, ProtocolError, ServerInfo, ServerState
from node.routing import Backoff, Candidate, RouteHop, plan_route, route_price

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Ping:
    rtt: float
    at: float


class Router:
    """Chooses routes through the swarm for one model (see the module doc)."""

    def __init__(
        self,
        network: Network,
        registry: ServerRegistry,
        *,
        model_name: str,
        total_blocks: int,
        dtype: str,
        max_price: int | None,
        weights: str = "full",
        units: TokenUnits,
        backoff: Backoff,
        swarm_ttl: float = 10.0,
        ping_timeout: float = 5.0,
        ping_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.network = network
        self.registry = registry
        self.model_name = model_name
        self.total_blocks = total_blocks
        self.dtype = dtype
        self.weights = weights  # ClientConfig.weights: full | int8 | nf4 | any
        self.max_price = max_price  # base units per token through the whole route
        self.units = units  # the stake token, for prices people read
        self.backoff = backoff
        self.swarm_ttl = swarm_ttl
        self.ping_timeout = ping_timeout
        self.ping_ttl = ping_ttl
        self.clock = clock
        self._servers: dict[str, ServerInfo] = {}
        self._read_at = float("-inf")
        self._pings: dict[str, _Ping] = {}

    # --- what the swarm offers -------------------------------------------------------------

    def servers(self, *, refresh: bool = False) -> dict[str, ServerInfo]:
        """The model's announced servers by peer id (DHT; cached for `swarm_ttl`)."""
        now = self.clock()
        if refresh or now - self._read_at >= self.swarm_ttl:
            self._servers = self.network.servers(self.model_name, self.total_blocks)
            self._read_at = now
        return self._servers

    def _usable(
        self, peer_id: str, info: ServerInfo, now: float, training: bool = False
    ) -> str | None:
        """None if the server may carry a route now (`training`: forwards and backwards),
        else why not."""
        if info.state != ServerState.ONLINE:
            return f"it is {info.state.name.lower()}"
        if info.version != PROTOCOL_VERSION:
            return f"it speaks protocol {info.version}, this client {PROTOCOL_VERSION}"
        if info.dtype != self.dtype:
            return f"it computes in {info.dtype}, this client sends {self.dtype}"
        served = info.quantization or "full"
        if self.weights not in ("any", served):
            return f"it serves {info.precision}, this client uses {self.weights} weights"
        if training and not info.backward_price_per_token_per_block:
            return f"it serves no backward (training), in {info.precision}"
        if self.backoff.avoided(peer_id, now):
            return f"it failed {self.backoff.failures(peer_id)} time(s) in a row recently"
        if self.max_price is not None and info.price_per_token_per_block > self.max_price:
            return (
                f"its price per block alone, {self.units.show(info.price_per_token_per_block)}, "
                f"exceeds the maximum price {self.units.show(self.max_price)} per token"
            )
        return self.registry.problem(peer_id, info)

    def _rtt(self, peer_id: str, info: ServerInfo, now: float) -> float | None:
        cached = self._pings.get(peer_id)
        if cached is not None and now - cached.at < self.ping_ttl:
            return cached.rtt
        try:
            answer, rtt = self.network.ping(peer_id, timeout=self.ping_timeout)
        except (RemoteUnavailableError, RemoteError, ProtocolError, TimeoutError) as exc:
            self.failed(peer_id, f"no answer to info: {exc}")
            return None
        if answer.model != self.model_name or answer.server.eth_address != info.eth_address:
            self.failed(
                peer_id, f"its info says model {answer.model!r}, {answer.server.eth_address}"
            )
            return None
        self._pings[peer_id] = _Ping(rtt, self.clock())
        return rtt

    def candidates(
        self, *, refresh: bool = False, training: bool = False
    ) -> tuple[list[Candidate], dict[str, str]]:
        """The usable servers (`training`: serving backwards too) with their round trips, and
        why each other one is not used."""
        now = self.clock()
        usable: list[Candidate] = []
        skipped: dict[str, str] = {}
        for peer_id, info in self.servers(refresh=refresh).items():
            problem = self._usable(peer_id, info, now, training)
            if problem is None:
                rtt = self._rtt(peer_id, info, now)
                if rtt is None:
                    problem = "it does not answer"
                else:
                    usable.append(Candidate(peer_id, info, rtt))
                    continue
            skipped[peer_id] = problem
        return usable, skipped

    # --- routes ----------------------------------------------------------------------------

    def route(
        self, start: int, end: int, *, refresh: bool = False, training: bool = False
    ) -> list[RouteHop]:
        """The fastest route over blocks `[start, end)` within the maximum price (`training`:
        through servers that serve backwards); `NoRouteError` (saying what is missing) when
        there is none."""
        candidates, skipped = self.candidates(refresh=refresh, training=training)
        hops = plan_route(candidates, start, end, max_price=self.max_price)
        if hops is None and not refresh:
            return self.route(start, end, refresh=True, training=training)
        if hops is None:
            raise NoRouteError(self._explain(start, end, candidates, skipped))
        logger.info(
            "route for blocks [%d, %d): %s (price %s per token)",
            start,
            end,
            ", ".join(f"{h.peer_id[-8:]}[{h.start}:{h.end}]" for h in hops),
            self.units.show(route_price(hops)),
        )
        return hops

    def _explain(
        self, start: int, end: int, candidates: list[Candidate], skipped: dict[str, str]
    ) -> str:
        covered = [False] * (end - start)
        for candidate in candidates:
            for block in range(
                max(start, candidate.info.span_start), min(end, candidate.info.span_end)
            ):
                covered[block - start] = True
        missing = [start + i for i, ok in enumerate(covered) if not ok]
        lines = [f"no route through blocks [{start}, {end}) of {self.model_name}"]
        if missing:
            lines.append(f"no usable server holds block(s) {_ranges(missing)}")
        elif self.max_price is not None:
            lines.append(
                "every route costs more than the maximum price "
                f"{self.units.show(self.max_price)} per token"
            )
        for peer_id, why in sorted(skipped.items()):
            lines.append(f"not using {peer_id}: {why}")
        if not candidates and not skipped:
            lines.append("no server of this model is announced in the swarm")
        return "; ".join(lines)

    # --- outcomes --------------------------------------------------------------------------

    def failed(self, peer_id: str, reason: str) -> None:
        """A server failed: avoid it for a while (doubling per failure in a row)."""
        delay = self.backoff.failed(peer_id, self.clock())
        self._pings.pop(peer_id, None)
        self.registry.forget(peer_id)
        logger.warning("server %s failed (%s); avoiding it for %.0f s", peer_id, reason, delay)

    def succeeded(self, peer_id: str) -> None:
        self.backoff.succeeded(peer_id)


def _ranges(blocks: list[int]) -> str:
    parts: list[str] = []
    first = prev = blocks[0]
    for block in blocks[1:] + [None]:  # type: ignore[list-item]
        if block is not None and block == prev + 1:
            prev = block
            continue
        parts.append(str(first) if first == prev else f"{first}-{prev}")
        if block is not None:
            first = prev = block
    return ", ".join(parts)
