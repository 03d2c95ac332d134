"""Routing as pure functions: the fastest chain of servers within a price bound, and
exponential backoff of failing servers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.protocol import ServerInfo, ServerState
from node.routing import Backoff, Candidate, RouteHop, plan_route, route_price

ADDRESS = "0x" + "11" * 20


def server(
    peer: str, start: int, end: int, *, rtt: float = 0.01, throughput: float = 100.0, price: int = 1
) -> Candidate:
    info = ServerInfo(
        state=ServerState.ONLINE,
        span_start=start,
        span_end=end,
        throughput=throughput,
        price_per_token_per_block=price,
        eth_address=ADDRESS,
        dtype="float32",
        cache_tokens_left=1000,
    )
    return Candidate(peer, info, rtt)


def spans(route: list[RouteHop] | None) -> list[tuple[str, int, int]]:
    assert route is not None
    return [(hop.peer_id, hop.start, hop.end) for hop in route]


def test_one_server_holding_everything_is_one_hop() -> None:
    assert spans(plan_route([server("a", 0, 6)], 0, 6)) == [("a", 0, 6)]


def test_the_route_covers_the_blocks_without_gaps_or_overlaps() -> None:
    candidates = [server("a", 0, 3), server("b", 3, 6), server("c", 2, 5)]
    route = plan_route(candidates, 0, 6)
    assert spans(route) == [("a", 0, 3), ("b", 3, 6)]


def test_no_route_when_a_block_is_not_held() -> None:
    assert plan_route([server("a", 0, 3), server("b", 4, 6)], 0, 6) is None
    assert plan_route([], 0, 1) is None


def test_a_sub_range_uses_parts_of_wider_spans() -> None:
    # failover of blocks [3, 6): a server holding [0, 6) runs just those
    route = plan_route([server("wide", 0, 6), server("low", 0, 3)], 3, 6)
    assert spans(route) == [("wide", 3, 6)]


def test_lower_latency_wins_counting_round_trips_and_compute() -> None:
    near_slow = server("near-slow", 0, 6, rtt=0.001, throughput=10)  # 0.001 + 0.1
    far_fast = server("far-fast", 0, 6, rtt=0.05, throughput=1000)  # 0.05 + 0.001
    assert spans(plan_route([near_slow, far_fast], 0, 6)) == [("far-fast", 0, 6)]
    # two hops cost two round trips: one good server beats two halves that are as fast
    halves = [server("h1", 0, 3, rtt=0.03), server("h2", 3, 6, rtt=0.03)]
    whole = server("whole", 0, 6, rtt=0.05)
    assert spans(plan_route([*halves, whole], 0, 6)) == [("whole", 0, 6)]


def test_the_expected_latency_of_a_hop_is_its_rtt_plus_its_share_of_the_span() -> None:
    candidate = server("a", 0, 4, rtt=0.02, throughput=50)  # 4 blocks in 1/50 s
    assert candidate.step_latency(0, 4) == pytest.approx(0.02 + 0.02)
    assert candidate.step_latency(1, 3) == pytest.approx(0.02 + 0.01)
    route = plan_route([candidate], 1, 3)
    assert route is not None and route[0].latency == pytest.approx(0.03)


def test_the_maximum_price_bounds_the_whole_route() -> None:
    fast_dear = server("fast-dear", 0, 4, rtt=0.001, price=10)  # 40 per token
    slow_cheap = server("slow-cheap", 0, 4, rtt=0.5, price=1)  # 4 per token
    candidates = [fast_dear, slow_cheap]
    assert spans(plan_route(candidates, 0, 4)) == [("fast-dear", 0, 4)]
    route = plan_route(candidates, 0, 4, max_price=39)
    assert spans(route) == [("slow-cheap", 0, 4)]
    assert route is not None and route_price(route) == 4
    assert plan_route(candidates, 0, 4, max_price=3) is None


def test_the_price_bound_finds_the_fastest_mix_that_fits() -> None:
    # cheapest is slow everywhere; the bound allows exactly one dear, fast half
    candidates = [
        server("cheap", 0, 4, rtt=1.0, price=1),
        server("dear-low", 0, 2, rtt=0.01, price=5),
        server("dear-high", 2, 4, rtt=0.01, price=5),
        server("mid-high", 2, 4, rtt=0.3, price=1),
    ]
    route = plan_route(candidates, 0, 4, max_price=12)
    assert spans(route) == [("dear-low", 0, 2), ("mid-high", 2, 4)]
    assert route is not None and route_price(route) == 12


def test_equal_latency_prefers_the_cheaper_route() -> None:
    same = dict(rtt=0.01, throughput=100.0)
    route = plan_route([server("dear", 0, 2, price=3, **same), server("cheap", 0, 2, **same)], 0, 2)
    assert spans(route) == [("cheap", 0, 2)]


def test_a_hop_charges_its_price_per_block_times_the_blocks_it_runs() -> None:
    route = plan_route([server("a", 0, 6, price=7)], 2, 5)
    assert route is not None and route[0].price_per_token == 21 and route_price(route) == 21


def test_an_empty_range_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        plan_route([server("a", 0, 6)], 3, 3)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 7),
            st.integers(1, 4),
            st.floats(0.001, 1.0),
            st.floats(1.0, 1000.0),
            st.integers(0, 5),
        ),
        min_size=1,
        max_size=7,
    ),
    st.one_of(st.none(), st.integers(0, 60)),
)
def test_a_found_route_is_valid_and_no_valid_route_is_faster(servers, max_price) -> None:  # noqa: ANN001
    candidates = [
        server(f"s{i}", start, min(start + length, 8), rtt=rtt, throughput=tp, price=price)
        for i, (start, length, rtt, tp, price) in enumerate(servers)
    ]
    route = plan_route(candidates, 0, 8, max_price=max_price)
    best = _brute_force(candidates, 0, 8, max_price)
    if best is None:
        assert route is None
        return
    assert route is not None
    assert route[0].start == 0 and route[-1].end == 8
    assert all(a.end == b.start for a, b in zip(route, route[1:], strict=False))
    assert max_price is None or route_price(route) <= max_price
    assert sum(h.latency for h in route) == pytest.approx(best, abs=1e-6)


def _brute_force(
    candidates: list[Candidate], start: int, end: int, max_price: int | None
) -> float | None:
    """The least latency of any route within the price (exhaustive search)."""
    best: float | None = None

    def walk(at: int, latency: float, price: int) -> None:
        nonlocal best
        if max_price is not None and price > max_price:
            return
        if at == end:
            best = latency if best is None else min(best, latency)
            return
        for c in candidates:
            if c.info.span_start <= at < c.info.span_end:
                for stop in range(at + 1, min(c.info.span_end, end) + 1):
                    walk(
                        stop,
                        latency + c.step_latency(at, stop),
                        price + c.info.price_per_token_per_block * (stop - at),
                    )

    walk(start, 0.0, 0)
    return best


def test_backoff_doubles_per_failure_in_a_row_up_to_the_cap() -> None:
    backoff = Backoff(base=5, cap=30)
    assert [backoff.failed("a", now=0) for _ in range(5)] == [5, 10, 20, 30, 30]
    assert backoff.failures("a") == 5
    assert backoff.avoided("a", now=29.9) and not backoff.avoided("a", now=30)
    assert not backoff.avoided("b", now=0)


def test_a_success_forgets_the_failures() -> None:
    backoff = Backoff(base=1, cap=100)
    backoff.failed("a", now=0)
    backoff.failed("a", now=1)
    backoff.succeeded("a")
    assert backoff.failures("a") == 0 and not backoff.avoided("a", now=1)
    assert backoff.failed("a", now=2) == 1  # from the start again


def test_next_release_is_the_soonest_end_of_an_avoidance() -> None:
    backoff = Backoff(base=10, cap=100)
    assert backoff.next_release(now=0) is None
    backoff.failed("a", now=0)  # until 10
    backoff.failed("b", now=4)  # until 14
    assert backoff.next_release(now=5) == pytest.approx(5)
    assert backoff.next_release(now=20) is None


def test_backoff_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0, cap=1)
    with pytest.raises(ValueError):
        Backoff(base=10, cap=1)
