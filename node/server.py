"""`Server`: one staked node of the swarm, from start to a clean exit.

    server = Server(config)
    server.run()     # blocks until SIGINT/SIGTERM (or `request_stop()`), then shuts down

How it is built and stopped is `node.build` (its module doc shows the order); `Server` is the
node at run time: it starts the parts under a `node.host.ServiceHost`, runs its periodic jobs,
follows its standing in the registry and the health of its ledger, and tells others what it
serves (`server_info`, `/status`).

Jobs (the host's scheduler, in the event loop; blocking work goes to threads): refresh the DHT
records, rank the node as a client would route (`node.rank`: in `/status`, and in the log when
it changes or when no route chose the node for a while), commit pending leaves (every `commit_interval` s, or at once when `commit_max_leaves`
wait), redeem vouchers, answer receipt challenges, prune inputs past the challenge window, and
(chosen spans only) move when the swarm's bottleneck would clearly gain and no session is open.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ledger.chain import ChainError
from ledger.db import BatchStatus, batches_with_status, commitment_counts, server_earnings
from node.api import build_app
from node.blocks import Progress, move_span
from node.build import (
    HONEST,
    Callbacks,
    NodeBase,
    NodeParts,
    Wrapping,
    build_node,
    connect_node,
    rebuild_span,
    serve_rpcs,
)
from node.commits import prune_inputs
from node.config import NodeConfig
from node.device import device_memory, device_name
from node.host import HostConfig, PeriodicJob, ServiceHost
from node.precisions import precision_name
from node.protocol import ErrorCode, InfoResponse, ServerInfo, ServerState
from node.rank import RankLog, RouteCounts, RouteRank, rank_node, route_counts
from node.recovery import LedgerHealth, is_ledger_failure
from node.registration import ensure_registered
from node.standing import Standing, read_standing
from node.throughput import choose_span, should_move

logger = logging.getLogger(__name__)

ROUTES_WINDOW = timedelta(hours=1)  # `/status` counts the routes of the last hour


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Ready:
    """What a started node tells its operator."""

    address: str
    peer_id: str
    maddrs: tuple[str, ...]  # multiaddrs others join the swarm with
    model: str
    span: tuple[int, int]
    device: str  # where it computes: cpu, cuda:0
    dtype: str  # the precision it serves in: bfloat16, bfloat16+int8
    throughput: float
    http_url: str | None


class Server:
    """A node: see the module doc."""

    base: NodeBase  # connected in `run`, before the host starts
    parts: NodeParts  # built in `start`; replaced, never changed, when the span moves

    def __init__(
        self,
        config: NodeConfig,
        *,
        wrapping: Wrapping = HONEST,
        progress: Callable[[int, int], None] | None = None,
        on_ready: Callable[[Ready], None] | None = None,
    ) -> None:
        self.config = config
        self.wrapping = wrapping  # the parts' wrappers: unchanged unless a cheat or a benchmark
        self.progress: Progress | None = progress
        self.on_ready = on_ready
        self.state = ServerState.JOINING
        self._host: ServiceHost | None = None
        self._jobs: AsyncIOScheduler | None = None  # the periodic jobs, once serving
        self._commit_lock = threading.Lock()
        self._redeem_lock = threading.Lock()
        self._leaves_since_commit = 0
        self.standing: Standing | None = None  # the registry's view, as last read
        self.rank: RouteRank | None = None  # how clients rank this node, as last worked out
        self._rank_log: RankLog | None = None  # set once serving
        self.ledger_health = LedgerHealth()  # the first ledger failure a job met

    # --- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Start, serve until asked to stop, shut down. Raises on a failed start (after
        stopping what was started)."""
        with contextlib.ExitStack() as closing:
            self.base = connect_node(self.config, closing)
            config = self.config
            self._host = ServiceHost(
                HostConfig(
                    identity_path=str(self.base.dir / "p2p.key"),
                    initial_peers=config.initial_peers,
                    host_maddrs=config.host_maddrs,
                    announce_maddrs=config.announce_maddrs,
                    name=f"node {self.base.address}",
                )
            )
            self._host.run(self.start)

    def request_stop(self) -> None:
        """Ask a running server to shut down (thread-safe)."""
        if self._host is not None:
            self._host.request_stop()

    async def start(self, host: ServiceHost) -> None:
        """Build the parts and start serving; every started part registers how it stops on
        the host's exit stack (the order: `node.build`'s module doc)."""
        base, config = self.base, self.config
        self.peer_id = host.peer_id
        self.maddrs = host.maddrs
        callbacks = Callbacks(info=self.info_response, on_leaf=self._on_leaf)
        self.parts = await build_node(
            base, host, callbacks, wrapping=self.wrapping, progress=self.progress
        )
        await asyncio.to_thread(self._ensure_registered)
        host.stops.push_async_callback(self._settle)
        await self._check_standing()
        await serve_rpcs(host.p2p, self.parts.handler)
        host.stops.push_async_callback(self._drain)
        api = None
        device = base.plan.device
        self.parts.metrics.watch_device(
            device_name(device),
            precision_name(base.plan.dtype, base.plan.quantization),
            lambda: device_memory(device),
        )
        if config.http_port is not None:
            app = build_app(
                status=self.status,
                healthy=self.healthy,
                metrics=self.parts.metrics,
                problem=self.health_problem,
            )
            api = await host.serve_api(app, config.http_host, config.http_port)
        host.stops.push_async_callback(self._announce_offline)
        self._rank_log = RankLog(started_at=datetime.now(UTC))
        self._jobs = host.start_jobs(self._periodic_jobs())
        host.stops.callback(self._stop_taking_work)
        self.state = self._serving_state()
        await self.parts.announcer.announce(self.server_info())
        span = self.parts.span
        if self.on_ready is not None:
            self.on_ready(
                Ready(
                    address=base.address,
                    peer_id=self.peer_id.to_base58(),
                    maddrs=self.maddrs,
                    model=base.model_name,
                    span=(span.start, span.end),
                    device=device_name(device),
                    dtype=precision_name(base.plan.dtype, base.plan.quantization),
                    throughput=self.parts.throughput,
                    http_url=api.url if api else None,
                )
            )
        logger.info(
            "serving %s blocks [%d, %d) as %s", base.model_name, span.start, span.end, base.address
        )

    def _periodic_jobs(self) -> list[PeriodicJob]:
        config = self.config
        jobs = [
            PeriodicJob(self._announce_job, config.announce_interval),
            PeriodicJob(self._rank_job, config.announce_interval),
            PeriodicJob(self._redeem_job, config.redeem_interval),
            PeriodicJob(self._commit_job, config.commit_interval, id="commit"),
            PeriodicJob(self._prune_job, config.prune_interval),
            PeriodicJob(self._challenge_job, config.challenge_poll_interval, now=True),
        ]
        if config.blocks is None:
            jobs.append(PeriodicJob(self._rebalance_job, config.rebalance_interval))
        return jobs

    # --- stopping, in the order `_serve` registers it (reversed) ----------------------------

    def _stop_taking_work(self) -> None:
        self.state = ServerState.OFFLINE
        self.parts.handler.accepting = False  # what still arrives is refused: shutting_down

    async def _announce_offline(self) -> None:
        try:
            await asyncio.wait_for(self.parts.announcer.announce(self.server_info()), 10)
        except Exception as exc:  # the swarm may be gone already; records expire anyway
            logger.warning("could not announce OFFLINE: %s", exc)

    async def _drain(self) -> None:
        """No new streams, every session's cache freed, every served leaf stored."""
        try:
            await self.parts.handler.remove_p2p_handlers(self._serving_host().p2p)
        except Exception as exc:
            logger.warning("could not remove the RPC handlers: %s", exc)
        self.parts.sessions.close_all()
        await self.parts.writer.flush()

    async def _settle(self) -> None:
        """The last commit and redemption: what the node served is committed and paid."""
        if self._active():
            try:
                await asyncio.to_thread(self._commit)
            except Exception:
                logger.exception("final commit failed; the leaves stay pending in the ledger")
        else:
            logger.warning(
                "not active in the NodeRegistry: pending leaves stay in the ledger uncommitted"
            )
        try:
            await asyncio.to_thread(self._redeem, True)
        except Exception:
            logger.exception("final redemption failed; the vouchers stay in the ledger")

    def _serving_host(self) -> ServiceHost:
        if self._host is None:
            raise RuntimeError("the node is not running")
        return self._host

    # --- registration --------------------------------------------------------------------

    def _ensure_registered(self) -> None:
        span = self.parts.span
        ensure_registered(
            self.base.contracts.node_registry,
            address=self.base.address,
            model_id=self.base.model_id,
            span=(span.start, span.end),
            price_per_block=self.base.price_per_block,
            peer=self.peer_id.to_bytes(),
            stake_wanted=self.base.stake_wanted,
        )

    # --- jobs ------------------------------------------------------------------------------

    def _on_leaf(self) -> None:
        self._leaves_since_commit += 1
        if self._leaves_since_commit >= self.config.commit_max_leaves:
            self._leaves_since_commit = 0
            self._commit_soon()

    def _commit_soon(self) -> None:
        job = self._jobs.get_job("commit") if self._jobs is not None else None
        if job is not None:
            job.modify(next_run_time=datetime.now(job.trigger.timezone))

    async def _announce_job(self) -> None:
        await self._check_standing()
        try:
            await self.parts.announcer.announce(self.server_info())
        except Exception as exc:
            logger.warning("DHT refresh failed: %s", exc)

    async def _rank_job(self) -> None:
        """Work out how a client ranks this node among the servers of its blocks
        (`node.rank`); log it when it changes, and why when no route chose the node for a while."""
        if self.state != ServerState.ONLINE or self._rank_log is None:
            return
        try:
            swarm = await self.parts.announcer.swarm(self.base.total_blocks)
        except Exception as exc:
            logger.warning("cannot read the swarm to rank this node: %s", exc)
            return
        self.rank = rank = rank_node(
            self.peer_id.to_base58(),
            self.server_info(),
            [(server.peer_id, server.info) for server in swarm],
            self.base.total_blocks,
        )
        try:
            counts = await asyncio.to_thread(self._route_counts)
        except Exception as exc:
            await self._job_failed("rank", exc)
            return
        for line in self._rank_log.messages(rank.describe(self.base.units), counts, _utcnow()):
            logger.info("%s", line)

    def _route_counts(self) -> RouteCounts:
        with self.base.ledger.begin() as db:
            return route_counts(db, since=_utcnow() - ROUTES_WINDOW)

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
                read_standing, self.base.contracts.node_registry, self.base.address
            )
        except (ChainError, OSError) as exc:
            logger.warning("cannot read this node's standing in the NodeRegistry: %s", exc)
            return
        await self._apply_standing(standing)

    async def _apply_standing(self, standing: Standing) -> None:
        before, self.standing = self.standing, standing
        self.parts.metrics.active.set(1 if standing.active else 0)
        if before is not None and before.active == standing.active:
            return
        problem = standing.problem()
        if problem is not None:
            logger.error(
                "node %s is not active in the NodeRegistry: %s. Not serving until it is: new "
                "sessions, steps and vouchers are refused (%s), open sessions end at their next "
                "step, and the node is announced OFFLINE",
                self.base.address,
                problem,
                ErrorCode.NODE_INACTIVE.value,
            )
            self.parts.payments.suspend(
                f"node {self.base.address} is not active in the NodeRegistry: {problem}"
            )
        else:
            if before is not None:
                logger.info(
                    "node %s is active in the NodeRegistry again (stake %s covers the %s its "
                    "blocks need): serving",
                    self.base.address,
                    self.base.units.show(standing.stake),
                    self.base.units.show(standing.required),
                )
            if self.ledger_health.ok:  # a failed ledger keeps the node from taking work
                self.parts.payments.resume()
        stopping = self._host is not None and self._host.stopping
        if before is None or stopping or self.state == ServerState.JOINING:
            return  # starting (announced once ready), stopping, or moving (announced once moved)
        self.state = self._serving_state()
        try:
            await self.parts.announcer.announce(self.server_info())
        except Exception as exc:
            logger.warning("DHT refresh failed: %s", exc)
        if standing.active:
            self._commit_soon()  # what waited while inactive

    def _failed_batches(self) -> int:
        with self.base.ledger.begin() as db:
            failed = batches_with_status(db, BatchStatus.FAILED)
            return sum(1 for batch in failed if batch.model_id == self.base.model_id)

    def _commit(self) -> list[int]:
        with self._commit_lock:
            committed = self.parts.committer.commit_pending()
        self.parts.metrics.commits.inc(len(committed))
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
        self.parts.payments.suspend(
            f"node {self.base.address} cannot use its ledger and takes no work now: try another node"
        )
        self.state = ServerState.OFFLINE
        try:
            await self.parts.announcer.announce(self.server_info())
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
            await self.parts.writer.flush()
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
            done = self.parts.redeemer.redeem_due(everything=everything)
        self.parts.metrics.redeems.inc(len(done))

    async def _redeem_job(self) -> None:
        try:
            await asyncio.to_thread(self._redeem)
        except Exception as exc:
            await self._job_failed("redeem", exc)

    async def _challenge_job(self) -> None:
        try:
            await asyncio.to_thread(
                self.parts.clock.refresh
            )  # receipts are stamped with chain time
            answered = await asyncio.to_thread(self.parts.answerer.answer_open)
        except Exception as exc:
            await self._job_failed("challenge", exc)
            return
        self.parts.metrics.challenges_answered.inc(len(answered))

    async def _prune_job(self) -> None:
        try:
            await asyncio.to_thread(
                prune_inputs,
                self.base.ledger,
                self.parts.store,
                challenge_window=self.base.challenge_window,
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
        if len(self.parts.sessions) or not self._active():
            return False
        me = self.peer_id.to_base58()
        swarm = await self.parts.announcer.swarm(self.base.total_blocks)
        others = [
            (s.info.span_start, s.info.span_end, s.info.throughput)
            for s in swarm
            if s.peer_id != me
        ]
        mine = (self.parts.span.start, self.parts.span.end, self.parts.throughput)
        if not should_move(self.base.total_blocks, others, mine):
            return False
        start, end = choose_span(self.base.total_blocks, others, self.base.length)
        old = self.parts
        old.handler.accepting = False
        try:
            if len(old.sessions):
                return False
            logger.info(
                "moving from blocks [%d, %d) to [%d, %d)", old.span.start, old.span.end, start, end
            )
            self.state = ServerState.JOINING
            await old.announcer.announce(self.server_info(), ttl=self.config.announce_interval)
            span = await asyncio.to_thread(
                move_span, self.config.model_path, old.span, start, end, self.progress
            )
            # new span views and a new handler over them, in place of the old handler's RPCs
            self.parts = rebuild_span(self.base, old, span)
            p2p = self._serving_host().p2p
            await old.handler.remove_p2p_handlers(p2p)
            await serve_rpcs(p2p, self.parts.handler)
            await asyncio.to_thread(self._ensure_registered)
            self.state = self._serving_state()
            await self.parts.announcer.announce(self.server_info())
            return True
        finally:
            old.handler.accepting = self.parts is old  # the old handler serves on, or never again

    # --- what the node tells others --------------------------------------------------------

    def server_info(self) -> ServerInfo:
        return ServerInfo(
            state=self.state,
            span_start=self.parts.span.start,
            span_end=self.parts.span.end,
            throughput=float(self.parts.throughput),
            price_per_token_per_block=self.base.price_per_block,
            backward_price_per_token_per_block=self.base.backward_price_per_block,
            eth_address=self.base.address,
            dtype=self.base.plan.dtype,
            quantization=self.base.plan.quantization,
            cache_tokens_left=self.parts.caches.tokens_left,
            credit_window=self.base.credit,
            http_port=self._api_port(),
        )

    def _api_port(self) -> int:
        api = self._host.api if self._host is not None else None
        return api.port if api is not None else 0

    def info_response(self) -> InfoResponse:
        return InfoResponse(
            model=self.base.model_name,
            peer_id=self.peer_id.to_base58(),
            total_blocks=self.base.total_blocks,
            server=self.server_info(),
        )

    def healthy(self) -> bool:
        return self.health_problem() is None

    def status(self) -> dict[str, Any]:
        """The `/status` document (reads the ledger: call from a worker thread). Amounts are
        readable text (`"0.25 SWARM"`) beside their exact token base units in fields named
        `..._base_units`; the older top-level `price_per_token_per_block`, `price_per_token` and
        `credit_window` stay base units (decimal strings), for scripts that read them."""
        try:
            with self.base.ledger.begin() as db:
                earnings = server_earnings(
                    db, self.base.chain.chain_id, self.base.contracts.payment_channels.address
                )
                counts = commitment_counts(db)
                routes = route_counts(db, since=_utcnow() - ROUTES_WINDOW)
        except Exception as exc:
            if not is_ledger_failure(exc):
                raise
            # what the node can still say without its ledger
            return {
                "state": self.state.name.lower(),
                "address": self.base.address,
                "ledger": {"ok": False, "failure": self.ledger_health.failure or str(exc)},
                "time": time.time(),
            }
        units = self.base.units
        span_length = self.parts.span.end - self.parts.span.start
        price_per_token = self.base.price_per_block * span_length
        standing = self.standing
        return {
            "state": self.state.name.lower(),
            "ledger": {"ok": self.ledger_health.ok, "failure": self.ledger_health.failure},
            "registry": self.standing.to_json() if self.standing else None,
            "address": self.base.address,
            "peer_id": self.peer_id.to_base58(),
            "maddrs": list(self.maddrs),
            "model": self.base.model_name,
            "model_id": "0x" + self.base.model_id.hex(),
            "total_blocks": self.base.total_blocks,
            "span": [self.parts.span.start, self.parts.span.end],
            "dtype": self.base.plan.dtype,
            "quantization": self.base.plan.quantization,
            "precision": precision_name(self.base.plan.dtype, self.base.plan.quantization),
            "device": {
                "name": device_name(self.base.plan.device),
                "memory": device_memory(self.base.plan.device).to_json(),
                "planned": {
                    "weights_bytes": self.base.plan.memory.weights,
                    "cache_bytes": self.base.plan.memory.cache,
                },
            },
            "throughput": self.parts.throughput,
            "price_per_token_per_block": str(self.base.price_per_block),
            "price_per_token": str(price_per_token),
            "credit_window": str(self.base.credit),
            "price": {
                "per_block": units.show(self.base.price_per_block),
                "per_block_base_units": str(self.base.price_per_block),
                "per_token": units.show(price_per_token),
                "per_token_base_units": str(price_per_token),
            },
            "credit": {
                "window": units.show(self.base.credit),
                "window_base_units": str(self.base.credit),
            },
            "stake": None
            if standing is None
            else {
                "active": units.show(standing.stake),
                "active_base_units": str(standing.stake),
                "required": units.show(standing.required),
                "required_base_units": str(standing.required),
            },
            "sessions": len(self.parts.sessions),
            "cache": {
                "tokens_total": self.parts.caches.max_tokens,
                "tokens_used": self.parts.caches.tokens_in_use,
                "tokens_left": self.parts.caches.tokens_left,
            },
            "earnings": {
                "redeemed": units.show(earnings.redeemed),
                "redeemed_base_units": str(earnings.redeemed),
                "unredeemed": units.show(earnings.unredeemed),
                "unredeemed_base_units": str(earnings.unredeemed),
                "channels": earnings.channels,
            },
            "routing": {
                "rank": None if self.rank is None else self.rank.to_json(units),
                "routes_last_hour": routes.since,
                "routes_total": routes.total,
                "last_route_at": None if routes.last_at is None else routes.last_at.isoformat(),
            },
            "commitments": {
                "pending_leaves": counts.pending_leaves + self.parts.writer.queued,
                "committed_leaves": counts.committed_leaves,
                "committed_batches": counts.committed_batches,
                "failed_batches": counts.failed_batches,
            },
            "time": time.time(),
        }
