"""`NodeConfig`: everything `stakeswarm node serve` can be told, in one typed place.

The CLI (`node.cli`) builds one from its options and hands it to `node.server.Server`; tests
and benchmarks build one directly. Amounts the operator types in whole tokens (price, stake,
credit) stay `Decimal` here and become base units once the server has read the token's
decimals from the chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ledger.identity import identity_problems
from node.errors import NodeError
from node.fault_modes import FAULT_MODES
from node.precisions import QUANTIZATIONS

DEFAULT_HOST_MADDRS = ("/ip4/127.0.0.1/tcp/0",)


class ConfigError(NodeError, ValueError):
    """A node configuration that cannot work (conflicting or out-of-range options)."""


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def check_device_name(text: str) -> str | None:
    """What is wrong with `text` as a `--device` value (None: nothing), machine aside
    (`node.device.resolve_device` knows the machine)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text) is None:
        return f"device must be {DEVICE_CHOICES}, got {text!r}"
    return None


def check_dtype_name(text: str) -> str | None:
    """What is wrong with `text` as a `--dtype` value (None: nothing)."""
    if text not in DTYPE_CHOICES:
        return f"dtype must be {', '.join(DTYPE_CHOICES)}, got {text!r}"
    return None


@dataclass(frozen=True)
class NodeConfig:
    """How one node serves: its model and span, its chain identity, its swarm, its economics."""

    # --- model -------------------------------------------------------------------------------
    model_path: Path  # local Hugging Face folder: config.json + safetensors weights
    model_name: str | None = None  # the swarm's name for the model (DHT keys, on-chain id);
    # None: the folder's name
    blocks: tuple[int, int] | None = None  # serve exactly [start, end); None: choose a span
    num_blocks: int | None = None  # span length when choosing; None: the whole model
    # compute dtype announced and used: float32 | float16 | bfloat16, or auto (node.device:
    # bfloat16 on a CUDA device that has it, else float16; float32 on the CPU)
    dtype: str = "float32"
    quantize: str | None = None  # the span's linear weights in int8 or nf4 (node.quantize), a
    # precision of its own (bfloat16+int8...); None: full weights
    device: str = "auto"  # where the span computes: auto (the first CUDA device, else the
    # CPU) | cpu | cuda | cuda:N
    torch_threads: int | None = None  # torch intra-op threads; None: torch's default

    # --- state and chain ---------------------------------------------------------------------
    home: Path = Path("~/.stakeswarm")  # state directory; the node keeps its files in
    # <home>/node/<address>/ (ledger, libp2p identity, stored inputs)
    # SQLAlchemy URL of the node's ledger (`--db`): sqlite:///FILE or postgresql://USER@HOST/DB
    # (one database per node); None: the SQLite file <home>/node/<address>/ledger.sqlite
    ledger_url: str | None = None
    devnet: bool = False  # use the devnet deployment in <home> and a dev key
    account: str | None = None  # with devnet: dev account name, role or index (default "node")
    deployment_file: Path | None = None  # without devnet: the deployment JSON
    rpc_url: str | None = None  # JSON-RPC URL; None: the deployment's
    keystore: Path | None = None  # without devnet: the node's key
    password_env: str | None = None  # variable holding the keystore password; None: prompt
    # start on a new ledger although the chain shows this node's history (its old ledger was
    # lost: what it held can no longer be redeemed or revealed), moving a damaged one aside
    new_ledger: bool = False

    # --- swarm -------------------------------------------------------------------------------
    initial_peers: tuple[str, ...] = ()  # multiaddrs of swarm members; () starts a new swarm
    host_maddrs: tuple[str, ...] = DEFAULT_HOST_MADDRS  # where libp2p listens
    announce_maddrs: tuple[str, ...] = ()  # public multiaddrs to announce, if not the host ones
    announce_interval: float = 30.0  # seconds between DHT refreshes of this node's records
    announce_ttl: float = 90.0  # seconds a DHT record lives without a refresh
    rebalance_interval: float = 120.0  # seconds between checks whether to move the span
    # (only when the span was chosen, not given with `blocks`)

    # --- economics ---------------------------------------------------------------------------
    price: Decimal = Decimal("0.000001")  # tokens per token per block
    # tokens per token per block of a backward (training); None: twice `price` (a backward
    # recomputes the forward, then propagates). Served by float32 nodes only.
    backward_price: Decimal | None = None
    stake: Decimal | None = None  # tokens to keep staked; None: the registry's minimum
    credit: Decimal = Decimal("0")  # tokens a channel may owe beyond its vouchers
    channel_min_life: float = 600.0  # seconds a channel must still run to be accepted
    # seconds between redemption runs: each redeems every channel's newest voucher (600 s: at
    # 10 tokens/s through 3 servers, redemptions cost ~16k gas per 1,000 tokens)
    redeem_interval: float = 600.0
    redeem_min: Decimal = Decimal("0")  # tokens a voucher must add to be worth redeeming
    redeem_margin: float = 3600.0  # seconds before a channel's expiry it is always redeemed
    channel_cache_ttl: float = 30.0  # seconds a channel read from the chain is trusted

    # --- serving -----------------------------------------------------------------------------
    cache_tokens: int = 16384  # KV cache budget in tokens (batch x max length) over sessions
    session_idle_timeout: float = 300.0  # seconds without a step before a session is dropped
    # seconds an open session may go without a paid step before it is dropped: an unpaid session
    # reserves cache for free (30 s: well above the prefill through the hops before this one)
    session_open_timeout: float = 30.0
    max_frame_bytes: int = 64 * 1024 * 1024  # largest frame of tensors accepted from a peer
    # tensor bytes the frames being received or worked on may hold, all connections together;
    # a frame that does not fit is refused with `busy` (512 MiB: eight largest frames)
    max_incoming_bytes: int = 512 * 1024 * 1024
    # most tokens (batch x length) one stateless forward may carry; the compute thread is
    # shared, so this bounds how long one forward holds every inference step back (1,024: a
    # long prompt's prefill, ~1 s of compute where 8,192 tokens took 9 s on CPU)
    max_forward_tokens: int = 1024
    # seconds a training forward's record waits for its backward (`node.training`)
    backward_ttl: float = 600.0
    reveal_max_age: float = 600.0  # seconds a verifier's reveal request stays valid
    throughput_steps: int = 16  # decode steps timed when measuring throughput
    faulty: str | None = None  # a cheat mode of node.faults (tests and demos only); None: honest

    # --- commitments -------------------------------------------------------------------------
    # seconds between commits of pending leaves (600 s: ~34k gas per 1,000 tokens at 10 tokens/s
    # through 3 servers, and a leaf waits at most 10 minutes of its 24-hour challenge window)
    commit_interval: float = 600.0
    commit_max_leaves: int = 4096  # commit as soon as this many leaves are pending
    prune_interval: float = 600.0  # seconds between removals of inputs past their window
    # seconds between looks for receipt challenges to answer (the response window is hours)
    challenge_poll_interval: float = 60.0

    # --- http --------------------------------------------------------------------------------
    http_host: str = "127.0.0.1"  # where the status API listens
    http_port: int | None = 0  # status API port; 0: any free port; None: no API

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.blocks is not None:
            start, end = self.blocks
            if not 0 <= start < end < 2**16:
                problems.append(
                    f"blocks must be START:END with 0 <= START < END, got {start}:{end}"
                )
            if self.num_blocks is not None:
                problems.append("give blocks or num_blocks, not both")
        if self.num_blocks is not None and self.num_blocks < 1:
            problems.append(f"num_blocks must be >= 1, got {self.num_blocks}")
        for problem in (check_dtype_name(self.dtype), check_device_name(self.device)):
            if problem is not None:
                problems.append(problem)
        if self.quantize is not None:
            if self.quantize not in QUANTIZATIONS:
                problems.append(
                    f"quantize must be {', '.join(QUANTIZATIONS)}, got {self.quantize!r}"
                )
            if self.dtype == "float32":
                problems.append(
                    f"{self.quantize} weights compute in bfloat16 or float16, not float32: "
                    "give --dtype bfloat16, float16 or auto"
                )
        problems += identity_problems(self, signs="node signs receipts and transactions")
        if self.ledger_url is not None:
            from ledger.db.engine import ledger_url_problem  # SQLAlchemy: only when given

            problem = ledger_url_problem(self.ledger_url)
            if problem is not None:
                problems.append(f"db: {problem}")
        for name in ("price", "credit", "redeem_min"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.backward_price is not None and self.backward_price < 0:
            problems.append("backward_price must not be negative")
        if self.backward_ttl <= 0:
            problems.append("backward_ttl must be > 0")
        if self.stake is not None and self.stake < 0:
            problems.append("stake must not be negative")
        for name in (
            "announce_interval",
            "announce_ttl",
            "rebalance_interval",
            "redeem_interval",
            "session_idle_timeout",
            "session_open_timeout",
            "commit_interval",
            "prune_interval",
            "challenge_poll_interval",
            "reveal_max_age",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.announce_ttl <= self.announce_interval:
            problems.append("announce_ttl must exceed announce_interval, or records lapse")
        if self.cache_tokens < 1:
            problems.append("cache_tokens must be >= 1")
        if self.max_forward_tokens < 1:
            problems.append("max_forward_tokens must be >= 1")
        if self.max_frame_bytes < 1:
            problems.append("max_frame_bytes must be positive")
        if self.max_incoming_bytes < self.max_frame_bytes:
            problems.append(
                "max_incoming_bytes (--max-incoming-mb) must be at least max_frame_bytes "
                "(--max-frame-mb): a largest frame must fit"
            )
        if self.commit_max_leaves < 1:
            problems.append("commit_max_leaves must be >= 1")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            problems.append(f"http_port must be in [0, 65535], got {self.http_port}")
        if self.torch_threads is not None and self.torch_threads < 1:
            problems.append("torch_threads must be >= 1")
        if self.faulty is not None and self.faulty not in FAULT_MODES:
            problems.append(f"faulty must be one of {', '.join(FAULT_MODES)}, got {self.faulty!r}")
        if problems:
            raise ConfigError("invalid node configuration: " + "; ".join(problems))

    @property
    def name(self) -> str:
        """The model's name in the swarm and on-chain."""
        return self.model_name or Path(self.model_path).name
