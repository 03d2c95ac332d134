"""`GatewayConfig`: everything the OpenAI-compatible gateway can be told, in one typed place.

`stakeswarm gateway serve` builds one and hands it to `gateway.service.build_gateway`; tests
and the LangChain example build it directly. The swarm side is a whole `ClientConfig` (the
gateway is one paying client of the swarm); the rest is the HTTP edge and the API keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.config import ClientConfig


class GatewayConfigError(ValueError):
    """A gateway configuration that cannot work."""


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway reaches the swarm, whom it serves, and how much at once."""

    client: ClientConfig  # the swarm, the model folder, the wallet's home and price limits
    host: str = "127.0.0.1"  # the address the HTTP server listens on
    port: int = 8000  # its port (0: any free one, see `Gateway.url`)
    max_concurrent: int = 4  # requests generating at once; one more is answered 429
    keys_url: str | None = None  # SQLAlchemy URL of the API keys' database; None: the SQLite
    # file <home>/gateway/gateway.sqlite
    model_id: str | None = None  # the model's name in the API (`model`); None: the swarm's name
    max_tokens: int = 512  # tokens a request may generate at most (per choice), and what one
    # that gives no max_tokens gets (less where the model's context is shorter)
    max_n: int = 4  # choices one request may ask for (`n`)

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65_535:
            problems.append(f"port must be in [0, 65535], got {self.port}")
        if self.max_concurrent < 1:
            problems.append("max_concurrent must be >= 1")
        if self.max_tokens < 1:
            problems.append("max_tokens must be >= 1")
        if self.max_n < 1:
            problems.append("max_n must be >= 1")
        if problems:
            raise GatewayConfigError("invalid gateway configuration: " + "; ".join(problems))

    @property
    def served_model(self) -> str:
        """The model id clients name in their requests (and `GET /v1/models` lists)."""
        return self.model_id or self.client.name

    @property
    def keys_path(self) -> Path:
        """The default SQLite file of the API keys."""
        return gateway_db_path(self.client.home)


def gateway_db_path(home: Path) -> Path:
    """The gateway's default keys database under the state directory `home`."""
    return Path(home).expanduser().resolve() / "gateway" / "gateway.sqlite"
