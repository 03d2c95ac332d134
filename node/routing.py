"""Routing, as pure functions: which chain of servers runs blocks `[start, end)` fastest within
a price bound, and how long a failing server is avoided.

The blocks' boundaries `start, start + 1, ..., end` are the vertices of a DAG; a server that
holds `[a, b)` offers an edge from every boundary `i` to every later `j` with `a <= i < j <= b`
(a session may use any part of a server's span). An edge costs its expected latency per decode
step: the measured round trip to the server plus the compute of `j - i` of its blocks at its
announced throughput, and its price per token, `(j - i) x price per block`. `plan_route`
returns the route of least total latency whose total price per token stays within
`max_price`; ties go to the cheaper, then the shorter route. Latency and price are two costs,
so it keeps, at every boundary, the routes no other route beats on both (Pareto labels,
exact: a resource-constrained shortest path on a small DAG).

The client routes with these functions (`client.router`); a node ranks itself with the same
ones (`node.rank`), so both sides agree on who a client would choose.

`Backoff` avoids a server for `base x 2^(failures - 1)` seconds (capped) after each failure
in a row, and forgets it on a success.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the client's config reads DEFAULT_MAX_PRICE: no torch or hivemind for it
    from node.protocol import ServerInfo

# Routes kept per boundary at most (the fastest non-dominated ones): bounds the work when many
# servers of many prices overlap, at the cost of exactness in such a pathological swarm.
# A client's price bound per token through the whole model when it sets none: any price.
DEFAULT_MAX_PRICE: int | None = None
MAX_LABELS = 64
# Latencies closer than this (seconds) count as equal, so price and hop count decide.
LATENCY_EPSILON = 1e-6


@dataclass(frozen=True)
class Candidate:
    """A server that may carry part of a route: its announcement and its measured round trip."""

    peer_id: str  # base58
    info: ServerInfo
    rtt: float  # seconds, a measured round trip (e.g. an `info` RPC)

    def step_latency(self, start: int, end: int) -> float:
        """Expected seconds of one decode step through its blocks `[start, end)`."""
        span = self.info.span_end - self.info.span_start
        compute = (end - start) / (span * self.info.throughput) if self.info.throughput > 0 else 0
        return self.rtt + compute


@dataclass(frozen=True)
class RouteHop:
    """One server on a route and the blocks `[start, end)` it runs there."""

    peer_id: str
    start: int
    end: int
    info: ServerInfo
    latency: float = 0.0  # expected seconds per decode step, as planned

    @property
    def blocks(self) -> int:
        return self.end - self.start

    @property
    def price_per_token(self) -> int:
        """Wei per token through this hop: price per block times the blocks used."""
        return self.info.price_per_token_per_block * self.blocks

    @property
    def address(self) -> str:
        """The server's address (signs its receipts, receives its payments)."""
        return self.info.eth_address


def route_price(hops: Iterable[RouteHop]) -> int:
    """Wei per token through a whole route."""
    return sum(hop.price_per_token for hop in hops)


@dataclass(frozen=True)
class _Label:
    latency: float
    price: int
    hops: tuple[RouteHop, ...]

    def key(self) -> tuple[float, int, int]:
        return (self.latency, self.price, len(self.hops))


def _pareto(labels: list[_Label]) -> list[_Label]:
    """The labels no other label beats on both latency and price, fastest first, at most
    `MAX_LABELS`."""
    kept: list[_Label] = []
    best_price: int | None = None
    for label in sorted(labels, key=_Label.key):
        if best_price is None or label.price < best_price:
            kept.append(label)
            best_price = label.price
        if len(kept) == MAX_LABELS:
            break
    return kept


def plan_route(
    candidates: Sequence[Candidate],
    start: int,
    end: int,
    *,
    max_price: int | None = None,
) -> list[RouteHop] | None:
    """The fastest chain of `candidates` covering blocks `[start, end)` whose price per token
    is at most `max_price` (None: any price); None when there is none.

    Every candidate must already be usable (online, right model and dtype, not backed off)."""
    if not 0 <= start < end:
        raise ValueError(f"cannot route the empty or negative block range [{start}, {end})")
    labels: dict[int, list[_Label]] = {start: [_Label(0.0, 0, ())]}
    for boundary in range(start, end):
        here = labels.get(boundary)
        if not here:
            continue
        here = _pareto(here)
        for candidate in candidates:
            lo, hi = candidate.info.span_start, min(candidate.info.span_end, end)
            if not lo <= boundary < hi:
                continue
            for stop in range(boundary + 1, hi + 1):
                latency = candidate.step_latency(boundary, stop)
                hop = RouteHop(candidate.peer_id, boundary, stop, candidate.info, latency)
                for label in here:
                    price = label.price + hop.price_per_token
                    if max_price is not None and price > max_price:
                        continue
                    labels.setdefault(stop, []).append(
                        _Label(label.latency + latency, price, (*label.hops, hop))
                    )
    final = labels.get(end)
    if not final:
        return None
    fastest = min(label.latency for label in final)
    near = [label for label in final if label.latency <= fastest + LATENCY_EPSILON]
    best = min(near, key=lambda label: (label.price, len(label.hops), label.latency))
    return list(best.hops)


@dataclass
class _Failures:
    count: int
    until: float


@dataclass
class Backoff:
    """Servers that failed recently, each avoided until a time that doubles per failure in a
    row. Times are whatever clock the caller passes (`time.monotonic()`)."""

    base: float = 5.0  # seconds avoided after a first failure
    cap: float = 300.0  # seconds avoided at most
    _failures: dict[str, _Failures] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={self.base} cap={self.cap}")

    def failed(self, peer_id: str, now: float) -> float:
        """Record a failure of `peer_id` at `now`; returns the seconds it is now avoided."""
        previous = self._failures.get(peer_id)
        count = 1 if previous is None else previous.count + 1
        delay = min(self.base * 2 ** (count - 1), self.cap)
        self._failures[peer_id] = _Failures(count, now + delay)
        return delay

    def succeeded(self, peer_id: str) -> None:
        """A success: the server's failures are forgotten."""
        self._failures.pop(peer_id, None)

    def avoided(self, peer_id: str, now: float) -> bool:
        """Whether `peer_id` is still to be avoided at `now`."""
        failures = self._failures.get(peer_id)
        return failures is not None and now < failures.until

    def failures(self, peer_id: str) -> int:
        """Failures of `peer_id` in a row."""
        failures = self._failures.get(peer_id)
        return 0 if failures is None else failures.count

    def next_release(self, now: float) -> float | None:
        """Seconds from `now` until the first avoided server may be tried again, if any."""
        waits = [f.until - now for f in self._failures.values() if f.until > now]
        return min(waits) if waits else None
