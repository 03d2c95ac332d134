"""How this node ranks for routing: where a client would place it among the servers of its
blocks, and how many routes chose it.

A client routes with `node.routing.plan_route`: the chain of servers of least expected
latency per decode step whose price per token stays within its `--max-price`; price decides
only between routes of equal latency. A node cannot know a client's round trips, so it ranks
itself as a client equally near every server would see it (the same round trip to each): a
server's latency is then the compute of its blocks at its announced throughput.

`rank_node` asks the client's planner for a route over this node's span `[start, end)` among the
usable servers that hold any of those blocks (online, this node's protocol version and
precision: dtype and weights).
If this node is not on it, the servers on that route are set aside and the planner asked
again: the round in which this node is chosen is its position (1: a client's first choice).
It also counts the servers that charge less per block, and works out the least `--max-price`
(per token through the whole model) under which a client can route through this node at all:
this node's price for its span plus, for every other block, the lowest price per block of a
server holding it. A client whose `--max-price` is below that skips the node.

`route_counts` reads how many sessions (one per route a client opened through this node) the
node's ledger recorded, in total and since a time.

The planner and its cost formula are the ones the client routes with (`node.routing`), so both
sides rank by the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ledger.db.columns import check_time
from ledger.db.models import ServedSession
from ledger.units import TokenUnits
from node.protocol import PROTOCOL_VERSION, ServerInfo, ServerState
from node.routing import DEFAULT_MAX_PRICE, Candidate, RouteHop, plan_route

# What a client passes as --max-price when it passes nothing (None: any price).
DEFAULT_CLIENT_MAX_PRICE: int | None = DEFAULT_MAX_PRICE
# The round trip assumed to every server: the same for all, so only compute and price differ.
ASSUMED_RTT = 0.0


@dataclass(frozen=True)
class RouteRank:
    """Where a client would place this node for its span, from the swarm's announcements."""

    span: tuple[int, int]  # this node's blocks [start, end)
    position: int  # 1: a client's first choice for the span; k: chosen once k-1 routes are gone
    servers: int  # usable servers holding any block of the span, this node included
    cheaper: int  # of those, how many charge less per block than this node
    price_per_block: int  # this node's price per token per block, base units
    cheapest_per_block: int  # the lowest price per token per block among those servers
    max_price_needed: int | None  # least --max-price (per token, whole model) to route through
    # this node; None when some block of the model is held by no usable server
    default_client_skips: bool  # a client with the default --max-price never routes through it

    @property
    def first_choice(self) -> bool:
        return self.position == 1

    def describe(self, units: TokenUnits) -> str:
        """One line for the log and `/status`: position, prices, what a client must pass."""
        start, end = self.span
        text = (
            f"it is the {ordinal(self.position)} choice of {self.servers} server(s) for blocks "
            f"{start}:{end} (price {units.show(self.price_per_block)}/block"
        )
        if self.cheaper:
            text += f"; {self.cheaper} charge less, down to {units.show(self.cheapest_per_block)}"
        text += ")"
        if self.max_price_needed is None:
            text += "; no client can route the whole model now (some block is held by no server)"
        elif self.default_client_skips:
            text += (
                f"; clients with the default --max-price skip it: they must pass at least "
                f"--max-price {units.tokens(self.max_price_needed)}"
            )
        else:
            text += (
                f"; clients with --max-price below {units.tokens(self.max_price_needed)} skip it"
            )
        return text

    def to_json(self, units: TokenUnits) -> dict[str, object]:
        """For `/status`: machine fields, amounts as readable text and exact base units."""
        needed = self.max_price_needed
        return {
            "span": list(self.span),
            "position": self.position,
            "servers": self.servers,
            "cheaper": self.cheaper,
            "price_per_block": units.show(self.price_per_block),
            "price_per_block_base_units": str(self.price_per_block),
            "cheapest_per_block": units.show(self.cheapest_per_block),
            "cheapest_per_block_base_units": str(self.cheapest_per_block),
            "max_price_needed": None if needed is None else units.show(needed),
            "max_price_needed_base_units": None if needed is None else str(needed),
            "default_client_skips": self.default_client_skips,
            "summary": self.describe(units),
        }


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 21st..."""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def _usable(info: ServerInfo, mine: ServerInfo) -> bool:
    """Whether a client that can use this node could use `info` too (the router's checks that
    do not depend on the client: state, protocol version, precision: its dtype and weights)."""
    return (
        info.state == ServerState.ONLINE
        and info.version == mine.version == PROTOCOL_VERSION
        and info.precision == mine.precision
    )


def rank_node(
    me: str,
    mine: ServerInfo,
    swarm: Sequence[tuple[str, ServerInfo]],
    total_blocks: int,
    *,
    default_max_price: int | None = DEFAULT_CLIENT_MAX_PRICE,
) -> RouteRank:
    """This node's (`me`, announcing `mine`) place among the other servers of `swarm` (peer id
    and announcement; this node's own record there is ignored) for its span, as the module doc
    explains. Pure."""
    start, end = mine.span_start, mine.span_end
    if not 0 <= start < end <= total_blocks:
        raise ValueError(f"span [{start}, {end}) is not inside the model's {total_blocks} blocks")
    others = {peer: info for peer, info in swarm if peer != me and _usable(info, mine)}
    usable = {me: mine, **others}
    overlapping = {
        peer: info
        for peer, info in usable.items()
        if info.span_start < end and start < info.span_end
    }
    candidates = [Candidate(peer, info, ASSUMED_RTT) for peer, info in overlapping.items()]
    position = 1
    while True:
        route = plan_route(candidates, start, end)
        if route is None or any(hop.peer_id == me for hop in route):
            break  # this node alone always completes its own span, so None cannot happen
        chosen = {hop.peer_id for hop in route}
        candidates = [c for c in candidates if c.peer_id not in chosen]
        position += 1
    price = mine.price_per_token_per_block
    prices = [info.price_per_token_per_block for info in overlapping.values()]
    needed = _max_price_needed(me, mine, usable, total_blocks)
    skips = needed is None or (default_max_price is not None and needed > default_max_price)
    return RouteRank(
        span=(start, end),
        position=position,
        servers=len(overlapping),
        cheaper=sum(1 for p in prices if p < price),
        price_per_block=price,
        cheapest_per_block=min(prices),
        max_price_needed=needed,
        default_client_skips=skips,
    )


def _max_price_needed(
    me: str, mine: ServerInfo, usable: dict[str, ServerInfo], total_blocks: int
) -> int | None:
    """This node's price for its span plus the cheapest price of every other block (None when
    a block is held by no usable server): a route through this node costs at least that."""
    total = RouteHop(me, mine.span_start, mine.span_end, mine).price_per_token
    for block in range(total_blocks):
        if mine.span_start <= block < mine.span_end:
            continue
        prices = [
            RouteHop(peer, block, block + 1, info).price_per_token
            for peer, info in usable.items()
            if info.span_start <= block < info.span_end
        ]
        if not prices:
            return None
        total += min(prices)
    return total


@dataclass(frozen=True)
class RouteCounts:
    """Sessions (routes) that chose this node, from its ledger."""

    total: int
    since: int  # opened at or after the `since` time asked for
    last_at: datetime | None  # when the newest was opened (UTC)


def route_counts(db: Session, *, since: datetime) -> RouteCounts:
    """How many sessions this node's ledger recorded, in all and since `since` (UTC)."""
    since = check_time(since, "since")
    total, last_at = db.execute(
        select(func.count(ServedSession.id), func.max(ServedSession.opened_at))
    ).one()
    recent = db.scalar(select(func.count(ServedSession.id)).where(ServedSession.opened_at >= since))
    return RouteCounts(total=int(total), since=int(recent or 0), last_at=last_at)


