"""What the dashboard shows, as values: one `SwarmSnapshot` built by pure functions from what
the collector read (`Observation`), and turned into JSON for the page.

The collector (`dashboard.collector`) only reads: the node and verifier registries, the
commitments and the slasher on-chain, the DHT records of every model it knows, and each node's
and verifier's HTTP status where it answers. Everything decided from those readings lives here,
without I/O, so it is tested without a swarm:

- `coverage` counts the ONLINE servers of each block; `gaps` are the runs of blocks nobody
  serves (a client cannot route through a gap: the page paints it red);
- `node_state` says in one word what a person needs to know about a node ("online",
  "inactive" when its stake no longer covers its span, "not announced" when it is registered
  but absent from the DHT);
- `build_snapshot` joins the registry, the DHT and the status APIs per node address, and lists
  every slash with its evidence (reason, leaf, batch, transaction, who submitted it).

Amounts are readable text (`TokenUnits.show`) beside their exact base units (`..._base_units`),
as every other JSON document of the project.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.contracts import (
    BatchCommitted,
    EquivocationSlashed,
    LeafSlashed,
    LeafWithheldSlashed,
    NodeInfo,
    ReceiptChallengeSlashed,
    VerifierInfo,
)
from ledger.types import Reason, model_id
from ledger.units import TokenUnits
from node.protocol import ServerInfo, ServerState

# ---------------------------------------------------------------------------------------------
# What the page shows
# ---------------------------------------------------------------------------------------------


class SnapshotUnavailable(Exception):
    """No snapshot can be given: the chain could not be read, and none was read before."""


@dataclass(frozen=True)
class SpanView:
    """One server's span of a model, as the block map draws it."""

    address: str  # the node's registered address
    peer_id: str
    start: int  # first block
    end: int  # one past the last block
    state: str  # node_state(...)


@dataclass(frozen=True)
class ModelView:
    """One model: its blocks, who serves which, and where nobody does."""

    name: str
    model_id: str  # 0x-hex keccak256 of the name
    total_blocks: int
    coverage: tuple[int, ...]  # ONLINE servers per block
    gaps: tuple[tuple[int, int], ...]  # [start, end) runs of blocks no ONLINE server holds
    spans: tuple[SpanView, ...]  # every announced span, in block order


@dataclass(frozen=True)
class NodeView:
    """One node, as the node table shows it."""

    address: str
    peer_id: str  # base58 (from the DHT, else the registry's bytes)
    model: str  # its model's name ("" when not known)
    span: tuple[int, int]  # announced span, else the registered one
    state: str  # node_state(...)
    precision: str  # what it serves ("float32", "bfloat16+int8"); "" when not announced
    version: int | None  # protocol version it announces
    price_per_token_per_block: str
    price_per_token_per_block_base_units: str
    stake: str
    stake_base_units: str
    unbonding: str
    unbonding_base_units: str
    throughput: float | None  # tokens/s through its span (announced, or its status API)
    cache_tokens_left: int | None
    tokens_served: int | None  # token positions computed (its status API; None: unreachable)
    leaves_committed: int  # leaves in the batches it committed on-chain
    batches_committed: int
    last_commit_at: int | None  # unix seconds of its last commit (None: never)
    slashes: int
    slashed: str
    slashed_base_units: str
    status_url: str | None  # its HTTP status API when it announces one


@dataclass(frozen=True)
class VerifierView:
    """One registered verifier, its stake, what it audited and slashed."""

    address: str
    stake: str
    stake_base_units: str
    active: bool
    slashes_submitted: int  # slashes whose transaction it sent
    bounties: str  # bounties of those slashes (per verifier)
    bounties_base_units: str
    audits: Mapping[str, int] | None  # its status API's audit counts; None: not reachable
    verdicts_signed: int | None
    status_url: str | None


@dataclass(frozen=True)
class SlashView:
    """One slash and its evidence, as the list of recent slashes shows it."""

    kind: str  # mismatch | withheld | equivocation | unanswered challenge
    reason: str  # in words
    node: str
    amount: str
    amount_base_units: str
    bounty: str  # per verifier (or to the reporter)
    bounty_base_units: str
    submitter: str | None  # who sent the slash transaction
    tx_hash: str
    block_number: int
    # the evidence, as far as the slash's kind has it
    batch_id: int | None = None
    leaf: str | None = None  # 0x-hex leaf hash
    leaf_index: int | None = None  # withheld: the position in the batch
    session: str | None = None  # 0x-hex session id (equivocation)
    step: int | None = None


