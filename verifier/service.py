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
  re-run the span (one float32 pass, or block by block for a 16-bit node) and judge
  (`verifier.audit`); record the audit. Guilty
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

How it is built and stopped: `verifier.build`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hivemind.p2p import PeerID
from sqlalchemy.orm import Session

from ledger.chain import ChainError, ContractRevert
from ledger.contracts import Batch
from ledger.contracts.commitments import UnknownBatchError
from ledger.db import (
    AuditOutcome,
    AuditTask,
    add_audit_task,
    finish_audit_task,
    get_cursor,
    is_audited,
    record_audit,
    retry_audit_task,
    set_cursor,
    verifier_totals,
)
from ledger.db.columns import utcnow
from ledger.types import BatchId, Reason, Wei
from ledger.types import to_base_units as base_units
from ledger.units import format_time
from node.device import device_memory, device_name
from node.errors import NodeError
from node.host import HostConfig, PeriodicJob, ServiceHost
from verifier.api import build_app, totals_document
from verifier.audit import (
    Judgement,
    Opening,
    ProvenLeaf,
    check_opening,
    prove_leaf,
)
from verifier.build import VerifierBase, VerifierParts, build_verifier, connect_verifier
from verifier.config import VerifierConfig
from verifier.errors import InvalidOpeningError, RevealUnavailableError, VerifierConfigError
from verifier.queue import (
    NodeStanding,
    drop_tasks,
    due_tasks_of,
    node_queues,
    order_nodes,
    pending_batches,
    progress_line,
    queue_document,
    queue_report,
)
from verifier.reveal import request_reveal
from verifier.thresholds import BLOCK_TOLERANCES

logger = logging.getLogger(__name__)

AUDIT_BATCH = 8  # due leaves taken per pass of the audit loop
# How a node's leaves are recomputed, by the precision it declared (/status): `verifier.audit`.
RECOMPUTE_WAYS = {
    "float32": "one float32 pass, judged on the sketch",
    **{
        precision: f"block by block in {precision}, from its block states"
        for precision in BLOCK_TOLERANCES
    },
}
PROGRESS_INTERVAL = 30.0  # seconds between progress lines in the log while audits are queued
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


def to_base_units(tokens: Decimal, decimals: int) -> Wei:
    """The stake in base units (`ledger.types.to_base_units`); `VerifierConfigError` if it has
    too many decimals."""
    try:
        return base_units(tokens, decimals, "stake")
    except ValueError as exc:
        raise VerifierConfigError(str(exc)) from None


