"""`SwarmClient`: one paying client of the swarm, built from a `ClientConfig`, a wallet and a
deployment: its chain connection and ledger, its channels and budget, its place in the swarm
(libp2p + DHT), its router, its receipt keeper, and the inference sessions it opens.

    client = SwarmClient(config, account=wallet, deployment=deployment)
    with client.inference_session(max_length=64) as session:
        out = session.step(hidden)
    client.close()

The client's ledger (`<home>/client/<address>/ledger.sqlite` by default) keeps its channels
and the highest voucher it signed on each, every receipt it was given, and the transactions it
sent, for the chain it was recorded on: a ledger left by an earlier chain under the same chain
id (a restarted devnet) is set aside and a fresh one started (`ledger.db.binding`). Steps of all sessions of one client run one at a time (`step_lock`): vouchers of one
channel must reach its server in increasing order.

`build_client` builds the parts whole, in order (chain, ledger, contracts and payments, the
registry, the network, the receipt keeper, the router), into a frozen `ClientParts`, and
registers each started part's stop on an exit stack: closing the stack stops them in reverse
order (receipts flushed, the swarm left, the ledger closed), and so does a part that fails to
start. `SwarmClient` holds the parts and that stack; each session gets only the parts it uses
(`client.session.SessionParts`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount

from client.config import ClientConfig
from client.errors import ClientConfigError, ClientError
from client.keeper import ReceiptKeeper
from client.network import Network
from client.payments import Budget, Payments
from client.registry import ServerRegistry
from client.router import Router
from client.session import InferenceSession, SessionParts
from client.training import TrainingRoute
from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.db import Ledger, chosen_ledger_url, open_deployment_ledger
from ledger.deployment import Deployment
from ledger.eip712 import Domain
from ledger.types import ModelId, model_id
from ledger.units import TokenUnits
from node.families import load_config
from node.routing import Backoff

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientParts:
    """Everything one client runs on, fully built (`build_client`); its sessions share it."""

    config: ClientConfig
    account: LocalAccount  # the wallet that pays (and signs vouchers)
    model_id: ModelId  # the model's id on-chain (from `config.name`)
    total_blocks: int  # the model's transformer blocks, all served by the swarm
    hidden_size: int  # width of the hidden states sent through the route
    chain: Chain  # the deployment's chain, at `config.rpc_url` or the deployment's
    ledger: Ledger  # this wallet's channels, vouchers, receipts and transactions on `chain`
    contracts: Contracts  # the deployment's contracts, sending as `account`
    receipt_domain: Domain  # EIP-712 domain nodes sign receipts in (the slasher's)
    payments: Payments  # channels, vouchers and the budget
    registry: ServerRegistry  # on-chain standing of announced servers
    network: Network  # libp2p + the DHT, on a loop thread of its own
    receipts: ReceiptKeeper  # writes every receipt given to the client into `ledger`
    router: Router  # picks servers for a range of blocks
    step_lock: threading.RLock  # one step of one session at a time, over all sessions

    def for_sessions(self) -> SessionParts:
        """What each inference session gets: the parts it calls, the settings it reads."""
        config = self.config
        return SessionParts(
            router=self.router,
            network=self.network,
            registry=self.registry,
            payments=self.payments,
            receipts=self.receipts,
            step_lock=self.step_lock,
            receipt_domain=self.receipt_domain,
            model_id=self.model_id,
            total_blocks=self.total_blocks,
            hidden_size=self.hidden_size,
            dtype=config.dtype,
            max_failovers=config.max_failovers,
            pipeline=config.pipeline,
            open_timeout=config.open_timeout,
            step_timeout=config.step_timeout,
            silence_timeout=config.silence_timeout,
        )


def build_client(
    config: ClientConfig,
    *,
    account: LocalAccount,
    deployment: Deployment,
    stops: contextlib.ExitStack,
) -> ClientParts:
    """Build every part of a client paying with `account` on `deployment`, and push the stop of
    each part that runs (ledger, network, receipt keeper) on `stops` as it starts: closing
    `stops` stops them in reverse order. `ClientConfigError` for a wallet or deployment of the
    wrong kind; whatever fails to start is raised after `stops` holds what started before it
    (so `with ExitStack() as stops:` around this call stops those)."""
    if not isinstance(account, LocalAccount):
        raise ClientConfigError(
            "wallet must be an unlocked eth-account LocalAccount (see ledger.wallet.load_wallet)"
        )
    if not isinstance(deployment, Deployment):
        raise ClientConfigError("deployment must be a ledger.deployment.Deployment")
    model_config = load_config(config.model_path)
    chain = deployment.connect(rpc_url=config.rpc_url)
    url = chosen_ledger_url(config.ledger_url, config.ledger_path(account.address))
    # tied to this chain: a ledger from an earlier chain under the same id (a restarted
    # devnet) is set aside, never continued
    ledger = open_deployment_ledger(url, chain, deployment)
    stops.callback(ledger.close)
    sender = chain.sender(account, journal=ledger.tx_journal())
    contracts = Contracts.from_deployment(chain, deployment, sender)
    units = TokenUnits.of(contracts.token)  # read once: what people read amounts in
    payments = Payments(
        contracts=contracts,
        ledger=ledger,
        account=account,
        chain_id=chain.chain_id,
        budget=Budget(config.budget, units),
        units=units,
        channel_life=config.channel_life,
        min_life=config.channel_min_life,
    )
    the_model_id = model_id(config.name)
    registry = ServerRegistry(
        contracts.node_registry,
        the_model_id,
        ttl=config.registry_ttl,
        active_ttl=config.active_ttl,
    )
    network = Network.start(config.initial_peers, timeout=config.join_timeout)
    stops.callback(network.shutdown)
    # started after the network, so stopped before it: receipts are flushed first
    receipts = ReceiptKeeper(
        ledger, chain_id=chain.chain_id, evidence_dir=config.evidence_dir(account.address)
    )
    stops.callback(receipts.close)
    total_blocks = int(model_config.num_hidden_layers)
    router = Router(
        network,
        registry,
        model_name=config.name,
        total_blocks=total_blocks,
        dtype=config.dtype,
        weights=config.weights,
        max_price=config.max_price,
        units=units,
        backoff=Backoff(config.backoff_base, config.backoff_max),
        swarm_ttl=config.swarm_ttl,
        ping_timeout=config.ping_timeout,
        ping_ttl=config.ping_ttl,
    )
    return ClientParts(
        config=config,
        account=account,
        model_id=the_model_id,
        total_blocks=total_blocks,
        hidden_size=int(model_config.hidden_size),
        chain=chain,
        ledger=ledger,
        contracts=contracts,
        receipt_domain=contracts.slasher.domain(),
        payments=payments,
        registry=registry,
        network=network,
        receipts=receipts,
        router=router,
        step_lock=threading.RLock(),
    )


class SwarmClient:
    """A paying client (see the module doc). Close it when done (or use it as a context)."""

    def __init__(
        self, config: ClientConfig, *, account: LocalAccount, deployment: Deployment
    ) -> None:
        with contextlib.ExitStack() as stops:
            self.parts = build_client(config, account=account, deployment=deployment, stops=stops)
            self._stops = stops.pop_all()  # built whole: the client stops them from now on
        self._session_parts = self.parts.for_sessions()
        self._training: TrainingRoute | None = None  # made on first use (`training_route`)
        self.closed = False
        logger.info(
            "client %s for %s (%d blocks) on chain %d",
            account.address,
            config.name,
            self.parts.total_blocks,
            self.parts.chain.chain_id,
        )

    @property
    def config(self) -> ClientConfig:
        return self.parts.config

    @property
    def account(self) -> LocalAccount:
        return self.parts.account

    @property
    def address(self) -> str:
        return self.parts.account.address

    @property
    def payments(self) -> Payments:
        return self.parts.payments

    @property
    def network(self) -> Network:
        return self.parts.network

    @property
    def router(self) -> Router:
        return self.parts.router

    def inference_session(
        self,
        *,
        max_length: int,
        batch_size: int | None = None,
        prompts: torch.Tensor | None = None,
    ) -> InferenceSession:
        """A new session over the whole model for sequences of up to `max_length` positions
        (servers reserve that much cache; routed and paid on the first step), with deep
        `prompts` [blocks, P, hidden] added before each block to the first P positions."""
        if self.closed:
            raise ClientError("the client is closed")
        return InferenceSession(
            self._session_parts, max_length=max_length, batch_size=batch_size, prompts=prompts
        )

    def training_route(self) -> TrainingRoute:
        """The client's route for training: paid forwards and backwards over every block
        (`client.training`); one per client, so that `spent` adds up what it cost."""
        if self.closed:
            raise ClientError("the client is closed")
        if self._training is None:
            self._training = TrainingRoute(self._session_parts)
        return self._training

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Flush the receipts, leave the swarm and close the ledger (the reverse of building).
        Idempotent."""
        if self.closed:
            return
        self.closed = True
        started = time.perf_counter()
        self._stops.close()
        logger.debug("client closed in %.2f s", time.perf_counter() - started)

    def __enter__(self) -> SwarmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
