"""`DashboardConfig`: what a standalone dashboard reads and where it listens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ledger.deployment import Deployment

DEFAULT_PORT = 8080


@dataclass(frozen=True)
class DashboardConfig:
    """One standalone dashboard (`stakeswarm dashboard`, `dev swarm`, the demo)."""

    initial_peers: tuple[str, ...]  # multiaddrs of swarm members to join the DHT through
    deployment: Deployment  # the chain and contracts to read
    host: str = "127.0.0.1"  # where the page is served
    port: int = DEFAULT_PORT  # 0: any free port (see `Dashboard.url`)
    any_port_if_taken: bool = False  # `port` taken: serve on any free port instead
    verifier_urls: tuple[str, ...] = ()  # verifiers' status APIs, for their audit counts
    # model name -> blocks, for models to show before any node answers for them; the others
    # are learnt from the registered nodes' `info` answers
    models: Mapping[str, int] = field(default_factory=dict)
    title: str = "stakeswarm"  # the page's heading
    refresh: float = 3.0  # seconds between the page's reads of the snapshot
    min_interval: float = 2.0  # seconds a snapshot is reused, however many pages are open
    http_timeout: float = 3.0  # seconds for a node's or verifier's status API to answer
    join_timeout: float = 60.0  # seconds to join the swarm through `initial_peers`

    def __post_init__(self) -> None:
        if not self.initial_peers:
            raise ValueError("give at least one initial peer (a multiaddr of a swarm member)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.refresh <= 0 or self.min_interval < 0:
            raise ValueError("refresh must be positive and min_interval not negative")
