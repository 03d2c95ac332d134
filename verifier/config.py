"""`VerifierConfig`: everything `stakeswarm verifier run` can be told, in one typed place.

The CLI (`stakeswarm.commands.verifier`) builds one from its options and hands it to
`verifier.service.Verifier`; tests build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ledger.identity import identity_problems
from node.config import DEFAULT_HOST_MADDRS, check_device_name
from verifier.errors import VerifierConfigError

# Seconds a node has to reveal a sampled leaf before the verifier signs a withheld verdict.
# Generous: a node restarting or briefly cut off keeps answering within it (the verifier asks
# again every `retry_interval`). Short against any sensible challenge window (the devnet's is a
# day): the verdict, the quorum's own attempts and the slash all fit after it; a deadline that
# would not is cut to the batch's window (see `Verifier._deadline`).
DEFAULT_REVEAL_DEADLINE = 1800.0
DEFAULT_REVEAL_TIMEOUT = 60.0  # seconds one reveal request may take
DEFAULT_RETRY_INTERVAL = 10.0  # seconds between reveal attempts of one leaf
# Failed reveal attempts a withheld verdict needs at least, even past the deadline (a verifier
# that was itself down most of the deadline asks a few more times before it signs).
DEFAULT_WITHHELD_MIN_ATTEMPTS = 3


@dataclass(frozen=True)
class VerifierConfig:
    """How one verifier audits: which model, how often, as whom, through which swarm."""

    # --- model -------------------------------------------------------------------------------
    model_path: Path  # local Hugging Face folder with every block the verifier may re-run
    model_name: str | None = None  # the swarm's name of the model; None: the folder's name

    # --- sampling and audits -----------------------------------------------------------------
    sample_rate: float = 0.05  # probability that any one committed leaf is audited
    reveal_timeout: float = DEFAULT_REVEAL_TIMEOUT  # seconds one reveal request may take
    # seconds after sampling a node has to reveal a leaf; then: a withheld verdict and a slash
    reveal_deadline: float = DEFAULT_REVEAL_DEADLINE
    retry_interval: float = DEFAULT_RETRY_INTERVAL  # seconds between reveal attempts of one leaf
    # failed reveal attempts a withheld verdict needs at least (retried past the deadline)
    withheld_min_attempts: int = DEFAULT_WITHHELD_MIN_ATTEMPTS
    # ETH one stake token is worth to this verifier: a slash whose bounty is worth less than
    # its gas (times `verifier.worth.GAS_SAFETY`) is not sent, and the node's audits are dropped
    token_price_eth: Decimal = Decimal(1)
    max_spans: int = 4  # spans kept loaded for recomputation (least recently used dropped)
    torch_threads: int | None = None  # torch intra-op threads; None: torch's default
    # where spans are recomputed (always in float32): auto (the first CUDA device, else the
    # CPU) | cpu | cuda | cuda:N
    device: str = "auto"

    # --- chain -------------------------------------------------------------------------------
    home: Path = Path("~/.stakeswarm")  # state directory; the verifier keeps its files in
    # <home>/verifier/<address>/ (ledger, sampling key, libp2p identity)
    # SQLAlchemy URL of the verifier's ledger (`--db`): sqlite:///FILE or
    # postgresql://USER@HOST/DBNAME; None: the SQLite file <home>/verifier/<address>/ledger.sqlite
    ledger_url: str | None = None
    devnet: bool = False  # use the devnet deployment in <home> and a dev key
    account: str | None = None  # with devnet: dev account name, role or index ("verifier")
    deployment_file: Path | None = None  # without devnet: the deployment JSON
    rpc_url: str | None = None  # JSON-RPC URL; None: the deployment's
    keystore: Path | None = None  # without devnet: the verifier's key
    password_env: str | None = None  # variable holding the keystore password; None: prompt
    stake: Decimal | None = None  # tokens to stake when not registered yet; None: the minimum
    poll_interval: float = 2.0  # seconds between reads of new commit and slash events
    from_block: int | None = None  # first block to sample; None: where the last run stopped,
    # else the deployment's first block

    # --- swarm and quorum --------------------------------------------------------------------
    initial_peers: tuple[str, ...] = ()  # multiaddrs of swarm members
    host_maddrs: tuple[str, ...] = DEFAULT_HOST_MADDRS  # where libp2p listens
    quorum_interval: float = 3.0  # seconds between reads of the verdicts other verifiers shared
    verdict_ttl: float = 3600.0  # seconds a shared verdict stays in the DHT

    # --- http --------------------------------------------------------------------------------
    http_host: str = "127.0.0.1"  # where the status API listens
    http_port: int | None = 0  # status API port; 0: any free port; None: no API

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 < self.sample_rate <= 1:
            problems.append(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        for name in (
            "reveal_timeout",
            "reveal_deadline",
            "retry_interval",
            "poll_interval",
            "quorum_interval",
            "verdict_ttl",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.reveal_timeout > self.reveal_deadline:
            problems.append("reveal_timeout must not exceed reveal_deadline")
        if self.withheld_min_attempts < 1:
            problems.append("withheld_min_attempts must be >= 1")
        if not self.token_price_eth > 0:
            problems.append("token_price_eth must be positive")
        if self.max_spans < 1:
            problems.append("max_spans must be >= 1")
        if self.torch_threads is not None and self.torch_threads < 1:
            problems.append("torch_threads must be >= 1")
        device_problem = check_device_name(self.device)
        if device_problem is not None:
            problems.append(device_problem)
        problems += identity_problems(self, signs="verifier signs verdicts and transactions")
        if self.ledger_url is not None:
            from ledger.db.engine import ledger_url_problem  # SQLAlchemy: only when given

            problem = ledger_url_problem(self.ledger_url)
            if problem is not None:
                problems.append(f"db: {problem}")
        if self.stake is not None and self.stake < 0:
            problems.append("stake must not be negative")
        if self.from_block is not None and self.from_block < 0:
            problems.append("from_block must not be negative")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            problems.append(f"http_port must be in [0, 65535], got {self.http_port}")
        if problems:
            raise VerifierConfigError("invalid verifier configuration: " + "; ".join(problems))

    @property
    def name(self) -> str:
        """The model's name in the swarm and on-chain."""
        return self.model_name or Path(self.model_path).name