@dataclass(frozen=True)
class SwarmSnapshot:
    """Everything the page shows at one moment."""

    taken_at: float  # unix seconds
    chain_id: int
    rpc_url: str
    block_number: int
    chain_time: int  # unix seconds of that block (what commit times are measured against)
    token: str  # the stake token's symbol
    models: tuple[ModelView, ...]
    nodes: tuple[NodeView, ...]
    verifiers: tuple[VerifierView, ...]
    slashes: tuple[SlashView, ...]  # newest first
    problems: tuple[str, ...] = ()  # what could not be read, in words

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# What the collector read
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Announced:
    """A server's DHT record for a model, under its peer id."""

    model: str
    total_blocks: int
    peer_id: str
    info: ServerInfo


@dataclass(frozen=True)
class NodeReport:
    """What a node's own HTTP API said (`/status` and `/metrics`)."""

    tokens_served: int | None  # token positions computed since it started
    throughput: float | None  # tokens/s through its span, measured


@dataclass(frozen=True)
class Observation:
    """One round of reads: the chain's state and events, the DHT, the status APIs."""

    taken_at: float
    chain_id: int
    rpc_url: str
    block_number: int
    chain_time: int  # unix seconds of `block_number`
    units: TokenUnits
    models: Mapping[str, int]  # model name -> total blocks (from the nodes' `info` answers)
    registrations: Sequence[NodeInfo]  # every registered node's current registration
    active: Mapping[str, bool]  # node address -> the registry counts it as active
    peer_ids: Mapping[str, str]  # node address -> its base58 peer id (the registry's bytes)
    announced: Sequence[Announced]
    node_reports: Mapping[str, NodeReport]  # node address -> what its status API said
    status_urls: Mapping[str, str]  # node address -> its status API's URL
    commits: Sequence[BatchCommitted]
    leaf_slashes: Sequence[LeafSlashed]
    withheld_slashes: Sequence[LeafWithheldSlashed]
    equivocations: Sequence[EquivocationSlashed]
    challenge_slashes: Sequence[ReceiptChallengeSlashed]
    submitters: Mapping[str, str]  # slash tx hash -> who sent it
    verifiers: Sequence[VerifierInfo]
    verifier_active: Mapping[str, bool]
    verifier_status: Mapping[str, Mapping[str, Any]]  # verifier address -> its /status
    verifier_urls: Mapping[str, str]  # verifier address -> its status API's URL
    problems: Sequence[str] = field(default=())


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def coverage(total_blocks: int, spans: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """How many of `spans` (each [start, end)) hold each block of `total_blocks`; the parts
    of a span beyond the model are ignored."""
    counts = [0] * total_blocks
    for start, end in spans:
        for block in range(max(0, start), min(total_blocks, end)):
            counts[block] += 1
    return tuple(counts)


def gaps(counts: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The [start, end) runs of blocks with a count of 0, in order."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for block, count in enumerate(counts):
        if count == 0 and start is None:
            start = block
        elif count != 0 and start is not None:
            runs.append((start, block))
            start = None
    if start is not None:
        runs.append((start, len(counts)))
    return tuple(runs)


def node_state(announced: ServerInfo | None, *, registered: bool, active: bool) -> str:
    """A node in one word or two: "unregistered", "inactive" (the registry no longer counts
    it: its stake does not cover its span, e.g. after a slash), "not announced" (staked but
    absent from the DHT), else the state it announces ("online", "joining", "offline")."""
    if not registered:
        return "unregistered"
    if not active:
        return "inactive"
    if announced is None:
        return "not announced"
    return announced.state.name.lower()


_REASONS = {
    Reason.MISMATCH: ("mismatch", "recomputing its span gave another output than it committed"),
    Reason.WITHHELD: ("withheld", "it did not reveal the inputs of a sampled leaf in time"),
}


def _slash(
    units: TokenUnits,
    kind: str,
    reason: str,
    event: LeafSlashed | LeafWithheldSlashed | EquivocationSlashed | ReceiptChallengeSlashed,
    bounty: int,
    submitter: str | None,
    **evidence: Any,
) -> SlashView:
    return SlashView(
        kind=kind,
        reason=reason,
        node=event.node,
        amount=units.show(event.amount),
        amount_base_units=str(event.amount),
        bounty=units.show(bounty),
        bounty_base_units=str(bounty),
        submitter=submitter,
        tx_hash=event.tx_hash,
        block_number=event.block_number,
        **evidence,
    )


def slash_views(observation: Observation) -> tuple[SlashView, ...]:
    """Every slash of the observation with its evidence, newest first."""
    units, by = observation.units, observation.submitters.get
    views = []
    for s in observation.leaf_slashes:
        kind, why = _REASONS.get(s.reason, ("other", f"reason {int(s.reason)}"))
        views.append(
            _slash(units, kind, why, s, s.bounty_per_verifier, by(s.tx_hash),
                   batch_id=s.batch_id, leaf="0x" + s.leaf.hex())
        )  # fmt: skip
    for w in observation.withheld_slashes:
        views.append(
            _slash(units, "withheld", _REASONS[Reason.WITHHELD][1], w, w.bounty_per_verifier,
                   by(w.tx_hash), batch_id=w.batch_id, leaf_index=w.leaf_index)
        )  # fmt: skip
    for e in observation.equivocations:
        views.append(
            _slash(units, "equivocation", "it signed two different receipts for one step", e,
                   e.bounty, e.reporter, session="0x" + e.session_id.hex(), step=e.step)
        )  # fmt: skip
    for c in observation.challenge_slashes:
        why = f"it did not prove it committed a receipt it signed (challenge {c.challenge_id})"
        views.append(_slash(units, "unanswered challenge", why, c, c.bounty, by(c.tx_hash)))
    return tuple(sorted(views, key=lambda v: v.block_number, reverse=True))


def _newest_announcements(announced: Iterable[Announced]) -> dict[str, Announced]:
    """Each node address's record (the first one seen per address: one record per peer)."""
    by_address: dict[str, Announced] = {}
    for item in announced:
        by_address.setdefault(item.info.eth_address.lower(), item)
    return by_address


def model_views(observation: Observation) -> tuple[ModelView, ...]:
    """Per model, its block map: every span announced, and those of the registered nodes
    absent from the DHT (at their registered span: a slashed node stops announcing), with the
    gaps between the ONLINE, active ones."""
    views = []
    for name, total in sorted(observation.models.items()):
        records = [a for a in observation.announced if a.model == name]
        online = [
            (a.info.span_start, a.info.span_end)
            for a in records
            if a.info.state == ServerState.ONLINE
            and observation.active.get(a.info.eth_address.lower(), False)
        ]
        counts = coverage(total, online)
        spans = [
            SpanView(
                address=a.info.eth_address,
                peer_id=a.peer_id,
                start=a.info.span_start,
                end=a.info.span_end,
                state=node_state(
                    a.info,
                    registered=True,
                    active=observation.active.get(a.info.eth_address.lower(), False),
                ),
            )
            for a in records
        ]
        shown = {a.info.eth_address.lower() for a in records}
        spans += [
            SpanView(
                address=node.address,
                peer_id=observation.peer_ids.get(node.address.lower(), ""),
                start=node.span_start,
                end=node.span_end,
                state=node_state(
                    None,
                    registered=node.registered,
                    active=observation.active.get(node.address.lower(), False),
                ),
            )
            for node in observation.registrations
            if node.registered
            and node.model_id == model_id(name)
            and node.address.lower() not in shown
        ]
        views.append(
            ModelView(
                name=name,
                model_id="0x" + model_id(name).hex(),
                total_blocks=total,
                coverage=counts,
                gaps=gaps(counts),
                spans=tuple(sorted(spans, key=lambda s: (s.start, s.end, s.address))),
            )
        )
    return tuple(views)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def node_views(observation: Observation) -> tuple[NodeView, ...]:
    """One row per registered node: registry, DHT and status API joined by address."""
    units = observation.units
    announced = _newest_announcements(observation.announced)
    names = {"0x" + _model_hex(name): name for name in observation.models}
    leaves: dict[str, int] = {}
    batches: dict[str, int] = {}
    last_commit: dict[str, int] = {}
    for commit in observation.commits:
        key = commit.node.lower()
        leaves[key] = leaves.get(key, 0) + commit.leaf_count
        batches[key] = batches.get(key, 0) + 1
        last_commit[key] = max(last_commit.get(key, 0), commit.batch.committed_at)
    slashed: dict[str, list[int]] = {}
    for slash in slash_views(observation):
        slashed.setdefault(slash.node.lower(), []).append(int(slash.amount_base_units))
    rows = []
    for node in observation.registrations:
        key = node.address.lower()
        record = announced.get(key)
        info = record.info if record is not None else None
        report = observation.node_reports.get(key)
        throughput = info.throughput if info is not None else None
        if throughput is None and report is not None:
            throughput = report.throughput
        taken = slashed.get(key, [])
        rows.append(
            NodeView(
                address=node.address,
                peer_id=record.peer_id if record else observation.peer_ids.get(key, ""),
                model=record.model if record else names.get("0x" + node.model_id.hex(), ""),
                span=(info.span_start, info.span_end) if info else (node.span_start, node.span_end),
                state=node_state(
                    info, registered=node.registered, active=observation.active.get(key, False)
                ),
                precision=info.precision if info else "",
                version=info.version if info else None,
                price_per_token_per_block=units.show(node.price_per_token_per_block),
                price_per_token_per_block_base_units=str(node.price_per_token_per_block),
                stake=units.show(node.stake),
                stake_base_units=str(node.stake),
                unbonding=units.show(node.unbonding),
                unbonding_base_units=str(node.unbonding),
                throughput=throughput,
                cache_tokens_left=info.cache_tokens_left if info else None,
                tokens_served=report.tokens_served if report is not None else None,
                leaves_committed=leaves.get(key, 0),
                batches_committed=batches.get(key, 0),
                last_commit_at=last_commit.get(key) or (node.last_commit_at or None),
                slashes=len(taken),
                slashed=units.show(sum(taken)),
                slashed_base_units=str(sum(taken)),
                status_url=observation.status_urls.get(key),
            )
        )
    return tuple(sorted(rows, key=lambda r: (r.model, r.span, r.address)))


def _model_hex(name: str) -> str:
    return model_id(name).hex()


def verifier_views(
    observation: Observation, slashes: Sequence[SlashView]
) -> tuple[VerifierView, ...]:
    """One row per registered verifier: stake, the slashes it submitted, its audits."""
    units = observation.units
    rows = []
    for verifier in observation.verifiers:
        key = verifier.address.lower()
        mine = [s for s in slashes if (s.submitter or "").lower() == key]
        bounties = sum(int(s.bounty_base_units) for s in mine)
        status = observation.verifier_status.get(key)
        audits = None
        signed = None
        if status is not None:
            raw = status.get("audits")
            if isinstance(raw, Mapping):
                audits = {k: int(v) for k, v in raw.items() if _int_or_none(v) is not None}
            signed = _int_or_none(status.get("verdicts_signed"))
        rows.append(
            VerifierView(
                address=verifier.address,
                stake=units.show(verifier.stake),
                stake_base_units=str(verifier.stake),
                active=observation.verifier_active.get(key, False),
                slashes_submitted=len(mine),
                bounties=units.show(bounties),
                bounties_base_units=str(bounties),
                audits=audits,
                verdicts_signed=signed,
                status_url=observation.verifier_urls.get(key),
            )
        )
    return tuple(rows)


def tokens_served(metrics: str) -> int | None:
    """The token positions a node computed, from its Prometheus `/metrics` text (the
    `stakeswarm_tokens_total` counter); None when the text does not say."""
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name == "stakeswarm_tokens_total":
            try:
                return int(float(value))
            except ValueError:
                return None
    return None


def build_snapshot(observation: Observation) -> SwarmSnapshot:
    """The page's snapshot of one observation (pure)."""
    slashes = slash_views(observation)
    return SwarmSnapshot(
        taken_at=observation.taken_at,
        chain_id=observation.chain_id,
        rpc_url=observation.rpc_url,
        block_number=observation.block_number,
        chain_time=observation.chain_time,
        token=observation.units.symbol,
        models=model_views(observation),
        nodes=node_views(observation),
        verifiers=verifier_views(observation, slashes),
        slashes=slashes,
        problems=tuple(observation.problems),
    )
