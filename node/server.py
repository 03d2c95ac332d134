"""`Server`: one staked node of the swarm, from start to a clean exit.

    server = Server(config)
    server.run()     # blocks until SIGINT/SIGTERM (or `request_stop()`), then shuts down

Start: connect to the chain as the node's key and open its ledger (`<home>/node/<address>/`;
one left by an earlier chain under the same chain id, a restarted devnet, is set aside), join
(or start) the hivemind DHT with a stable libp2p identity, choose the span (given, or the
swarm's weakest window of `num_blocks`), load only those blocks, measure throughput (cached),
make sure the node is registered and staked on-chain for the span (idempotent), register the
RPC handlers, start the HTTP API and the scheduled jobs, and announce the span in the DHT.

Jobs (APScheduler, in the event loop; blocking work goes to threads): refresh the DHT records,
commit pending leaves (every `commit_interval` s, or at once when `commit_max_leaves` wait),
redeem vouchers, prune inputs past the challenge window, and (chosen spans only) move when the
swarm's bottleneck would clearly gain and no session is open.

Standing: the node serves only while the NodeRegistry counts it as active (`node.standing`).
It reads its standing before every DHT refresh and after any failed commit (a slashed node's
commits revert with `RegistryNodeInactive`). Once inactive it says so in the log, announces
itself OFFLINE, refuses new sessions, steps and vouchers with `node_inactive` (open sessions end
at their next step), commits nothing and moves nowhere; its `/status` shows `registry.active`
false. When its stake covers its span again (`stakeswarm chain node add-stake`) it is ONLINE
at the next refresh and commits what waited.

Ledger: a damaged ledger file stops the start (`ledger.db.engine.check_sqlite_ledger`); a new,
empty ledger for a node the chain shows registered and serving stops it too, unless
`--new-ledger` (`node.recovery`). A ledger failure in a job (a malformed page, a disk error)
makes the node unhealthy until restarted: `/health` answers 503 with the reason, it is announced
OFFLINE, and new sessions, steps and vouchers are refused (`node_inactive`: try another node).

Stop: every part `_serve` starts registers how it stops on one exit stack, and they stop in
the reverse order: refuse new work, announce OFFLINE, stop the periodic jobs, drain (remove the
RPC handlers, close the sessions, store the last leaves), settle (commit them, redeem every
outstanding voucher), then the HTTP API, P2P, the compute and ledger threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import torch
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from hivemind import DHT
from hivemind.p2p import P2P

from ledger.chain import Chain, ChainError
from ledger.contracts import Contracts
from ledger.db import (
    BatchStatus,
    Ledger,
    batches_with_status,
    commitment_counts,
    open_deployment_ledger,
    server_earnings,
    sqlite_url,
)
from ledger.db.engine import check_sqlite_ledger
from ledger.errors import LedgerDamagedError
from ledger.identity import load_identity
from ledger.types import BlockIndex, ModelId, Wei, model_id
from ledger.types import to_base_units as base_units
from node.announce import Announcer
from node.api import HttpApi, NodeMetrics, build_app
from node.balance import ChainClock, IncomingPayments, Redeemer
from node.blocks import Progress, Span, load_span
from node.cache import CacheManager
from node.challenges import ChallengeAnswerer
from node.commits import CommitsPending, Committer, InputStore, LeafWriter, Receipts, prune_inputs
from node.compute import PriorityExecutor
from node.config import ConfigError, NodeConfig
from node.families import load_config
from node.faults import make_fault
from node.handler import StakeswarmNode
from node.protocol import (
    RPC_FORWARD,
    RPC_INFERENCE,
    ErrorCode,
    InfoResponse,
    ServerInfo,
    ServerState,
)
from node.recovery import (
    LedgerHealth,
    LostLedgerError,
    check_new_ledger,
    is_ledger_failure,
    ledger_is_new,
    read_chain_history,
    set_aside_damaged,
    warn_if_stale,
)
from node.sessions import SessionManager, SpanViews
from node.standing import Standing, read_standing
from node.streams import add_readable_stream_handlers
from node.tensors import dtype_from_name
from node.throughput import choose_span, get_throughput, should_move

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ready:
    """What a started node tells its operator."""

    address: str
    peer_id: str
    maddrs: tuple[str, ...]  # multiaddrs others join the swarm with
    model: str
    span: tuple[int, int]
    throughput: float
    http_url: str | None


def to_base_units(tokens: Decimal, decimals: int, what: str) -> Wei:
    """`ledger.types.to_base_units`; `ConfigError` if it has too many decimals."""
    try:
        return base_units(tokens, decimals, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class RegistrationPlan:
    """The transactions that make the node's registration match what it serves."""

    register: bool  # first registration (with `add` = the whole stake)
    update_service: bool  # model, span, price or peer id changed
    add_stake: int  # Wei to add (before update_service when the new span needs it)


