"""The dashboard's pure functions: which blocks are served and where the gaps are, what state a
node is shown in, and how the registry, the DHT, the status APIs and the slashes join into the
rows a person reads."""

from __future__ import annotations

import json
from typing import Any

from dashboard.snapshot import (
    Announced,
    NodeReport,
    Observation,
    build_snapshot,
    coverage,
    gaps,
    node_state,
    tokens_served,
)
from ledger.contracts import (
    Batch,
    BatchCommitted,
    LeafSlashed,
    LeafWithheldSlashed,
    NodeInfo,
    VerifierInfo,
)
from ledger.types import Address, BatchId, BlockIndex, ModelId, Reason, Wei, model_id
from ledger.units import TokenUnits
from node.protocol import ServerInfo, ServerState

TOKEN = 10**18
UNITS = TokenUnits(18, "SWARM")
MODEL = "tiny-llama"
A, B, C = (Address("0x" + c * 40) for c in "abc")
VERIFIER = Address("0x" + "d" * 40)


def test_coverage_counts_the_servers_of_each_block_and_ignores_blocks_past_the_model() -> None:
    assert coverage(6, [(0, 2), (2, 4), (4, 6)]) == (1, 1, 1, 1, 1, 1)
    assert coverage(6, [(0, 4), (2, 6), (5, 9)]) == (1, 1, 2, 2, 1, 2)
    assert coverage(3, []) == (0, 0, 0)


def test_gaps_are_the_runs_of_unserved_blocks_at_the_start_middle_and_end() -> None:
    assert gaps(coverage(6, [(0, 2), (2, 4), (4, 6)])) == ()
    assert gaps(coverage(6, [(0, 2), (4, 6)])) == ((2, 4),)
    assert gaps(coverage(8, [(1, 3), (5, 6)])) == ((0, 1), (3, 5), (6, 8))
    assert gaps(()) == ()


def test_a_node_is_shown_by_what_matters_most_first() -> None:
    online = _info(A, 0, 2)
    assert node_state(online, registered=False, active=False) == "unregistered"
    assert node_state(online, registered=True, active=False) == "inactive"
    assert node_state(None, registered=True, active=True) == "not announced"
    assert node_state(online, registered=True, active=True) == "online"
    joining = _info(A, 0, 2, state=ServerState.JOINING)
    assert node_state(joining, registered=True, active=True) == "joining"


def test_tokens_served_is_read_from_the_prometheus_counter() -> None:
    text = (
        "# HELP stakeswarm_tokens_total Token positions computed\n"
        "# TYPE stakeswarm_tokens_total counter\n"
        "stakeswarm_tokens_total 42.0\n"
        "stakeswarm_tokens_created 1.7e9\n"
    )
    assert tokens_served(text) == 42
    assert tokens_served("stakeswarm_steps_total 3.0\n") is None


def test_the_snapshot_joins_registry_dht_status_and_slashes_per_node() -> None:
    observation = _observation(
        leaf_slashes=[
            LeafSlashed(
                B,
                BatchId(2),
                b"\x11" * 32,
                Reason.MISMATCH,
                Wei(20 * TOKEN),
                Wei(4 * TOKEN),
                30,
                "0xslash",
            )  # fmt: skip
        ],
        active={A.lower(): True, B.lower(): False, C.lower(): True},
    )

    snapshot = build_snapshot(observation)

    (model,) = snapshot.models
    assert (model.name, model.total_blocks) == (MODEL, 6)
    # the slashed node is inactive: its blocks are a gap however it announces itself
    assert model.coverage == (1, 1, 0, 0, 1, 1)
    assert model.gaps == ((2, 4),)
    assert [(s.start, s.end, s.state) for s in model.spans] == [
        (0, 2, "online"),
        (2, 4, "inactive"),
        (4, 6, "online"),
    ]
    rows = {row.address: row for row in snapshot.nodes}
    assert [row.address for row in snapshot.nodes] == [A, B, C]  # in block order
    a, b = rows[A], rows[B]
    assert (a.state, a.precision, a.span, a.model) == ("online", "float32", (0, 2), MODEL)
    assert (a.tokens_served, a.throughput) == (12, 5.0)
    assert (a.leaves_committed, a.batches_committed, a.last_commit_at) == (7, 2, 1_700_000_100)
    assert (a.stake, a.price_per_token_per_block) == ("40 SWARM", "0.001 SWARM")
    assert (a.slashes, a.slashed) == (0, "0 SWARM")
    assert (b.state, b.slashes, b.slashed, b.tokens_served) == ("inactive", 1, "20 SWARM", None)
    assert rows[C].status_url is None
    (shown,) = snapshot.slashes
    assert (shown.kind, shown.node, shown.amount, shown.bounty) == (
        "mismatch",
        B,
        "20 SWARM",
        "4 SWARM",
    )
    assert (shown.leaf, shown.batch_id, shown.tx_hash) == ("0x" + "11" * 32, 2, "0xslash")
    assert shown.submitter == VERIFIER
    (verifier,) = snapshot.verifiers
    assert (verifier.slashes_submitted, verifier.bounties, verifier.active) == (1, "4 SWARM", True)
    assert verifier.audits == {"done": 5, "failed": 1}
    json.dumps(snapshot.to_json())  # what the page reads is plain JSON


