"""How a node ranks itself for routing, as a client's planner would place it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.db import claim_session, open_ledger, sqlite_url
from ledger.units import TokenUnits
from node.protocol import ServerInfo, ServerState
from node.rank import RankLog, RouteCounts, ordinal, rank_node, route_counts

UNITS = TokenUnits(decimals=18, symbol="SWARM")
MILLI = 10**15  # 0.001 SWARM


def info(
    start: int,
    end: int,
    price: int,
    *,
    throughput: float = 100.0,
    state: ServerState = ServerState.ONLINE,
    dtype: str = "float32",
    quantization: str | None = None,
) -> ServerInfo:
    return ServerInfo(
        state=state,
        span_start=start,
        span_end=end,
        throughput=throughput,
        price_per_token_per_block=price,
        eth_address="0x" + "11" * 20,
        dtype=dtype,
        cache_tokens_left=1000,
        quantization=quantization,
    )


def test_the_dearer_of_two_equal_servers_ranks_second_and_says_so() -> None:
    dear, cheap = info(0, 4, 2 * MILLI), info(0, 4, MILLI)
    rank = rank_node("dear", dear, [("cheap", cheap), ("dear", dear)], 4)
    assert (rank.position, rank.servers, rank.cheaper) == (2, 2, 1)
    assert rank.cheapest_per_block == MILLI
    assert rank.max_price_needed == 4 * 2 * MILLI  # its own 4 blocks, nothing else to route
    assert not rank.default_client_skips  # the default client takes any price
    text = rank.describe(UNITS)
    assert "2nd choice of 2 server(s) for blocks 0:4" in text
    assert "price 0.002 SWARM/block" in text and "down to 0.001 SWARM" in text
    assert "--max-price below 0.008 skip it" in text

    first = rank_node("cheap", cheap, [("cheap", cheap), ("dear", dear)], 4)
    assert (first.position, first.cheaper, first.first_choice) == (1, 0, True)


def test_a_faster_server_ranks_first_even_when_dearer() -> None:
    # the client's planner minimizes latency first; price only breaks ties
    slow_cheap, fast_dear = info(0, 4, MILLI, throughput=10), info(0, 4, 5 * MILLI)
    assert rank_node("fast", fast_dear, [("slow", slow_cheap)], 4).position == 1
    assert rank_node("slow", slow_cheap, [("fast", fast_dear)], 4).position == 2


def test_a_default_max_price_below_the_cheapest_route_skips_the_node() -> None:
    mine = info(2, 4, 3 * MILLI)
    swarm = [("low", info(0, 2, MILLI)), ("other", info(2, 4, MILLI))]
    rank = rank_node("me", mine, swarm, 4, default_max_price=5 * MILLI)
    # blocks 0:2 at 0.001 + its own 2 blocks at 0.003: 0.008 per token at least
    assert rank.max_price_needed == 8 * MILLI
    assert rank.default_client_skips
    assert "must pass at least --max-price 0.008" in rank.describe(UNITS)
    assert rank.servers == 2  # the server of blocks 0:2 holds none of its blocks


def test_servers_a_client_cannot_use_do_not_count() -> None:
    mine = info(0, 4, 2 * MILLI)
    swarm = [
        ("offline", info(0, 4, MILLI, state=ServerState.OFFLINE)),
        ("half", info(0, 4, MILLI, dtype="bfloat16")),
    ]
    rank = rank_node("me", mine, swarm, 4)
    assert (rank.position, rank.servers, rank.cheaper) == (1, 1, 0)
    # a client of bfloat16 weights does not use int8 ones (their precision is their own)
    full = info(0, 4, 2 * MILLI, dtype="bfloat16")
    int8 = info(0, 4, MILLI, dtype="bfloat16", quantization="int8")
    assert rank_node("me", full, [("int8", int8)], 4).servers == 1
    assert rank_node("me", int8, [("full", full)], 4).servers == 1


def test_an_unheld_block_means_no_client_routes_the_model() -> None:
    rank = rank_node("me", info(0, 2, MILLI), [], 4)
    assert rank.max_price_needed is None and rank.default_client_skips
    assert "no client can route the whole model" in rank.describe(UNITS)
    assert rank.to_json(UNITS)["max_price_needed_base_units"] is None


def test_servers_covering_parts_of_the_span_together_outrank_a_slower_node() -> None:
    mine = info(0, 4, MILLI, throughput=1)
    swarm = [("a", info(0, 2, MILLI)), ("b", info(2, 4, MILLI)), ("c", info(0, 4, MILLI))]
    rank = rank_node("me", mine, swarm, 4)
    # c first (one fast hop), then a + b, then this slow node
    assert (rank.position, rank.servers) == (3, 4)


def test_json_keeps_exact_base_units_beside_the_text() -> None:
    rank = rank_node("me", info(0, 4, 2 * MILLI), [("c", info(0, 4, MILLI))], 4)
    doc = rank.to_json(UNITS)
    assert doc["price_per_block"] == "0.002 SWARM"
    assert doc["price_per_block_base_units"] == str(2 * MILLI)
    assert doc["max_price_needed_base_units"] == str(8 * MILLI)


def test_a_span_outside_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match="inside the model"):
        rank_node("me", info(2, 6, 1), [], 4)


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
    ]  # fmt: skip


def test_route_counts_from_the_ledger(tmp_path: Path) -> None:
    ledger = open_ledger(sqlite_url(tmp_path / "ledger.sqlite"))
    with ledger.begin() as db:
        assert route_counts(db, since=datetime.now(UTC)).total == 0
        for i in range(3):
            claim_session(
                db, session_id=bytes([i + 1]) * 32, channel_id=1, span_start=0, span_end=4
            )
    with ledger.begin() as db:
        counts = route_counts(db, since=datetime.now(UTC) - timedelta(hours=1))
        assert (counts.total, counts.since) == (3, 3)
        assert counts.last_at is not None
        assert route_counts(db, since=datetime.now(UTC) + timedelta(hours=1)).since == 0


def test_the_log_says_the_rank_when_it_changes_and_hints_when_no_route_came() -> None:
    start = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
    log = RankLog(started_at=start)
    none = RouteCounts(total=0, since=0, last_at=None)
    first = log.messages("2nd choice of 2", none, start + timedelta(seconds=30))
    assert first == [
        "routing rank: 2nd choice of 2; 0 route(s) chose this node in the last hour, 0 in all"
    ]
    assert log.messages("2nd choice of 2", none, start + timedelta(minutes=5)) == []
    hint = log.messages("2nd choice of 2", none, start + timedelta(minutes=10))
    assert hint == ["no routes chose this node in the last 10 min: 2nd choice of 2"]
    assert log.messages("2nd choice of 2", none, start + timedelta(minutes=15)) == []  # once
    # a route came at 16 min: no hint until 10 quiet minutes later
    came = RouteCounts(total=1, since=1, last_at=start + timedelta(minutes=16))
    assert log.messages("1st choice of 2", came, start + timedelta(minutes=21)) == [
        "routing rank: 1st choice of 2; 1 route(s) chose this node in the last hour, 1 in all"
    ]
    assert len(log.messages("1st choice of 2", came, start + timedelta(minutes=26))) == 1
