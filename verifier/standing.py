"""`Standings`: each node's standing for the audit queue and the slash gate, read from the chain
and kept `STANDING_TTL` seconds (forgotten as soon as the node is slashed).

    standings = Standings(registry=..., terms=..., units=..., token_price_eth=..., gas_price=...)
    standing = standings.of(node)             # NodeStanding: active, Worth of one more slash
    standings.forget(node)                    # its stake changed (we saw a slash)
    standings.skipped                         # node -> why its audits and slashes are skipped

The decision itself is `verifier.worth.slash_worth`. A node that stops being worth slashing is
logged once, in tokens and ETH, and again only when it becomes worth it again (its stake grew).
Blocking (chain reads): call from worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal

from ledger.contracts import NodeRegistry
from ledger.units import TokenUnits
from verifier.queue import NodeStanding
from verifier.worth import SlashTerms, Worth, slash_worth

logger = logging.getLogger(__name__)

STANDING_TTL = 10.0  # seconds a node's stake and activity (and the gas price) are reused


class Standings:
    """Nodes' standings, cached; see the module doc."""

    def __init__(
        self,
        *,
        registry: NodeRegistry,
        terms: SlashTerms,
        units: TokenUnits,
        token_price_eth: Decimal,
        gas_price: Callable[[], int],
    ) -> None:
        self.registry = registry
        self.terms = terms
        self.units = units
        self.token_price_eth = token_price_eth
        self.gas_price = gas_price  # wei per gas now
        self.skipped: dict[str, str] = {}  # node -> why (readable), while it is not worth it
        self._cache: dict[str, tuple[float, NodeStanding]] = {}
        self._gas: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def of(self, node: str) -> NodeStanding:
        """`node`'s standing, at most `STANDING_TTL` seconds old."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(node)
        if cached is not None and now - cached[0] <= STANDING_TTL:
            return cached[1]
        stake = int(self.registry.slashable_stake(node))
        active = stake > 0 and self.registry.is_active(node)
        # the cheaper slash (withheld) decides: a node is skipped only when no slash pays
        standing = NodeStanding(node=node, active=active, worth=self.worth(stake, withheld=True))
        with self._lock:
            self._cache[node] = (now, standing)
        self._note(standing)
        return standing

    def worth(self, stake: int, *, withheld: bool = False) -> Worth:
        """Whether one more slash of a node with `stake` slashable pays for its gas now."""
        return slash_worth(
            stake,
            self.terms,
            decimals=self.units.decimals,
            token_price_eth=self.token_price_eth,
            gas_price_wei=self._gas_price(),
            withheld=withheld,
        )

    def forget(self, node: str) -> None:
        """`node`'s stake changed: read it again next time."""
        with self._lock:
            self._cache.pop(node, None)

    def _gas_price(self) -> int:
        now = time.monotonic()
        if self._gas is None or now - self._gas[0] > STANDING_TTL:
            self._gas = (now, int(self.gas_price()))
        return self._gas[1]

    def _note(self, standing: NodeStanding) -> None:
        """Log a node's change of standing once: skipped from now on, or worth slashing again."""
        node, worth = standing.node, standing.worth
        if worth.worth:
            if self.skipped.pop(node, None) is not None:
                logger.info("node %s is worth slashing again: %s", node, worth.describe(self.units))
            return
        if node not in self.skipped:
            why = worth.describe(self.units)
            self.skipped[node] = why
            logger.warning(
                "skipping node %s from now on (its audits are dropped and no slash is sent): %s",
                node,
                why,
            )