def test_slashes_are_listed_newest_first_with_each_kind_of_evidence() -> None:
    observation = _observation(
        leaf_slashes=[
            LeafSlashed(B, BatchId(1), b"\x01" * 32, Reason.MISMATCH, Wei(1), Wei(0), 10, "0x1")
        ],
        withheld=[LeafWithheldSlashed(C, BatchId(3), 4, Wei(2), Wei(0), 20, "0x2")],
    )
    slashes = build_snapshot(observation).slashes
    assert [(s.kind, s.block_number) for s in slashes] == [("withheld", 20), ("mismatch", 10)]
    assert (slashes[0].leaf_index, slashes[0].leaf) == (4, None)
    assert "did not reveal" in slashes[0].reason


def test_a_registered_node_missing_from_the_dht_is_shown_with_its_registration() -> None:
    observation = _observation(announced=[], active={A.lower(): True})
    rows = {row.address: row for row in build_snapshot(observation).nodes}
    assert rows[A].state == "not announced"
    assert rows[A].span == (0, 2)  # as registered
    assert rows[A].model == MODEL  # the model's name is known from its id
    assert rows[A].peer_id == "QmA"
    (model,) = build_snapshot(observation).models
    assert model.gaps == ((0, 6),)
    # the map still draws it where it registered, saying why nobody is served there
    assert [(s.address, s.start, s.end, s.state) for s in model.spans] == [
        (A, 0, 2, "not announced"),
        (B, 2, 4, "inactive"),
        (C, 4, 6, "inactive"),
    ]


# --- builders ----------------------------------------------------------------------------------


def _info(
    address: str, start: int, end: int, state: ServerState = ServerState.ONLINE
) -> ServerInfo:
    return ServerInfo(
        state=state,
        span_start=start,
        span_end=end,
        throughput=5.0,
        price_per_token_per_block=TOKEN // 1000,
        eth_address=address,
        dtype="float32",
        cache_tokens_left=1000,
        http_port=8000,
    )


def _node(address: Address, start: int, end: int, stake: int) -> NodeInfo:
    return NodeInfo(
        address=address,
        model_id=ModelId(model_id(MODEL)),
        span_start=BlockIndex(start),
        span_end=BlockIndex(end),
        price_per_token_per_block=Wei(TOKEN // 1000),
        peer_id=b"peer",
        stake=Wei(stake),
        unbonding=Wei(0),
        unbonding_release_at=0,
        last_commit_at=0,
        registered=True,
    )


def _commit(node: Address, batch: int, leaves: int, at: int) -> BatchCommitted:
    header = Batch(BatchId(batch), node, ModelId(model_id(MODEL)), b"\x00" * 32, leaves, at)
    return BatchCommitted(header, batch, f"0xc{batch}")


def _observation(**changes: Any) -> Observation:
    fields: dict[str, Any] = dict(
        taken_at=1_700_000_200.0,
        chain_id=31337,
        rpc_url="http://127.0.0.1:8545",
        block_number=40,
        chain_time=1_700_000_200,
        units=UNITS,
        models={MODEL: 6},
        registrations=[
            _node(A, 0, 2, 40 * TOKEN),
            _node(B, 2, 4, 20 * TOKEN),
            _node(C, 4, 6, 40 * TOKEN),
        ],
        active={A.lower(): True, B.lower(): True, C.lower(): True},
        peer_ids={A.lower(): "QmA", B.lower(): "QmB", C.lower(): "QmC"},
        announced=[
            Announced(MODEL, 6, "QmA", _info(A, 0, 2)),
            Announced(MODEL, 6, "QmB", _info(B, 2, 4)),
            Announced(MODEL, 6, "QmC", _info(C, 4, 6)),
        ],
        node_reports={A.lower(): NodeReport(tokens_served=12, throughput=4.0)},
        status_urls={A.lower(): "http://127.0.0.1:8000"},
        commits=[_commit(A, 1, 3, 1_700_000_000), _commit(A, 3, 4, 1_700_000_100)],
        leaf_slashes=[],
        withheld_slashes=[],
        equivocations=[],
        challenge_slashes=[],
        submitters={"0xslash": VERIFIER},
        verifiers=[VerifierInfo(VERIFIER, Wei(100 * TOKEN), Wei(0), 0, 0, True)],
        verifier_active={VERIFIER.lower(): True},
        verifier_status={VERIFIER.lower(): {"audits": {"done": 5, "failed": 1}}},
        verifier_urls={VERIFIER.lower(): "http://127.0.0.1:9000"},
    )
    if "withheld" in changes:
        changes["withheld_slashes"] = changes.pop("withheld")
    fields.update(changes)
    return Observation(**fields)
