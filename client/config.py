"""`ClientConfig`: everything a paying client can be told, in one typed place.

`DistributedModelForCausalLM.from_pretrained` and `stakeswarm client generate` build one and
hand it to `client.client.SwarmClient`. Amounts are stake-token base units (Wei); the CLI
converts whole tokens with the token's decimals first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.errors import ClientConfigError
from node.config import check_device_name
from node.keepalive import DEFAULT_SILENCE_TIMEOUT
from node.precisions import QUANTIZATIONS
from node.routing import DEFAULT_MAX_PRICE

HIDDEN_DTYPES = ("float32", "float16", "bfloat16")
# which servers' weights a client uses: full weights only, one quantization, or any of them
WEIGHT_CHOICES = ("full", *QUANTIZATIONS, "any")


@dataclass(frozen=True)
class ClientConfig:
    """How one client reaches the swarm, whom it uses, and what it may pay."""

    # --- model -------------------------------------------------------------------------------
    model_path: Path  # local model folder: config.json, the tokenizer, and the weights of the
    # embeddings, final norm and LM head (the blocks' weights are never read)
    model_name: str | None = None  # the swarm's name of the model; None: the folder's name
    dtype: str = "float32"  # hidden states on the wire; only servers computing in it are used
    weights: str = "full"  # only servers with these weights are used: full | int8 | nf4 (their
    # quantized precisions, node.quantize; with a 16-bit dtype) | any
    # where the local ends (embeddings, final norm, LM head) compute, in float32: auto (the
    # first CUDA device, else the CPU) | cpu | cuda | cuda:N
    device: str = "auto"

    # --- swarm -------------------------------------------------------------------------------
    initial_peers: tuple[str, ...] = ()  # multiaddrs of swarm members to join through
    join_timeout: float = 60.0  # seconds to join the swarm
    swarm_ttl: float = 10.0  # seconds a read of the DHT's server records is reused
    ping_timeout: float = 5.0  # seconds an `info` round trip may take
    ping_ttl: float = 60.0  # seconds a measured round trip is reused
    open_timeout: float = 30.0  # seconds to open a session on a server
    step_timeout: float = 120.0  # seconds a server may take for one step
    silence_timeout: float = DEFAULT_SILENCE_TIMEOUT  # seconds a server at work on a step may
    # send nothing before it counts as gone (a live one sends a keepalive every 0.25 s)
    backoff_base: float = 5.0  # seconds a server is avoided after its first failure in a row
    backoff_max: float = 300.0  # seconds a server is avoided at most (doubling per failure)
    max_failovers: int = 8  # server failures one step (or one route) may survive
    pipeline: bool = True  # each server pushes its output straight to the next one (k + 1
    # network legs per step instead of 2k); False: every hop's output comes back to the client
    registry_ttl: float = 300.0  # seconds an on-chain check of a server's registration is reused
    active_ttl: float = 10.0  # seconds an on-chain check that a server is still active (staked
    # for its span, e.g. not slashed) is reused before a route counts on it again

    # --- chain, wallet and ledger ------------------------------------------------------------
    rpc_url: str | None = None  # JSON-RPC URL; None: the deployment's
    home: Path = Path("~/.stakeswarm")  # state directory; the client keeps its ledger in
    # <home>/client/<address>/ledger.sqlite unless `ledger_url` says otherwise
    # SQLAlchemy URL of the client's ledger (`--db`): sqlite:///FILE or
    # postgresql://USER@HOST/DBNAME (one database per wallet); None: the SQLite file above
    ledger_url: str | None = None

    # --- money (Wei) -------------------------------------------------------------------------
    max_price: int | None = DEFAULT_MAX_PRICE  # per token through the whole route; None: any price
    budget: int | None = None  # what this client may spend in all; None: no cap
    channel_life: int = 86_400  # seconds a new (or extended) channel runs
    channel_min_life: int = 1_800  # extend a channel when less is left (a node refuses
    # channels about to expire)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.dtype not in HIDDEN_DTYPES:
            problems.append(f"dtype must be one of {HIDDEN_DTYPES}, got {self.dtype!r}")
        if self.weights not in WEIGHT_CHOICES:
            problems.append(f"weights must be one of {WEIGHT_CHOICES}, got {self.weights!r}")
        elif self.weights in QUANTIZATIONS and self.dtype == "float32":
            problems.append(
                f"{self.weights} servers compute in bfloat16 or float16: give that dtype"
            )
        device_problem = check_device_name(self.device)
        if device_problem is not None:
            problems.append(device_problem)
        if not self.initial_peers:
            problems.append("give at least one initial peer (a multiaddr of a swarm member)")
        for name in (
            "join_timeout",
            "swarm_ttl",
            "ping_timeout",
            "ping_ttl",
            "open_timeout",
            "step_timeout",
            "silence_timeout",
            "backoff_base",
            "backoff_max",
            "registry_ttl",
            "active_ttl",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.backoff_base > self.backoff_max:
            problems.append("backoff_base must not exceed backoff_max")
        if self.max_failovers < 0:
            problems.append("max_failovers must be >= 0")
        for name in ("max_price", "budget"):
            value = getattr(self, name)
            if value is not None and value < 0:
                problems.append(f"{name} must not be negative")
        if not 0 < self.channel_min_life < self.channel_life:
            problems.append("need 0 < channel_min_life < channel_life")
        if self.ledger_url is not None:
            from ledger.db.engine import ledger_url_problem  # SQLAlchemy: only when given

            problem = ledger_url_problem(self.ledger_url)
            if problem is not None:
                problems.append(f"ledger_url: {problem}")
        if problems:
            raise ClientConfigError("invalid client configuration: " + "; ".join(problems))

    @property
    def name(self) -> str:
        """The model's name in the swarm (DHT keys) and on-chain (its model id)."""
        return self.model_name or Path(self.model_path).name

    def ledger_path(self, address: str) -> Path:
        """The default SQLite ledger of the wallet `address`."""
        return Path(self.home).expanduser().resolve() / "client" / address / "ledger.sqlite"

    def evidence_dir(self, address: str) -> Path:
        """Where the wallet `address` keeps the outputs behind receipts it refused."""
        return Path(self.home).expanduser().resolve() / "client" / address / "evidence"