class Verifier:
    """A verifier: see the module doc."""

    base: VerifierBase  # connected in `run`, before the host starts
    parts: VerifierParts  # built in `start`

    def __init__(self, config: VerifierConfig, *, on_ready: Callable[[Ready], None] | None = None):
        self.config = config
        self.on_ready = on_ready
        self.state = "starting"
        self._host: ServiceHost | None = None
        self._batches: dict[int, Batch] = {}
        self._peers: dict[str, PeerID] = {}
        self._active: dict[str, tuple[float, bool]] = {}  # verifier -> (checked at, active)

    # --- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Start, verify until asked to stop, shut down. Raises on a failed start. In the main
        thread SIGINT/SIGTERM stop it; in another thread, `request_stop()` does."""
        with contextlib.ExitStack() as closing:
            self.base = connect_verifier(self.config, closing)
            self._warn_if_deadline_too_long()
            config = self.config
            self._host = ServiceHost(
                HostConfig(
                    identity_path=str(self.base.dir / "p2p.key"),
                    initial_peers=config.initial_peers,
                    host_maddrs=config.host_maddrs,
                    name=f"verifier {self.base.address}",
                )
            )
            self._host.run(self.start)

    def request_stop(self) -> None:
        """Ask a running verifier to shut down (thread-safe)."""
        if self._host is not None:
            self._host.request_stop()

    async def start(self, host: ServiceHost) -> None:
        """Build the parts, make sure we are an active verifier, serve the status API and start
        the jobs; each registers how it stops on the host's stack (`verifier.build`)."""
        base, config = self.base, self.config
        self.parts = build_verifier(base, host, is_active=self._is_active, batch_of=self._batch)
        await asyncio.to_thread(self._ensure_registered)
        api = None
        if config.http_port is not None:
            app = build_app(status=self.status, healthy=lambda: self.state == "online")
            api = await host.serve_api(app, config.http_host, config.http_port)
        jobs = [
            PeriodicJob(self._follow, config.poll_interval, now=True),
            PeriodicJob(self._audit_due, 1.0, now=True),
            PeriodicJob(self._progress, PROGRESS_INTERVAL),
        ]
        if base.quorum > 1:
            jobs.append(PeriodicJob(self._quorum, config.quorum_interval, now=True))
        host.start_jobs(jobs)
        host.stops.callback(setattr, self, "state", "stopping")
        self.state = "online"
        if self.on_ready is not None:
            self.on_ready(
                Ready(
                    address=base.address,
                    peer_id=host.peer_id.to_base58(),
                    model=base.model_name,
                    sample_rate=config.sample_rate,
                    quorum=base.quorum,
                    http_url=api.url if api else None,
                )
            )
        logger.info("verifying %s at sample rate %g", base.model_name, config.sample_rate)

    def _serving_host(self) -> ServiceHost:
        if self._host is None:
            raise RuntimeError("the verifier is not running")
        return self._host

    def _warn_if_deadline_too_long(self) -> None:
        if self.config.reveal_deadline + self._margin() > self.base.challenge_window:
            logger.warning(
                "the reveal deadline (%.0f s) does not fit the challenge window (%d s): each "
                "leaf's deadline is cut to its batch's window",
                self.config.reveal_deadline,
                self.base.challenge_window,
            )

    def _ensure_registered(self) -> None:
        registry = self.base.contracts.verifier_registry
        info = registry.get_verifier(self.base.address)
        minimum = registry.min_stake()
        wanted = minimum
        if self.config.stake is not None:
            decimals = self.base.contracts.token.decimals()
            wanted = max(minimum, to_base_units(self.config.stake, decimals))
        if not info.registered:
            registry.register_with_approve(Wei(wanted))
            logger.info("registered as a verifier with stake %s", self.base.units.show(wanted))
        elif info.stake < wanted:
            registry.add_stake_with_approve(Wei(wanted - info.stake))
            logger.info("added %s to the verifier stake", self.base.units.show(wanted - info.stake))

    # --- chain reads (worker threads) ------------------------------------------------------

    def _batch(self, batch_id: int) -> Batch:
        """An on-chain batch (immutable once committed, so cached); `LookupError` if none."""
        if batch_id not in self._batches:
            try:
                self._batches[batch_id] = self.base.contracts.commitments.get_batch(
                    BatchId(batch_id), from_block=self.base.deployment.deploy_block
                )
            except (ContractRevert, UnknownBatchError) as exc:
                raise LookupError(f"batch {batch_id}: {exc}") from None
        return self._batches[batch_id]

    def _peer_of(self, node: str) -> PeerID:
        """The node's libp2p peer id as registered on-chain."""
        if node not in self._peers:
            raw = self.base.contracts.node_registry.get_node(node).peer_id
            if not raw:
                raise RevealUnavailableError(f"{node} registered no peer id")
            self._peers[node] = PeerID(bytes(raw))
        return self._peers[node]

    def _is_active(self, verifier: str) -> bool:
        checked = self._active.get(verifier)
        if checked is None or time.monotonic() - checked[0] > 60:
            active = self.base.contracts.verifier_registry.is_active(verifier)
            self._active[verifier] = (time.monotonic(), active)
            return active
        return checked[1]

    def _deadline(self, batch: Batch) -> timedelta:
        """How long from now the node has to reveal a leaf of `batch`: the configured deadline,
        cut so that a verdict still lands inside the batch's challenge window."""
        window_left = batch.committed_at + self.base.challenge_window - self.base.chain.timestamp()
        deadline = min(self.config.reveal_deadline, window_left - self._margin())
        return timedelta(seconds=max(0.0, deadline))

    def _margin(self) -> float:
        """Seconds of a challenge window kept after a reveal deadline (see `SLASH_MARGIN`),
        at most a tenth of the window."""
        return min(self.config.reveal_timeout + SLASH_MARGIN, self.base.challenge_window / 10)

    # --- follow: sample new commits, record slashes ---------------------------------------

    async def _follow(self) -> None:
        await asyncio.to_thread(self._follow_once)

    def _follow_once(self) -> None:
        self.parts.slashing.retry_failed()
        commitments = self.base.contracts.commitments
        latest = self.base.chain.block_number()
        with self.base.ledger.begin() as db:
            cursor = get_cursor(db, self.base.chain.chain_id, commitments.address)
        if cursor is None:
            start = (
                self.config.from_block
                if self.config.from_block is not None
                else self.base.deployment.deploy_block
            )
        else:
            start = cursor + 1
        if start > latest:
            return
        sampled = 0
        for event in commitments.batches_committed(
            from_block=start, to_block=latest, model_id=self.base.model_id
        ):
            indices = self.base.key.sample(
                self.base.chain.chain_id,
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
            with self.base.ledger.begin() as db:
                for index in indices:
                    added = add_audit_task(
                        db,
                        node=event.node,
                        batch_id=event.batch_id,
                        leaf_index=index,
                        deadline=deadline,
                    )
                    sampled += added is not None
        self.parts.slashing.record_slashes(start, latest)
        with self.base.ledger.begin() as db:
            set_cursor(db, self.base.chain.chain_id, commitments.address, latest)
        if sampled:
            logger.info("sampled %d leaves in blocks %d..%d", sampled, start, latest)

    # --- audit -----------------------------------------------------------------------------

    async def _audit_due(self) -> None:
        for task in await asyncio.to_thread(self._next_tasks):
            if self._serving_host().stopping:
                return
            # a slash earlier in this pass may have made the rest of the pass pointless
            if await asyncio.to_thread(self._dropped, task):
                continue
            try:
                await self._audit(task)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # our side failed: try the leaf again later
                logger.exception("auditing batch %d leaf %d failed", task.batch_id, task.leaf_index)
                await asyncio.to_thread(self._retry, task, f"audit failed: {exc}")

    def _next_tasks(self, limit: int = AUDIT_BATCH) -> list[AuditTask]:
        """The next due tasks in queue order (`verifier.queue`), after dropping the tasks of
        batches their node was already slashed for and of nodes no longer worth a slash."""
        slashed = set(self.parts.slashing.slashed_batches)
        with self.base.ledger.begin() as db:
            for node, batch_id in sorted(pending_batches(db) & slashed):
                self._drop_batch(db, node, batch_id)
            queues = node_queues(db)
        standings: dict[str, NodeStanding] = {
            q.node: self.parts.standings.of(q.node) for q in queues
        }
        tasks: list[AuditTask] = []
        with self.base.ledger.begin() as db:
            for queue in order_nodes(queues, standings):
                if not standings[queue.node].worth.worth:
                    # the reason was logged once, when the node's standing changed
                    drop_tasks(db, queue.node)
                elif queue.due and len(tasks) < limit:
                    tasks += due_tasks_of(db, queue.node, limit=limit - len(tasks))
            db.expunge_all()
        return tasks

    def _dropped(self, task: AuditTask) -> bool:
        """Drop `task` (and its like) if its batch was slashed or its node is no longer worth a
        slash since the pass began; whether it was."""
        if (task.node, task.batch_id) in self.parts.slashing.slashed_batches:
            with self.base.ledger.begin() as db:
                self._drop_batch(db, task.node, task.batch_id)
            return True
        if not self.parts.standings.of(task.node).worth.worth:
            with self.base.ledger.begin() as db:
                drop_tasks(db, task.node)  # logged once, when the node's standing changed
            return True
        return False

    @staticmethod
    def _drop_batch(db: Session, node: str, batch_id: int) -> None:
        dropped = drop_tasks(db, node, batch_id=batch_id)
        if dropped:
            logger.info(
                "dropped %d queued audits of %s batch %d: it was slashed for that batch",
                dropped,
                node,
                batch_id,
            )

    async def _audit(self, task: AuditTask) -> None:
        last_call = utcnow() > task.deadline  # the attempt at (or after) the deadline
        try:
            peer = await asyncio.to_thread(self._peer_of, task.node)
            opening = await request_reveal(
                self._serving_host().p2p,
                peer,
                self.base.account,
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
            self.parts.compute, self._judge, opening, proven
        )
        await asyncio.to_thread(self._record, task, proven, outcome, detail, judgement)
        if reason is not None:
            await self.parts.slashing.accuse(proven, reason)

    def _judge(
        self, opening: Opening, proven: ProvenLeaf
    ) -> tuple[AuditOutcome, Reason | None, str, Judgement | None]:
        """Check and recompute (compute thread): outcome, verdict reason if guilty, detail."""
        try:
            checked = check_opening(
                opening, proven, batches=self._batch, hidden_size=self.base.hidden_size
            )
        except InvalidOpeningError as exc:
            return AuditOutcome.WITHHELD, Reason.WITHHELD, f"invalid reveal: {exc}", None
        leaf = proven.leaf
        try:
            spans = self.base.spans.get(leaf.span_start, leaf.span_end)
        except Exception as exc:  # our model files, not the node's fault
            logger.exception("cannot load blocks [%d, %d)", leaf.span_start, leaf.span_end)
            return AuditOutcome.ERROR, None, f"cannot load the span: {exc}", None
        try:
            judgement = spans.audit(checked)
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
        with self.base.ledger.begin() as db:
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
        now = utcnow()
        at = now + timedelta(seconds=self.config.retry_interval)
        if now < task.deadline:
            at = min(at, task.deadline)
        with self.base.ledger.begin() as db:
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
            await self.parts.slashing.accuse_withheld(task.node, task.batch_id, task.leaf_index)

    def _withheld_obstacle(self, task: AuditTask) -> str | None:
        """Why we must not sign a withheld verdict for `task`'s leaf, or None."""
        if not self._is_active(self.base.address):
            return "we are not an active verifier (nodes refuse our reveals; our verdict is void)"
        batch = self._batch(task.batch_id)
        if self.base.chain.timestamp() > batch.committed_at + self.base.challenge_window:
            return "the batch's challenge window closed"
        if self.base.contracts.slasher.is_withheld_slashed(BatchId(task.batch_id), task.leaf_index):
            return "already slashed as withheld"
        if (task.node, task.batch_id) in self.parts.slashing.slashed_batches:
            return f"the node was already slashed for batch {task.batch_id}"
        standing = self.parts.standings.of(task.node)
        if not standing.worth.worth:
            return f"the node is not worth a slash: {standing.worth.describe(self.base.units)}"
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
        with self.base.ledger.begin() as db:
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
        findings = await self.parts.board.read()
        await asyncio.to_thread(
            self.parts.slashing.consider,
            findings,
            batch_of=self._batch,
            queue_audit=self._queue_shared,
        )

    def _queue_shared(self, batch: Batch, leaf_index: int, leaf_hash: bytes | None) -> None:
        """Another verifier accused `batch`'s node about leaf `leaf_index` (`leaf_hash` when it
        was shown): audit that leaf ourselves unless we already did."""
        with self.base.ledger.begin() as db:
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

    async def _progress(self) -> None:
        await asyncio.to_thread(self._log_progress)

    def _log_progress(self) -> None:
        """One line while audits are queued: done, queued, the estimate, the skipped nodes."""
        skipped = dict(self.parts.standings.skipped)
        with self.base.ledger.begin() as db:
            report = queue_report(db, skipped=skipped)
        if not report.pending:
            return
        line = progress_line(report, report.done)
        for node, why in sorted(skipped.items()):
            line += f"; skipped node {node}: {why}"
        logger.info("%s", line)

    def status(self) -> dict[str, Any]:
        """The `/status` document (reads the ledger: call from a worker thread). Amounts are
        shown in tokens, with their exact base units in `..._base_units` fields."""
        with self.base.ledger.begin() as db:
            totals = verifier_totals(db, self.base.address)
            report = queue_report(db, skipped=dict(self.parts.standings.skipped))
        return {
            "state": self.state,
            "address": self.base.address,
            "peer_id": self._serving_host().peer_id.to_base58(),
            "model": self.base.model_name,
            "model_id": "0x" + self.base.model_id.hex(),
            "sample_rate": self.config.sample_rate,
            "quorum": self.base.quorum,
            "device": {  # where the recomputations run, and how per declared dtype
                "name": device_name(self.base.spans.device),
                "memory": device_memory(self.base.spans.device).to_json(),
                "recompute": RECOMPUTE_WAYS,
            },
            **totals_document(totals, self.base.units),
            "queue": queue_document(report),
            "time": time.time(),
            "time_utc": format_time(int(time.time())),
        }