def plan_registration(
    *,
    registered: bool,
    current: tuple[bytes, int, int, int, bytes],  # model id, start, end, price, peer id
    wanted: tuple[bytes, int, int, int, bytes],
    stake: int,
    target_stake: int,
) -> RegistrationPlan:
    """Pure decision: what to send so that the registry shows `wanted` with at least
    `target_stake` staked. Nothing when it already does (a restart sends no transaction)."""
    if not registered:
        return RegistrationPlan(register=True, update_service=False, add_stake=target_stake)
    return RegistrationPlan(
        register=False,
        update_service=current != wanted,
        add_stake=max(0, target_stake - stake),
    )


class Server:
    """A node: see the module doc."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        progress: Callable[[int, int], None] | None = None,
        on_ready: Callable[[Ready], None] | None = None,
    ) -> None:
        self.config = config
        self.progress: Progress | None = progress
        self.on_ready = on_ready
        self.state = ServerState.JOINING
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dht: DHT | None = None
        self.ledger: Ledger | None = None
        self.api: HttpApi | None = None
        self.scheduler: AsyncIOScheduler | None = None  # the periodic jobs, once serving
        self.metrics = NodeMetrics()
        self._commit_lock = threading.Lock()
        self._redeem_lock = threading.Lock()
        self._leaves_since_commit = 0
        self.standing: Standing | None = None  # the registry's view, as last read
        self.ledger_health = LedgerHealth()  # the first ledger failure a job met
        self.fault = make_fault(config.faulty)  # a cheat mode (tests, demos); None: honest

    # --- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Start, serve until asked to stop, shut down. Raises on a failed start (after
        cleaning up what was started)."""
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self._connect()
            self._start_dht()
            asyncio.run(self._serve())
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.dht is not None:
                self.dht.shutdown()
            if self.ledger is not None:
                self.ledger.close()

    def request_stop(self) -> None:
        """Ask a running server to shut down (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _connect(self) -> None:
        config = self.config
        home = Path(config.home).expanduser().resolve()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        deployment, account = load_identity(config, role="node")
        self.deployment = deployment
        self.account = account
        self.address = account.address
        self.home = home
        self.dir = home / "node" / account.address
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.chain: Chain = deployment.connect(rpc_url=config.rpc_url)
        ledger_path = self.dir / "ledger.sqlite"
        if config.new_ledger and ledger_path.exists():
            try:
                check_sqlite_ledger(ledger_path)
            except LedgerDamagedError as exc:
                aside = set_aside_damaged(ledger_path)
                logger.warning(
                    "%s\n--new-ledger: moved it to %s; starting on a new ledger", exc, aside
                )
        existed = ledger_path.exists()
        # tied to this chain: a ledger from an earlier chain under the same id (a restarted
        # devnet) is set aside, with the inputs it indexed, and a fresh one started
        self.ledger = open_deployment_ledger(sqlite_url(ledger_path), self.chain, deployment)
        inputs = self.dir / "inputs"
        if self.ledger.set_aside is not None and inputs.exists():
            inputs.rename(inputs.with_name(f"inputs.{self.ledger.set_aside.stem}"))
        sender = self.chain.sender(account, journal=self.ledger.tx_journal())
        self.contracts = Contracts.from_deployment(self.chain, deployment, sender)
        decimals = self.contracts.token.decimals()
        history = read_chain_history(self.contracts, self.address, deployment.deploy_block)
        if not ledger_is_new(self.ledger):
            warn_if_stale(history, self.ledger, ledger_path=ledger_path, decimals=decimals)
        else:
            try:
                check_new_ledger(
                    history,
                    ledger_path=ledger_path,
                    address=self.address,
                    decimals=decimals,
                    allow=config.new_ledger,
                )
            except LostLedgerError:
                if not existed:  # leave no empty ledger where a backup is to be restored
                    self.ledger.close()
                    self.ledger = None
                    for suffix in ("", "-wal", "-shm"):
                        ledger_path.with_name(ledger_path.name + suffix).unlink(missing_ok=True)
                raise
        self.price_per_block = to_base_units(config.price, decimals, "price")
        self.credit = to_base_units(config.credit, decimals, "credit")
        self.redeem_min = to_base_units(config.redeem_min, decimals, "redeem_min")
        self.stake_wanted = (
            None if config.stake is None else to_base_units(config.stake, decimals, "stake")
        )
        self.model_name = config.name
        self.model_id: ModelId = model_id(self.model_name)
        self.model_config = load_config(config.model_path)
        self.total_blocks = int(self.model_config.num_hidden_layers)
        if config.blocks is not None and config.blocks[1] > self.total_blocks:
            raise ConfigError(
                f"blocks {config.blocks[0]}:{config.blocks[1]} exceed the model's "
                f"{self.total_blocks} blocks"
            )
        self.length = (
            config.blocks[1] - config.blocks[0]
            if config.blocks
            else min(config.num_blocks or self.total_blocks, self.total_blocks)
        )
        self.challenge_window = float(self.contracts.slasher.params().challenge_window)
        logger.info(
            "node %s on chain %d, ledger in %s", self.address, self.chain.chain_id, self.dir
        )

    def _start_dht(self) -> None:
        # The DHT runs in a forked process: start it before any thread of ours exists.
        config = self.config
        self.dht = DHT(
            initial_peers=list(config.initial_peers) or None,
            host_maddrs=list(config.host_maddrs),
            announce_maddrs=list(config.announce_maddrs) or None,
            identity_path=str(self.dir / "p2p.key"),
            start=True,
        )
        self.peer_id = self.dht.peer_id
        self.maddrs = tuple(str(m) for m in self.dht.get_visible_maddrs())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._stop.set)
        # Every part, once started, registers how it stops; the parts stop in the reverse
        # order, however the start or the serving ends: stop taking work, announce OFFLINE,
        # stop the jobs, drain (remove the RPC handlers, close the sessions, store the leaves),
        # settle (the last commit and redemption), then the HTTP API, P2P, compute and ledger
        # threads.
        async with contextlib.AsyncExitStack() as stops:
            stops.callback(logger.info, "node %s stopped", self.address)
            self._db = ThreadPoolExecutor(1, thread_name_prefix="ledger")
            stops.callback(self._db.shutdown, wait=True)
            # one compute thread, inference steps ahead of queued stateless forwards
            self._compute = PriorityExecutor("compute")
            stops.callback(self._compute.shutdown, wait=True)
            assert self.dht is not None
            p2p = await self.dht.replicate_p2p()
            stops.push_async_callback(p2p.shutdown)
            stops.push_async_callback(self._stop_api)  # started below, stopped after settling
            self.announcer = Announcer(
                self.dht, self.model_name, self.peer_id.to_base58(), ttl=self.config.announce_ttl
            )
            await self._load()
            await asyncio.to_thread(self._ensure_registered)
            handler = self._build_handler()
            stops.push_async_callback(self._settle)
            await self._check_standing()
            await handler.add_p2p_handlers(p2p)
            stops.push_async_callback(self._drain, handler, p2p)
            # the stream-input RPCs again, so that unreadable bytes get a BAD_REQUEST reply
            await add_readable_stream_handlers(
                p2p, {RPC_INFERENCE: handler.rpc_inference, RPC_FORWARD: handler.rpc_forward}
            )
            if self.config.http_port is not None:
                app = build_app(
                    status=self.status,
                    healthy=self.healthy,
                    metrics=self.metrics,
                    problem=self.health_problem,
                )
                self.api = HttpApi(app, self.config.http_host, self.config.http_port)
                await self.api.start()
            stops.push_async_callback(self._announce_offline)
            scheduler = self._schedule()
            stops.callback(scheduler.shutdown, wait=False)
            stops.callback(self._stop_taking_work, handler)
            self.state = self._serving_state()
            await self.announcer.announce(self.server_info())
            if self.on_ready is not None:
                self.on_ready(
                    Ready(
                        address=self.address,
                        peer_id=self.peer_id.to_base58(),
                        maddrs=self.maddrs,
                        model=self.model_name,
                        span=(self.span.start, self.span.end),
                        throughput=self.throughput,
                        http_url=self.api.url if self.api else None,
                    )
                )
            logger.info(
                "serving %s blocks [%d, %d) as %s",
                self.model_name,
                *self._span_tuple(),
                self.address,
            )
            await self._stop.wait()
            logger.info("shutting down")

    # --- stopping, in the order `_serve` registers it (reversed) ----------------------------

    def _stop_taking_work(self, handler: StakeswarmNode) -> None:
        self.state = ServerState.OFFLINE
        handler.accepting = False  # what still arrives is refused with shutting_down

    async def _announce_offline(self) -> None:
        try:
            await asyncio.wait_for(self.announcer.announce(self.server_info()), 10)
        except Exception as exc:  # the swarm may be gone already; records expire anyway
            logger.warning("could not announce OFFLINE: %s", exc)

    async def _drain(self, handler: StakeswarmNode, p2p: P2P) -> None:
        """No new streams, every session's cache freed, every served leaf stored."""
        try:
            await handler.remove_p2p_handlers(p2p)
        except Exception as exc:
            logger.warning("could not remove the RPC handlers: %s", exc)
        self.sessions.close_all()
        await self.writer.flush()

    async def _settle(self) -> None:
        """The last commit and redemption: what the node served is committed and paid."""
        if self.config.commitments and self._active():
            try:
                await asyncio.to_thread(self._commit)
            except Exception:
                logger.exception("final commit failed; the leaves stay pending in the ledger")
        elif self.config.commitments:
            logger.warning(
                "not active in the NodeRegistry: pending leaves stay in the ledger uncommitted"
            )
        try:
            await asyncio.to_thread(self._redeem, True)
        except Exception:
            logger.exception("final redemption failed; the vouchers stay in the ledger")

    async def _stop_api(self) -> None:
        if self.api is not None:
            await self.api.stop()

    # --- span ------------------------------------------------------------------------------

    def _span_tuple(self) -> tuple[int, int]:
        return (self.span.start, self.span.end)

    async def _load(self) -> None:
        config = self.config
        if config.blocks is not None:
            start, end = config.blocks
        else:
            swarm = await self.announcer.swarm(self.total_blocks)
            others = [
                (s.info.span_start, s.info.span_end, s.info.throughput)
                for s in swarm
                if s.peer_id != self.peer_id.to_base58()
            ]
            start, end = choose_span(self.total_blocks, others, self.length)
            logger.info("chose blocks [%d, %d) of %d from the swarm", start, end, self.total_blocks)
        dtype = dtype_from_name(config.dtype)
        self.span = await asyncio.to_thread(
            load_span, config.model_path, start, end, dtype, self.progress
        )
        if self.fault is not None:
            self.span = self.fault.prepare(self.span)
        self.views = SpanViews(self.span)
        measured = await asyncio.to_thread(
            get_throughput,
            self.span,
            self.model_name,
            self.home / "cache",
            steps=config.throughput_steps,
        )
        self.throughput = measured.tokens_per_s

    def _ensure_registered(self) -> None:
        registry = self.contracts.node_registry
        start, end = self._span_tuple()
        node = registry.get_node(self.address)
        required = registry.required_stake(start, end)
        target = max(required, self.stake_wanted or 0)
        peer = self.peer_id.to_bytes()
        wanted = (self.model_id, start, end, self.price_per_block, peer)
        current = (
            node.model_id,
            node.span_start,
            node.span_end,
            node.price_per_token_per_block,
            node.peer_id,
        )
        plan = plan_registration(
            registered=node.registered,
            current=current,
            wanted=wanted,
            stake=node.stake,
            target_stake=target,
        )
        if plan.register:
            registry.register_with_approve(
                self.model_id,
                BlockIndex(start),
                BlockIndex(end),
                self.price_per_block,
                peer,
                Wei(target),
            )
            logger.info("registered for blocks [%d, %d) with stake %d", start, end, target)
            return
        if plan.add_stake:
            registry.add_stake_with_approve(Wei(plan.add_stake))
            logger.info("added %d to the stake", plan.add_stake)
        if plan.update_service:
            registry.update_service(
                self.model_id, BlockIndex(start), BlockIndex(end), self.price_per_block, peer
            )
            logger.info("updated the registration to blocks [%d, %d)", start, end)

    # --- components ------------------------------------------------------------------------

    def _build_handler(self) -> StakeswarmNode:
        config = self.config
        assert self.ledger is not None
        self.caches = CacheManager(config.cache_tokens)
        self.sessions = SessionManager(self.caches, self.ledger)
        self.clock = ChainClock(self.chain.timestamp)
        self.clock.refresh()
        channels = self.contracts.payment_channels
        self.payments = IncomingPayments(
            channels,
            self.ledger,
            node=self.address,
            chain_id=self.chain.chain_id,
            credit=self.credit,
            min_life=config.channel_min_life,
            cache_ttl=config.channel_cache_ttl,
            clock=self.clock,
            db_executor=self._db,
        )
        self.receipts = Receipts(
            domain=self.contracts.slasher.domain(),
            account=self.account,
            model_id=self.model_id,
            enabled=config.commitments,
            # the chain's time: the receipt's commit deadline is checked on-chain
            clock=self.clock.now,
        )
        self.store = InputStore(self.dir / "inputs")
        self.writer = LeafWriter(self.ledger, self.store, self._db)
        self.committer: CommitsPending = Committer(
            self.ledger,
            self.contracts.commitments,
            node=self.address,
            model_id=self.model_id,
            max_leaves=config.commit_max_leaves,
        )
        if self.fault is not None:
            self.committer = self.fault.committer(self.committer)
            self.receipts = self.fault.receipts(self.receipts)
        self.answerer = ChallengeAnswerer(
            self.chain,
            self.ledger,
            self.contracts.slasher,
            self.contracts.commitments,
            node=self.address,
            from_block=self.deployment.deploy_block,
        )
        self.redeemer = Redeemer(
            channels,
            self.ledger,
            chain_id=self.chain.chain_id,
            min_amount=self.redeem_min,
            margin=config.redeem_margin,
            clock=self.clock,
        )
        self.handler = StakeswarmNode(
            address=self.address,
            spans=self.views,
            price_per_block=self.price_per_block,
            sessions=self.sessions,
            payments=self.payments,
            receipts=self.receipts,
            writer=self.writer,
            store=self.store,
            ledger=self.ledger,
            verifiers=self.contracts.verifier_registry,
            compute=self._compute,
            metrics=self.metrics,
            info=self.info_response,
            idle_timeout=config.session_idle_timeout,
            open_timeout=config.session_open_timeout,
            max_frame_bytes=config.max_frame_bytes,
            max_forward_tokens=config.max_forward_tokens,
            max_incoming_bytes=config.max_incoming_bytes,
            reveal_max_age=config.reveal_max_age,
            on_leaf=self._on_leaf,
            fault=self.fault,
        )
        return self.handler

    def _schedule(self) -> AsyncIOScheduler:
        config = self.config
        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        scheduler.add_job(self._announce_job, "interval", seconds=config.announce_interval)
        scheduler.add_job(self._redeem_job, "interval", seconds=config.redeem_interval)
        if config.commitments:
            scheduler.add_job(
                self._commit_job, "interval", seconds=config.commit_interval, id="commit"
            )
            scheduler.add_job(self._prune_job, "interval", seconds=config.prune_interval)
            scheduler.add_job(
                self._challenge_job,
                "interval",
                seconds=config.challenge_poll_interval,
                next_run_time=datetime.now(UTC),
            )
        if config.blocks is None:
            scheduler.add_job(self._rebalance_job, "interval", seconds=config.rebalance_interval)
        scheduler.start()
        self.scheduler = scheduler
        return scheduler

    # --- jobs ------------------------------------------------------------------------------

    def _on_leaf(self) -> None:
        self._leaves_since_commit += 1
        if self._leaves_since_commit >= self.config.commit_max_leaves:
            self._leaves_since_commit = 0
            self._commit_soon()

    def _commit_soon(self) -> None:
        job = self.scheduler.get_job("commit") if self.scheduler is not None else None
        if job is not None:
            job.modify(next_run_time=datetime.now(job.trigger.timezone))

    async def _announce_job(self) -> None:
        await self._check_standing()
        try:
            await self.announcer.announce(self.server_info())
        except Exception as exc:
            logger.warning("DHT refresh failed: %s", exc)

    # --- standing in the registry ----------------------------------------------------------

    def _active(self) -> bool:
        """Whether the registry counted this node as active when last read."""
        return self.standing is None or self.standing.active

    def _serving_state(self) -> ServerState:
        ok = self._active() and self.ledger_health.ok
        return ServerState.ONLINE if ok else ServerState.OFFLINE

    async def _check_standing(self) -> None:
        """Read this node's standing in the NodeRegistry; stop or resume serving if it changed.
        A chain that cannot be read changes nothing (the last reading stands)."""
        try:
            standing = await asyncio.to_thread(
                read_standing, self.contracts.node_registry, self.address
            )
        except (ChainError, OSError) as exc:
            logger.warning("cannot read this node's standing in the NodeRegistry: %s", exc)
            return
        await self._apply_standing(standing)

    async def _apply_standing(self, standing: Standing) -> None:
        before, self.standing = self.standing, standing
        self.metrics.active.set(1 if standing.active else 0)
        if before is not None and before.active == standing.active:
            return
        problem = standing.problem()
        if problem is not None:
            logger.error(
                "node %s is not active in the NodeRegistry: %s. Not serving until it is: new "
                "sessions, steps and vouchers are refused (%s), open sessions end at their next "
                "step, and the node is announced OFFLINE",
                self.address,
                problem,
                ErrorCode.NODE_INACTIVE.value,
            )
            self.payments.suspend(
                f"node {self.address} is not active in the NodeRegistry: {problem}"
            )
        else:
            if before is not None:
                logger.info(
                    "node %s is active in the NodeRegistry again (stake %d covers the %d its "
                    "blocks need): serving",
                    self.address,
                    standing.stake,
                    standing.required,
                )
            if self.ledger_health.ok:  # a failed ledger keeps the node from taking work
                self.payments.resume()
        stopping = self._stop is not None and self._stop.is_set()
        if before is None or stopping or self.state == ServerState.JOINING:
            return  # starting (announced once ready), stopping, or moving (announced once moved)
        self.state = self._serving_state()
        try:
            await self.announcer.announce(self.server_info())
        except Exception as exc:
            logger.warning("DHT refresh failed: %s", exc)
        if standing.active:
            self._commit_soon()  # what waited while inactive

    def _failed_batches(self) -> int:
        assert self.ledger is not None
        with self.ledger.begin() as db:
            failed = batches_with_status(db, BatchStatus.FAILED)
            return sum(1 for batch in failed if batch.model_id == self.model_id)

    def _commit(self) -> list[int]:
        with self._commit_lock:
            committed = self.committer.commit_pending()
        self.metrics.commits.inc(len(committed))
        return committed

    async def _job_failed(self, job: str, exc: Exception) -> None:
        """Log `job`'s failure; a ledger failure also makes the node unhealthy: it refuses new
        sessions, steps and vouchers (retryable elsewhere) and is announced OFFLINE."""
        first = self.ledger_health.ok
        if not self.ledger_health.record(job, exc):
            logger.error("%s job failed", job, exc_info=exc)
            return
        if not first:
            logger.error("%s job failed: the ledger still fails: %s", job, exc)
            return
        failure = self.ledger_health.failure
        logger.error(
            "LEDGER FAILURE: %s. The node cannot record what it is owed or what it commits, so "
            "it takes no more work: /health answers 503, it is announced OFFLINE, and new "
            "sessions, steps and vouchers are refused (%s). Stop it, then restart it: the "
            "ledger is checked at start; if it is damaged, restore it from a backup or start "
            "with --new-ledger (see docs/operator.md, 'Crashes and backups')",
            failure,
            ErrorCode.NODE_INACTIVE.value,
            exc_info=exc,
        )
        self.payments.suspend(
            f"node {self.address} cannot use its ledger and takes no work now: try another node"
        )
        self.state = ServerState.OFFLINE
        try:
            await self.announcer.announce(self.server_info())
        except Exception as announce_exc:
            logger.warning("DHT refresh failed: %s", announce_exc)

    def health_problem(self) -> str | None:
        """Why `/health` fails, None while the node serves."""
        if not self.ledger_health.ok:
            return self.ledger_health.failure
        if self.state != ServerState.ONLINE:
            return f"the node is {self.state.name.lower()}"
        return None

    async def _commit_job(self) -> None:
        if not self._active() or not self.ledger_health.ok:
            return  # the registry takes no commits from an inactive node: the leaves wait
        try:
            await self.writer.flush()
            await asyncio.to_thread(self._commit)
            failed = await asyncio.to_thread(self._failed_batches)
        except Exception as exc:
            await self._job_failed("commit", exc)
            return
        if failed:
            # e.g. RegistryNodeInactive: a slash took the stake below what the span needs
            await self._check_standing()

    def _redeem(self, everything: bool = False) -> None:
        with self._redeem_lock:
            done = self.redeemer.redeem_due(everything=everything)
        self.metrics.redeems.inc(len(done))

    async def _redeem_job(self) -> None:
        try:
            await asyncio.to_thread(self._redeem)
        except Exception as exc:
            await self._job_failed("redeem", exc)

    async def _challenge_job(self) -> None:
        try:
            await asyncio.to_thread(self.clock.refresh)  # receipts are stamped with chain time
            answered = await asyncio.to_thread(self.answerer.answer_open)
        except Exception as exc:
            await self._job_failed("challenge", exc)
            return
        self.metrics.challenges_answered.inc(len(answered))

    async def _prune_job(self) -> None:
        assert self.ledger is not None
        try:
            await asyncio.to_thread(
                prune_inputs, self.ledger, self.store, challenge_window=self.challenge_window
            )
        except Exception as exc:
            await self._job_failed("prune", exc)

    async def _rebalance_job(self) -> None:
        try:
            await self.rebalance()
        except Exception:
            logger.exception("rebalancing failed")

    async def rebalance(self) -> bool:
        """Move the span if the swarm's bottleneck would clearly gain and no session is open
        (reloading only blocks not already loaded). True if it moved."""
        if len(self.sessions) or not self._active():
            return False
        me = self.peer_id.to_base58()
        swarm = await self.announcer.swarm(self.total_blocks)
        others = [
            (s.info.span_start, s.info.span_end, s.info.throughput)
            for s in swarm
            if s.peer_id != me
        ]
        mine = (self.span.start, self.span.end, self.throughput)
        if not should_move(self.total_blocks, others, mine):
            return False
        start, end = choose_span(self.total_blocks, others, self.length)
        self.handler.accepting = False
        try:
            if len(self.sessions):
                return False
            old = self.span
            logger.info("moving from blocks [%d, %d) to [%d, %d)", old.start, old.end, start, end)
            self.state = ServerState.JOINING
            await self.announcer.announce(self.server_info(), ttl=self.config.announce_interval)
            self.span = await asyncio.to_thread(
                move_span, self.config.model_path, old, start, end, self.progress
            )
            self.views = SpanViews(self.span)
            self.handler.spans = self.views
            await asyncio.to_thread(self._ensure_registered)
            self.state = self._serving_state()
            await self.announcer.announce(self.server_info())
            return True
        finally:
            self.handler.accepting = True

    # --- what the node tells others --------------------------------------------------------

    def server_info(self) -> ServerInfo:
        return ServerInfo(
            state=self.state,
            span_start=self.span.start,
            span_end=self.span.end,
            throughput=float(self.throughput),
            price_per_token_per_block=self.price_per_block,
            eth_address=self.address,
            dtype=self.config.dtype,
            cache_tokens_left=self.caches.tokens_left,
            credit_window=self.credit,
            http_port=self.api.port if self.api else 0,
        )

    def info_response(self) -> InfoResponse:
        return InfoResponse(
            model=self.model_name,
            peer_id=self.peer_id.to_base58(),
            total_blocks=self.total_blocks,
            server=self.server_info(),
        )

    def healthy(self) -> bool:
        return self.health_problem() is None

    def status(self) -> dict[str, Any]:
        """The `/status` document (reads the ledger: call from a worker thread). Amounts are
        decimal strings of token base units."""
        assert self.ledger is not None
        try:
            with self.ledger.begin() as db:
                earnings = server_earnings(
                    db, self.chain.chain_id, self.contracts.payment_channels.address
                )
                counts = commitment_counts(db)
        except Exception as exc:
            if not is_ledger_failure(exc):
                raise
            # what the node can still say without its ledger
            return {
                "state": self.state.name.lower(),
                "address": self.address,
                "ledger": {"ok": False, "failure": self.ledger_health.failure or str(exc)},
                "time": time.time(),
            }
        return {
            "state": self.state.name.lower(),
            "ledger": {"ok": self.ledger_health.ok, "failure": self.ledger_health.failure},
            "registry": self.standing.to_json() if self.standing else None,
            "address": self.address,
            "peer_id": self.peer_id.to_base58(),
            "maddrs": list(self.maddrs),
            "model": self.model_name,
            "model_id": "0x" + self.model_id.hex(),
            "total_blocks": self.total_blocks,
            "span": [self.span.start, self.span.end],
            "dtype": self.config.dtype,
            "throughput": self.throughput,
            "price_per_token_per_block": str(self.price_per_block),
            "price_per_token": str(self.price_per_block * (self.span.end - self.span.start)),
            "credit_window": str(self.credit),
            "sessions": len(self.sessions),
            "cache": {
                "tokens_total": self.caches.max_tokens,
                "tokens_used": self.caches.tokens_in_use,
                "tokens_left": self.caches.tokens_left,
            },
            "earnings": {
                "redeemed": str(earnings.redeemed),
                "unredeemed": str(earnings.unredeemed),
                "channels": earnings.channels,
            },
            "commitments": {
                "enabled": self.config.commitments,
                "pending_leaves": counts.pending_leaves + self.writer.queued,
                "committed_leaves": counts.committed_leaves,
                "committed_batches": counts.committed_batches,
                "failed_batches": counts.failed_batches,
            },
            "time": time.time(),
        }


def move_span(
    model_path: Path, old: Span, start: int, end: int, progress: Progress | None = None
) -> Span:
    """The span `[start, end)` of the same model, reusing the layers `old` already holds and
    loading only the others from disk."""
    keep = {i: old.layers[i - old.start] for i in range(max(start, old.start), min(end, old.end))}
    layers: list[torch.nn.Module] = []
    i = start
    while i < end:
        if i in keep:
            layers.append(keep[i])
            i += 1
            continue
        j = i
        while j < end and j not in keep:
            j += 1
        part = load_span(model_path, i, j, old.dtype, progress, device=old.device)
        layers.extend(part.layers)
        i = j
    return Span(
        old.config,
        old.family,
        start,
        end,
        torch.nn.ModuleList(layers),
        old.rotary,
        old.dtype,
        old.device,
    )


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
