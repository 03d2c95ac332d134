"""`Verifier`: one verifier of the swarm, from start to a clean exit.

    verifier = Verifier(config)
    verifier.run()     # blocks until SIGINT/SIGTERM (or `request_stop()`), then shuts down

Start: connect to the chain as the verifier's key, open its ledger and sampling key
(`<home>/verifier/<address>/`), make sure it is an active verifier on-chain (registering with
stake if not: nodes reveal only to active verifiers), join the swarm's DHT, start the HTTP
API, then run three loops until stopped:

- follow (every `poll_interval`): read `BatchCommitted` events of the model since the last
  block sampled, sample each leaf at `sample_rate` (`verifier.sampling`), queue the sampled
  ones with a reveal deadline; read `LeafSlashed` events and record the slashes our verdicts
  took part in (ours or a peer's submission), with our bounty;
- audit: for each due leaf, ask its node (peer id from the NodeRegistry) for a full reveal,
  prove the leaf under the on-chain root, check the inputs and the sketch against the leaf,
  re-run the span in one float32 pass and judge (`verifier.audit`); record the audit. Guilty
  (mismatch, or a proven leaf whose inputs did not hold up: withheld): sign a verdict, share
  it, slash once the quorum holds (`verifier.slashing`);
- withheld: a node that reveals nothing usable (no answer, a refusal, or answers that do not
  prove the sampled leaf) is asked again every `retry_interval` until the reveal deadline
  (`reveal_deadline` after sampling, cut to fit the batch's challenge window). If the attempt
  at the deadline fails too, and at least `withheld_min_attempts` did, the audit is recorded
  as withheld and we sign a `Withheld(node, batchId, leafIndex)` verdict, share it, and slash
  with `slashWithheld` once the quorum holds. A failure on our side (the chain unreadable)
  never becomes a verdict; nor does anything while we are not an active verifier (the node
  may rightly refuse us);
- quorum (quorum > 1 only, every `quorum_interval`): read the findings other verifiers shared
  (`verifier.verdicts`), keep the valid ones, audit their leaves ourselves (for a withheld
  one: ask the node ourselves until our own deadline), and submit a slash as soon as `quorum`
  valid signatures agree, ours among them.

Stop: finish the audit in progress, stop the loops, the API and the DHT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import torch
from hivemind import DHT
from hivemind.p2p import P2P, PeerID

from ledger.chain import Chain, ChainError, ContractRevert
from ledger.contracts import Batch, Contracts
from ledger.contracts.commitments import UnknownBatchError
from ledger.db import (
    AuditOutcome,
    AuditTask,
    Ledger,
    add_audit_task,
    due_audit_tasks,
    finish_audit_task,
    get_cursor,
    is_audited,
    open_deployment_ledger,
    record_audit,
    retry_audit_task,
    set_cursor,
    sqlite_url,
    verifier_totals,
)
from ledger.db.columns import utcnow
from ledger.identity import load_identity
from ledger.types import BatchId, Reason, Wei, model_id
from ledger.types import to_base_units as base_units
from node.api import HttpApi
from node.blocks import Span, load_span
from node.errors import NodeError
from node.families import load_config
from verifier.api import build_app, totals_document
from verifier.audit import (
    Judgement,
    Opening,
    ProvenLeaf,
    check_opening,
    judge,
    prove_leaf,
    recompute,
)
from verifier.config import VerifierConfig
from verifier.errors import InvalidOpeningError, RevealUnavailableError, VerifierConfigError
from verifier.reveal import request_reveal
from verifier.sampling import AuditKey
from verifier.slashing import Slashing
from verifier.verdicts import VerdictBoard

logger = logging.getLogger(__name__)

AUDIT_BATCH = 8  # due leaves taken per pass of the audit loop
# Seconds of a batch's challenge window kept free after a reveal deadline, on top of one more
# reveal attempt: the withheld verdict, the quorum's own attempts and the slash go there.
SLASH_MARGIN = 120.0


@dataclass(frozen=True)
class Ready:
    """What a started verifier tells its operator."""

    address: str
    peer_id: str
    model: str
    sample_rate: float
    quorum: int
    http_url: str | None


class SpanCache:
    """Float32 spans of the model for recomputation, the `capacity` most recently used kept."""

    def __init__(self, model_path: Path, capacity: int) -> None:
        self.model_path = model_path
        self.capacity = capacity
        self._spans: OrderedDict[tuple[int, int], Span] = OrderedDict()

    def get(self, start: int, end: int) -> Span:
        key = (start, end)
        if key in self._spans:
            self._spans.move_to_end(key)
            return self._spans[key]
        span = load_span(self.model_path, start, end, torch.float32)
        self._spans[key] = span
        while len(self._spans) > self.capacity:
            self._spans.popitem(last=False)
        return span


def to_base_units(tokens: Decimal, decimals: int) -> Wei:
    """The stake in base units (`ledger.types.to_base_units`); `VerifierConfigError` if it has
    too many decimals."""
    try:
        return base_units(tokens, decimals, "stake")
    except ValueError as exc:
        raise VerifierConfigError(str(exc)) from None


class Verifier:
    """A verifier: see the module doc."""

    def __init__(self, config: VerifierConfig, *, on_ready: Callable[[Ready], None] | None = None):
        self.config = config
        self.on_ready = on_ready
        self.state = "starting"
        self.dht: DHT | None = None
        self.ledger: Ledger | None = None
        self.api: HttpApi | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._batches: dict[int, Batch] = {}
        self._peers: dict[str, PeerID] = {}
        self._active: dict[str, tuple[float, bool]] = {}  # verifier -> (checked at, active)

    # --- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Start, verify until asked to stop, shut down. Raises on a failed start. In the main
        thread SIGINT/SIGTERM stop it; in another thread, `request_stop()` does."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if main else None
        try:
            self._connect()
            self._start_dht()
            asyncio.run(self._serve())
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            if self.dht is not None:
                self.dht.shutdown()
            if self.ledger is not None:
                self.ledger.close()

    def request_stop(self) -> None:
        """Ask a running verifier to shut down (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _connect(self) -> None:
        config = self.config
        home = Path(config.home).expanduser().resolve()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        deployment, account = load_identity(config, role="verifier")
        self.deployment = deployment
        self.account = account
        self.address = account.address
        self.dir = home / "verifier" / account.address
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.chain: Chain = deployment.connect(rpc_url=config.rpc_url)
        # tied to this chain, as a node's and a client's: a ledger of an earlier chain under the
        # same id (a restarted devnet) is set aside, so its event cursor cannot skip this one's
        self.ledger = open_deployment_ledger(
            sqlite_url(self.dir / "ledger.sqlite"), self.chain, deployment
        )
        sender = self.chain.sender(account, journal=self.ledger.tx_journal())
        self.contracts = Contracts.from_deployment(self.chain, deployment, sender)
        self.key = AuditKey.load_or_create(self.dir / "audit.key")
        self.model_name = config.name
        self.model_id = model_id(self.model_name)
        self.hidden_size = int(load_config(config.model_path).hidden_size)
        self.spans = SpanCache(Path(config.model_path), config.max_spans)
        params = self.contracts.slasher.params()
        self.quorum = params.quorum
        self.challenge_window = params.challenge_window
        self.domain = self.contracts.slasher.domain()
        self.slashing = Slashing(
            ledger=self.ledger,
            contracts=self.contracts,
            account=account,
            domain=self.domain,
            quorum=self.quorum,
            is_active=self._is_active,
            batch_of=self._batch,
        )
        if config.reveal_deadline + self._margin() > self.challenge_window:
            logger.warning(
                "the reveal deadline (%.0f s) does not fit the challenge window (%d s): each "
                "leaf's deadline is cut to its batch's window",
                config.reveal_deadline,
                self.challenge_window,
            )
        logger.info(
            "verifier %s on chain %d (quorum %d), ledger in %s",
            self.address,
            self.chain.chain_id,
            self.quorum,
            self.dir,
        )

    def _start_dht(self) -> None:
        # The DHT runs in a forked process: start it before any thread of ours exists.
        config = self.config
        self.dht = DHT(
            initial_peers=list(config.initial_peers) or None,
            host_maddrs=list(config.host_maddrs),
            identity_path=str(self.dir / "p2p.key"),
            start=True,
        )
        self.peer_id = self.dht.peer_id

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop.set)
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="recompute")
        tasks: list[asyncio.Task[None]] = []
        p2p: P2P | None = None
        try:
            assert self.dht is not None
            p2p = await self.dht.replicate_p2p()
            self.p2p = p2p
            self.board = VerdictBoard(
                self.dht, self.contracts.slasher.address, ttl=self.config.verdict_ttl
            )
            self.slashing.board = self.board
            await asyncio.to_thread(self._ensure_registered)
            if self.config.http_port is not None:
                app = build_app(status=self.status, healthy=lambda: self.state == "online")
                self.api = HttpApi(app, self.config.http_host, self.config.http_port)
                await self.api.start()
            tasks.append(asyncio.create_task(self._every(self.config.poll_interval, self._follow)))
            tasks.append(asyncio.create_task(self._every(1.0, self._audit_due)))
            if self.quorum > 1:
                tasks.append(
                    asyncio.create_task(self._every(self.config.quorum_interval, self._quorum))
                )
            self.state = "online"
            if self.on_ready is not None:
                self.on_ready(
                    Ready(
                        address=self.address,
                        peer_id=self.peer_id.to_base58(),
                        model=self.model_name,
                        sample_rate=self.config.sample_rate,
                        quorum=self.quorum,
                        http_url=self.api.url if self.api else None,
                    )
                )
            logger.info("verifying %s at sample rate %g", self.model_name, self.config.sample_rate)
            await self._stop.wait()
            logger.info("shutting down")
        finally:
            self.state = "stopping"
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.api is not None:
                await self.api.stop()
            if p2p is not None:
                await p2p.shutdown()
            self._compute.shutdown(wait=True)
            logger.info("verifier %s stopped", getattr(self, "address", "?"))

    async def _every(self, seconds: float, job: Callable[[], Any]) -> None:
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s failed", getattr(job, "__name__", "a job"))
            await asyncio.sleep(seconds)

    def _ensure_registered(self) -> None:
        registry = self.contracts.verifier_registry
        info = registry.get_verifier(self.address)
        minimum = registry.min_stake()
        wanted = minimum
        if self.config.stake is not None:
            wanted = max(minimum, to_base_units(self.config.stake, self.contracts.token.decimals()))
        if not info.registered:
            registry.register_with_approve(Wei(wanted))
            logger.info("registered as a verifier with stake %d", wanted)
        elif info.stake < wanted:
            registry.add_stake_with_approve(Wei(wanted - info.stake))
            logger.info("added %d to the verifier stake", wanted - info.stake)

    # --- chain reads (worker threads) ------------------------------------------------------

    def _batch(self, batch_id: int) -> Batch:
        """An on-chain batch (immutable once committed, so cached); `LookupError` if none."""
        if batch_id not in self._batches:
            try:
                self._batches[batch_id] = self.contracts.commitments.get_batch(
                    BatchId(batch_id), from_block=self.deployment.deploy_block
                )
            except (ContractRevert, UnknownBatchError) as exc:
                raise LookupError(f"batch {batch_id}: {exc}") from None
        return self._batches[batch_id]

    def _peer_of(self, node: str) -> PeerID:
        """The node's libp2p peer id as registered on-chain."""
        if node not in self._peers:
            raw = self.contracts.node_registry.get_node(node).peer_id
            if not raw:
                raise RevealUnavailableError(f"{node} registered no peer id")
            self._peers[node] = PeerID(bytes(raw))
        return self._peers[node]

    def _is_active(self, verifier: str) -> bool:
        checked = self._active.get(verifier)
        if checked is None or time.monotonic() - checked[0] > 60:
            active = self.contracts.verifier_registry.is_active(verifier)
            self._active[verifier] = (time.monotonic(), active)
            return active
        return checked[1]

    def _deadline(self, batch: Batch) -> timedelta:
        """How long from now the node has to reveal a leaf of `batch`: the configured deadline,
        cut so that a verdict still lands inside the batch's challenge window."""
        window_left = batch.committed_at + self.challenge_window - self.chain.timestamp()
        deadline = min(self.config.reveal_deadline, window_left - self._margin())
        return timedelta(seconds=max(0.0, deadline))

    def _margin(self) -> float:
        """Seconds of a challenge window kept after a reveal deadline (see `SLASH_MARGIN`),
        at most a tenth of the window."""
        return min(self.config.reveal_timeout + SLASH_MARGIN, self.challenge_window / 10)

    # --- follow: sample new commits, record slashes ---------------------------------------

    async def _follow(self) -> None:
        await asyncio.to_thread(self._follow_once)

    def _follow_once(self) -> None:
        assert self.ledger is not None
        self.slashing.retry_failed()
        commitments = self.contracts.commitments
        latest = self.chain.block_number()
        with self.ledger.begin() as db:
            cursor = get_cursor(db, self.chain.chain_id, commitments.address)
        if cursor is None:
            start = (
                self.config.from_block
                if self.config.from_block is not None
                else self.deployment.deploy_block
            )
        else:
            start = cursor + 1
        if start > latest:
            return
        sampled = 0
        for event in commitments.batches_committed(
            from_block=start, to_block=latest, model_id=self.model_id
        ):
            indices = self.key.sample(
                self.chain.chain_id,
                commitments.address,
                event.batch_id,
                event.root,
                event.leaf_count,
                self.config.sample_rate,
            )
            if not indices:
                continue
            # the event carries the whole header; `_batch` checks it against the stored hash
            # only when it has to look a batch up itself
            self._batches.setdefault(event.batch_id, event.batch)
            batch = self._batch(event.batch_id)
            deadline = utcnow() + self._deadline(batch)
            with self.ledger.begin() as db:
                for index in indices:
                    added = add_audit_task(
                        db,
                        node=event.node,
                        batch_id=event.batch_id,
                        leaf_index=index,
                        deadline=deadline,
                    )
                    sampled += added is not None
        self.slashing.record_slashes(start, latest)
        with self.ledger.begin() as db:
            set_cursor(db, self.chain.chain_id, commitments.address, latest)
        if sampled:
            logger.info("sampled %d leaves in blocks %d..%d", sampled, start, latest)

    # --- audit -----------------------------------------------------------------------------

    async def _audit_due(self) -> None:
        assert self.ledger is not None

        def due() -> list[AuditTask]:
            assert self.ledger is not None
            with self.ledger.begin() as db:
                tasks = due_audit_tasks(db, limit=AUDIT_BATCH)
                db.expunge_all()
                return tasks

        for task in await asyncio.to_thread(due):
            if self._stop is not None and self._stop.is_set():
                return
            try:
                await self._audit(task)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # our side failed: try the leaf again later
                logger.exception("auditing batch %d leaf %d failed", task.batch_id, task.leaf_index)
                await asyncio.to_thread(self._retry, task, f"audit failed: {exc}")

    async def _audit(self, task: AuditTask) -> None:
        assert self.ledger is not None
        last_call = utcnow() > task.deadline  # the attempt at (or after) the deadline
        try:
            peer = await asyncio.to_thread(self._peer_of, task.node)
            opening = await request_reveal(
                self.p2p,
                peer,
                self.account,
                node=task.node,
                batch_id=task.batch_id,
                leaf_index=task.leaf_index,
                timeout=self.config.reveal_timeout,
            )
            batch = await asyncio.to_thread(self._batch, task.batch_id)
            proven = prove_leaf(opening, batch=batch, leaf_index=task.leaf_index)
        except (RevealUnavailableError, InvalidOpeningError) as exc:  # the node's doing
            self._peers.pop(task.node, None)  # read its peer id again: it may have moved
            if last_call and task.attempts + 1 >= self.config.withheld_min_attempts:
                await self._withheld(task, str(exc))
            else:
                await asyncio.to_thread(self._retry, task, str(exc))
            return
        except (LookupError, ChainError) as exc:  # ours: never a verdict
            if last_call:
                await asyncio.to_thread(self._give_up, task, str(exc))
            else:
                await asyncio.to_thread(self._retry, task, str(exc))
            return
        loop = asyncio.get_running_loop()
        outcome, reason, detail, judgement = await loop.run_in_executor(
            self._compute, self._judge, opening, proven
        )
        await asyncio.to_thread(self._record, task, proven, outcome, detail, judgement)
        if reason is not None:
            await self.slashing.accuse(proven, reason)

    def _judge(
        self, opening: Opening, proven: ProvenLeaf
    ) -> tuple[AuditOutcome, Reason | None, str, Judgement | None]:
        """Check and recompute (compute thread): outcome, verdict reason if guilty, detail."""
        try:
            checked = check_opening(
                opening, proven, batches=self._batch, hidden_size=self.hidden_size
            )
        except InvalidOpeningError as exc:
            return AuditOutcome.WITHHELD, Reason.WITHHELD, f"invalid reveal: {exc}", None
        leaf = proven.leaf
        try:
            span = self.spans.get(leaf.span_start, leaf.span_end)
        except Exception as exc:  # our model files, not the node's fault
            logger.exception("cannot load blocks [%d, %d)", leaf.span_start, leaf.span_end)
            return AuditOutcome.ERROR, None, f"cannot load the span: {exc}", None
        try:
            recomputed = recompute(span, checked.hidden, checked.mask, checked.last_tokens)
            judgement = judge(checked.sketch, recomputed, checked.dtype)
        except (NodeError, ValueError, RuntimeError) as exc:
            # committed inputs no honest node would have served (a NaN, say): no verdict
            # rests on a recomputation that did not run
            return AuditOutcome.ERROR, None, f"the recomputation failed: {exc}", None
        if judgement.passed:
            return AuditOutcome.PASSED, None, f"within the {checked.dtype} tolerance", judgement
        return AuditOutcome.FAILED, Reason.MISMATCH, "; ".join(judgement.failures), judgement

    def _record(
        self,
        task: AuditTask,
        proven: ProvenLeaf,
        outcome: AuditOutcome,
        detail: str,
        judgement: Judgement | None,
    ) -> None:
        assert self.ledger is not None
        with self.ledger.begin() as db:
            record_audit(
                db,
                node=task.node,
                batch_id=task.batch_id,
                leaf_hash=proven.leaf_hash,
                leaf_index=task.leaf_index,
                outcome=outcome,
                distances=judgement.as_json() if judgement is not None else None,
                detail=detail,
            )
            finish_audit_task(db, task.id)
        log = logger.info if outcome is AuditOutcome.PASSED else logger.warning
        log(
            "audit of %s batch %d leaf %d (step %d): %s, %s",
            task.node,
            task.batch_id,
            task.leaf_index,
            proven.leaf.step,
            outcome.value,
            detail,
        )

    def _retry(self, task: AuditTask, error: str) -> None:
        """Ask again in `retry_interval`, at the deadline at the latest (past it: a last call
        that still lacks `withheld_min_attempts` attempts)."""
        assert self.ledger is not None
        now = utcnow()
        at = now + timedelta(seconds=self.config.retry_interval)
        if now < task.deadline:
            at = min(at, task.deadline)
        with self.ledger.begin() as db:
            retry_audit_task(db, task.id, at=at, error=error)
        logger.info(
            "no usable reveal of batch %d leaf %d from %s yet: %s",
            task.batch_id,
            task.leaf_index,
            task.node,
            error,
        )

    async def _withheld(self, task: AuditTask, error: str) -> None:
        """The node revealed nothing usable by the deadline: record it, and unless something
        speaks against a verdict (`_withheld_obstacle`), accuse it of withholding."""
        obstacle = await asyncio.to_thread(self._withheld_obstacle, task)
        attempts = task.attempts + 1
        detail = f"no usable reveal by the deadline in {attempts} attempts (last: {error})"
        detail += f"; no verdict: {obstacle}" if obstacle else "; a withheld verdict"
        await asyncio.to_thread(self._finish, task, AuditOutcome.WITHHELD, detail)
        logger.warning(
            "%s withheld batch %d leaf %d: %s", task.node, task.batch_id, task.leaf_index, detail
        )
        if obstacle is None:
            await self.slashing.accuse_withheld(task.node, task.batch_id, task.leaf_index)

    def _withheld_obstacle(self, task: AuditTask) -> str | None:
        """Why we must not sign a withheld verdict for `task`'s leaf, or None."""
        if not self._is_active(self.address):
            return "we are not an active verifier (nodes refuse our reveals; our verdict is void)"
        batch = self._batch(task.batch_id)
        if self.chain.timestamp() > batch.committed_at + self.challenge_window:
            return "the batch's challenge window closed"
        if self.contracts.slasher.is_withheld_slashed(BatchId(task.batch_id), task.leaf_index):
            return "already slashed as withheld"
        return None

    def _give_up(self, task: AuditTask, error: str) -> None:
        """The deadline passed while our side failed: an error, never a verdict."""
        detail = f"could not audit by the deadline on our side: {error}"
        self._finish(task, AuditOutcome.ERROR, detail)
        logger.error(
            "batch %d leaf %d of %s: %s", task.batch_id, task.leaf_index, task.node, detail
        )

    def _finish(self, task: AuditTask, outcome: AuditOutcome, detail: str) -> None:
        """Record an audit of a leaf the node never showed (no leaf hash) and close its task."""
        assert self.ledger is not None
        with self.ledger.begin() as db:
            record_audit(
                db,
                node=task.node,
                batch_id=task.batch_id,
                leaf_hash=None,
                leaf_index=task.leaf_index,
                outcome=outcome,
                detail=detail,
            )
            finish_audit_task(db, task.id)

    # --- the quorum ------------------------------------------------------------------------

    async def _quorum(self) -> None:
        findings = await self.board.read()
        await asyncio.to_thread(
            self.slashing.consider, findings, batch_of=self._batch, queue_audit=self._queue_shared
        )

    def _queue_shared(self, batch: Batch, leaf_index: int, leaf_hash: bytes | None) -> None:
        """Another verifier accused `batch`'s node about leaf `leaf_index` (`leaf_hash` when it
        was shown): audit that leaf ourselves unless we already did."""
        assert self.ledger is not None
        with self.ledger.begin() as db:
            if leaf_hash is not None and is_audited(db, leaf_hash):
                return
            added = add_audit_task(
                db,
                node=batch.node,
                batch_id=batch.batch_id,
                leaf_index=leaf_index,
                deadline=utcnow() + self._deadline(batch),
            )
        if added is not None:
            logger.info(
                "another verifier accuses %s of batch %d leaf %d: auditing it too",
                batch.node,
                batch.batch_id,
                leaf_index,
            )

    # --- what the verifier tells others ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The `/status` document (reads the ledger: call from a worker thread). Amounts are
        decimal strings of token base units."""
        assert self.ledger is not None
        with self.ledger.begin() as db:
            totals = verifier_totals(db, self.address)
        return {
            "state": self.state,
            "address": self.address,
            "peer_id": self.peer_id.to_base58(),
            "model": self.model_name,
            "model_id": "0x" + self.model_id.hex(),
            "sample_rate": self.config.sample_rate,
            "quorum": self.quorum,
            **totals_document(totals),
            "time": time.time(),
        }


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
