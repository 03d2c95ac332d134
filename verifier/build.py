"""How a verifier is built, and how it stops: the same shape as a node's (`node.build`).

1. `connect_verifier(config, closing)` -> `VerifierBase`, before anything runs: the verifier's
   key and deployment, its chain connection and contracts, its ledger
   (`<home>/verifier/<address>/`, bound to the chain: one left by an earlier chain under the
   same id, a restarted devnet, is set aside, so its event cursor cannot skip this chain's
   commits), its sampling key, the model's shape, the stake token's units and the slasher's
   parameters. The ledger's close goes on `closing`.
2. `build_verifier(base, host, ...)` -> `VerifierParts`, inside the `node.host.ServiceHost`'s
   event loop: the recompute thread, the verdict board in the DHT, the nodes' standings (is a
   node still worth a slash) and the slashing part.

`verifier.service.Verifier.start` then registers (or tops up) the verifier's stake, serves the
status API and starts the jobs (follow, audit, quorum). They stop in the reverse order: the jobs
(an audit in progress is cancelled and taken up again after a restart), the recompute thread,
then the host's status API, libp2p daemon and DHT, and last the ledger.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from eth_account.signers.local import LocalAccount

from ledger.chain import Chain
from ledger.contracts import Batch, Contracts
from ledger.db import Ledger, chosen_ledger_url, describe_url, open_deployment_ledger
from ledger.deployment import Deployment
from ledger.eip712 import Domain
from ledger.identity import load_identity
from ledger.types import ModelId, model_id
from ledger.units import TokenUnits
from node.blocks import load_span
from node.device import DeviceError, device_name, local_device
from node.families import load_config
from node.host import ServiceHost
from verifier.audit import AuditSpans
from verifier.config import VerifierConfig
from verifier.errors import VerifierConfigError
from verifier.sampling import AuditKey
from verifier.slashing import Slashing
from verifier.standing import Standings
from verifier.verdicts import VerdictBoard
from verifier.worth import SlashTerms

logger = logging.getLogger(__name__)


class SpanCache:
    """Float32 spans of the model for recomputation on `device` (each with the 16-bit copies its
    blockwise audits build, `verifier.audit.AuditSpans`), the `capacity` most recently used
    kept."""

    def __init__(self, model_path: Path, capacity: int, device: torch.device | str = "cpu") -> None:
        self.model_path = model_path
        self.capacity = capacity
        self.device = torch.device(device)
        self._spans: OrderedDict[tuple[int, int], AuditSpans] = OrderedDict()

    def get(self, start: int, end: int) -> AuditSpans:
        key = (start, end)
        if key in self._spans:
            self._spans.move_to_end(key)
            return self._spans[key]
        span = load_span(self.model_path, start, end, torch.float32, device=self.device)
        self._spans[key] = AuditSpans(span)
        while len(self._spans) > self.capacity:
            self._spans.popitem(last=False)
        return self._spans[key]


@dataclass(frozen=True)
class VerifierBase:
    """The verifier's identity, chain and ledger, and what it audits."""

    config: VerifierConfig
    account: LocalAccount
    deployment: Deployment
    dir: Path  # `<home>/verifier/<address>`: the ledger, sampling key, p2p key
    chain: Chain
    contracts: Contracts
    ledger: Ledger
    key: AuditKey  # the secret that decides which leaves are sampled
    model_name: str
    model_id: ModelId
    hidden_size: int
    spans: SpanCache  # float32 spans for recomputation
    quorum: int  # verdicts a slash needs
    challenge_window: int  # seconds a committed batch may be challenged
    domain: Domain  # the slasher's EIP-712 domain
    units: TokenUnits  # the stake token's decimals and symbol, for every amount shown
    terms: SlashTerms  # what one slash takes and pays

    @property
    def address(self) -> str:
        return str(self.account.address)


def connect_verifier(config: VerifierConfig, closing: contextlib.ExitStack) -> VerifierBase:
    """Connect to the chain as the verifier's key and open its ledger (see the module doc); the
    ledger's close goes on `closing`."""
    home = Path(config.home).expanduser().resolve()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    hidden_size = int(load_config(config.model_path).hidden_size)
    try:  # before the ledger: a machine without the device stops here
        device = local_device(config.device)
    except DeviceError as exc:
        raise VerifierConfigError(str(exc)) from None
    logger.info("recomputing spans on %s in float32", device_name(device))
    deployment, account = load_identity(config, role="verifier")
    folder = home / "verifier" / account.address
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    chain = deployment.connect(rpc_url=config.rpc_url)
    # tied to this chain, as a node's and a client's: a ledger of an earlier chain under the
    # same id (a restarted devnet) is set aside, so its event cursor cannot skip this one's
    url = chosen_ledger_url(config.ledger_url, folder / "ledger.sqlite")  # --db, else the file
    ledger = open_deployment_ledger(url, chain, deployment)
    closing.callback(ledger.close)
    sender = chain.sender(account, journal=ledger.tx_journal())
    contracts = Contracts.from_deployment(chain, deployment, sender)
    params = contracts.slasher.params()
    logger.info(
        "verifier %s on chain %d (quorum %d), files in %s, ledger %s",
        account.address,
        chain.chain_id,
        params.quorum,
        folder,
        describe_url(ledger.engine.url),
    )
    return VerifierBase(
        config=config,
        account=account,
        deployment=deployment,
        dir=folder,
        chain=chain,
        contracts=contracts,
        ledger=ledger,
        key=AuditKey.load_or_create(folder / "audit.key"),
        model_name=config.name,
        model_id=model_id(config.name),
        hidden_size=hidden_size,
        spans=SpanCache(Path(config.model_path), config.max_spans, device),
        quorum=params.quorum,
        challenge_window=params.challenge_window,
        domain=contracts.slasher.domain(),
        units=TokenUnits.of(contracts.token),
        terms=SlashTerms(
            slash_bps=params.slash_bps, bounty_bps=params.bounty_bps, quorum=params.quorum
        ),
    )


@dataclass(frozen=True)
class VerifierParts:
    """The parts of a running verifier."""

    compute: ThreadPoolExecutor  # recomputation, one span at a time
    board: VerdictBoard  # findings shared with other verifiers (DHT)
    slashing: Slashing  # verdicts, their quorum and the slashes
    standings: Standings  # whether each node is still worth a slash (cached chain reads)


def build_verifier(
    base: VerifierBase,
    host: ServiceHost,
    *,
    is_active: Callable[[str], bool],
    batch_of: Callable[[int], Batch],
) -> VerifierParts:
    """The verifier's parts (see the module doc); its thread stops on the host's stack.
    `is_active` and `batch_of` are the verifier's cached chain reads."""
    compute = ThreadPoolExecutor(1, thread_name_prefix="recompute")
    host.stops.callback(compute.shutdown, wait=True)
    board = VerdictBoard(host.dht, base.contracts.slasher.address, ttl=base.config.verdict_ttl)
    w3 = base.chain.w3
    standings = Standings(
        registry=base.contracts.node_registry,
        terms=base.terms,
        units=base.units,
        token_price_eth=base.config.token_price_eth,
        gas_price=lambda: int(w3.eth.gas_price),
    )
    slashing = Slashing(
        ledger=base.ledger,
        contracts=base.contracts,
        account=base.account,
        domain=base.domain,
        quorum=base.quorum,
        is_active=is_active,
        batch_of=batch_of,
        standings=standings,
        units=base.units,
        board=board,
    )
    return VerifierParts(compute=compute, board=board, slashing=slashing, standings=standings)
