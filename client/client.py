"""`SwarmClient`: one paying client of the swarm, wired from a `ClientConfig`, a wallet and a
deployment: its chain connection and ledger, its channels and budget, its place in the swarm
(libp2p + DHT), its router, and the inference sessions it opens.

    client = SwarmClient(config, account=wallet, deployment=deployment)
    with client.inference_session(max_length=64) as session:
        out = session.step(hidden)
    client.close()

The client's ledger (`<home>/client/<address>/ledger.sqlite` by default) keeps its channels
and the highest voucher it signed on each, every receipt it was given, and the transactions it
sent, for the chain it was recorded on: a ledger left by an earlier chain under the same chain
id (a restarted devnet) is set aside and a fresh one started (`ledger.db.binding`). Steps of all sessions of one client run one at a time (`step_lock`): vouchers of one
channel must reach its server in increasing order.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from eth_account.signers.local import LocalAccount
from safetensors.torch import save_file

from client.config import ClientConfig
from client.errors import ClientConfigError, ClientError
from client.network import Network
from client.payments import Budget, Payments
from client.receipts import ReceiptProblem
from client.registry import ServerRegistry
from client.router import Router
from client.routing import Backoff
from ledger.contracts import Contracts
from ledger.db import Ledger, open_deployment_ledger, record_receipt, sqlite_url
from ledger.deployment import Deployment
from ledger.types import ModelId, model_id
from node.families import load_config
from node.protocol import SignedReceipt
from node.tensors import dtype_from_name

if TYPE_CHECKING:
    from client.session import Hop, InferenceSession

logger = logging.getLogger(__name__)


class SwarmClient:
    """A paying client (see the module doc). Close it when done (or use it as a context)."""

    def __init__(
        self, config: ClientConfig, *, account: LocalAccount, deployment: Deployment
    ) -> None:
        if not isinstance(account, LocalAccount):
            raise ClientConfigError(
                "wallet must be an unlocked eth-account LocalAccount (see ledger.wallet.load_wallet)"
            )
        if not isinstance(deployment, Deployment):
            raise ClientConfigError("deployment must be a ledger.deployment.Deployment")
        self.config = config
        self.account = account
        self.deployment = deployment
        model_config = load_config(config.model_path)
        self.model_name = config.name
        self.model_id: ModelId = model_id(self.model_name)
        self.total_blocks = int(model_config.num_hidden_layers)
        self.hidden_size = int(model_config.hidden_size)
        self.torch_dtype = dtype_from_name(config.dtype)
        self.step_lock = threading.RLock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="client-ledger")
        self._pending: list[Future[None]] = []
        self.ledger: Ledger | None = None
        try:
            self.chain = deployment.connect(rpc_url=config.rpc_url)
            url = config.ledger_url or sqlite_url(config.ledger_path(account.address))
            # tied to this chain: a ledger from an earlier chain under the same id (a
            # restarted devnet) is set aside, never continued
            self.ledger = open_deployment_ledger(url, self.chain, deployment)
            sender = self.chain.sender(account, journal=self.ledger.tx_journal())
            self.contracts = Contracts.from_deployment(self.chain, deployment, sender)
            self.receipt_domain = self.contracts.slasher.domain()
            self.payments = Payments(
                contracts=self.contracts,
                ledger=self.ledger,
                account=account,
                chain_id=self.chain.chain_id,
                budget=Budget(config.budget),
                channel_life=config.channel_life,
                min_life=config.channel_min_life,
            )
            self.registry = ServerRegistry(
                self.contracts.node_registry,
                self.model_id,
                ttl=config.registry_ttl,
                active_ttl=config.active_ttl,
            )
            self.network = Network.start(config.initial_peers, timeout=config.join_timeout)
            self.router = Router(
                self.network,
                self.registry,
                model_name=self.model_name,
                total_blocks=self.total_blocks,
                dtype=config.dtype,
                max_price=config.max_price,
                backoff=Backoff(config.backoff_base, config.backoff_max),
                swarm_ttl=config.swarm_ttl,
                ping_timeout=config.ping_timeout,
                ping_ttl=config.ping_ttl,
            )
        except BaseException:
            self.close()
            raise
        self.closed = False
        logger.info(
            "client %s for %s (%d blocks) on chain %d",
            account.address,
            self.model_name,
            self.total_blocks,
            self.chain.chain_id,
        )

    @property
    def address(self) -> str:
        return self.account.address

    def inference_session(
        self, *, max_length: int, batch_size: int | None = None
    ) -> InferenceSession:
        """A new session over the whole model for sequences of up to `max_length` positions
        (servers reserve that much cache; routed and paid on the first step)."""
        from client.session import InferenceSession

        if self.closed:
            raise ClientError("the client is closed")
        return InferenceSession(self, max_length=max_length, batch_size=batch_size)

    # --- receipts --------------------------------------------------------------------------

    def keep_receipt(
        self,
        hop: Hop,
        receipt: SignedReceipt,
        *,
        sent: bytes,
        received: bytes,
        cost: int,
        problem: tuple[ReceiptProblem, str] | None,
        output: torch.Tensor | None = None,
    ) -> None:
        """Store a receipt in the ledger: valid ones in the background (in order), invalid ones
        (evidence) at once, with the `output` received for it, if given, as a safetensors file
        under the evidence folder (`evidence_file`): the receipt and that tensor show anyone
        what the node signed against what it sent."""
        assert self.ledger is not None
        ledger, chain_id = self.ledger, self.chain.chain_id
        if problem is not None and output is not None:
            path = self.evidence_file(receipt)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"output": output.detach().cpu().contiguous()}, str(path))

        def write() -> None:
            with ledger.begin() as db:
                record_receipt(
                    db,
                    chain_id=chain_id,
                    server=hop.address,
                    peer_id=hop.peer_id,
                    channel_id=hop.channel.channel_id,
                    leaf=receipt.leaf,
                    signature=receipt.signature,
                    sent_hash=sent,
                    received_hash=received,
                    cost=cost,
                    problem=None if problem is None else problem[0].value,
                    detail=None if problem is None else problem[1],
                )

        if problem is not None:
            self.flush_receipts()
            write()
            return
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._writer.submit(write))

    def evidence_file(self, receipt: SignedReceipt) -> Path:
        """Where the output behind a refused `receipt` is kept."""
        leaf = receipt.leaf
        name = f"{leaf.session_id.hex()}-{leaf.span_start}-{leaf.span_end}-{leaf.step}"
        return self.config.evidence_dir(self.account.address) / f"{name}.safetensors"

    def flush_receipts(self) -> None:
        """Wait until every receipt handed to `keep_receipt` is in the ledger."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the swarm and close the ledger (receipts are flushed first). Idempotent."""
        if getattr(self, "closed", False):
            return
        self.closed = True
        started = time.perf_counter()
        try:
            self.flush_receipts()
        finally:
            self._writer.shutdown(wait=True)
            network: Network | None = getattr(self, "network", None)
            if network is not None:
                network.shutdown()
            if self.ledger is not None:
                self.ledger.close()
        logger.debug("client closed in %.2f s", time.perf_counter() - started)

    def __enter__(self) -> SwarmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