# A node no route chose for this long (while serving that long) logs why, once per such period.
QUIET_HINT_AFTER = 600.0  # seconds


@dataclass
class RankLog:
    """What the node logs about its rank: a line when it changes, and a hint when no route
    chose the node for `quiet_after` seconds (once per such period)."""

    started_at: datetime  # when the node started serving (UTC)
    quiet_after: float = QUIET_HINT_AFTER
    _last: str | None = None
    _hinted_at: datetime | None = None

    def messages(self, summary: str, counts: RouteCounts, now: datetime) -> list[str]:
        """The lines to log now for the rank `summary` and the node's `counts` (the last hour
        in `counts.since`)."""
        lines: list[str] = []
        if summary != self._last:
            self._last = summary
            lines.append(
                f"routing rank: {summary}; {counts.since} route(s) chose this node in the last "
                f"hour, {counts.total} in all"
            )
        quiet_for = (now - max(self.started_at, counts.last_at or self.started_at)).total_seconds()
        hinted_recently = (
            self._hinted_at is not None
            and (now - self._hinted_at).total_seconds() < self.quiet_after
        )
        if quiet_for >= self.quiet_after and not hinted_recently:
            self._hinted_at = now
            lines.append(
                f"no routes chose this node in the last {format_duration(quiet_for)}: {summary}"
            )
        return lines


def format_duration(seconds: float) -> str:
    """Seconds as "45 s", "10 min", "2 h 5 min"."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
