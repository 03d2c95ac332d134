"""The voucher amount rules a node applies to every step (`node.balance.judge_amount`)."""

from __future__ import annotations

import pytest

from ledger.units import TokenUnits
from node.balance import ChainClock, judge_amount
from node.protocol import ErrorCode, ProtocolError

SWARM = TokenUnits(decimals=18, symbol="SWARM")


def _code(**kwargs: int) -> ErrorCode | None:
    try:
        judge_amount(**kwargs, units=SWARM)  # type: ignore[arg-type]
    except ProtocolError as exc:
        return exc.code
    return None


def test_a_voucher_covering_everything_owed_is_accepted() -> None:
    assert _code(amount=300, owed_after=300, step_cost=100, last_accepted=200, credit=0) is None
    assert _code(amount=301, owed_after=300, step_cost=100, last_accepted=200, credit=0) is None


def test_a_voucher_behind_what_is_owed_is_refused_unless_the_credit_covers_it() -> None:
    assert (
        _code(amount=250, owed_after=300, step_cost=100, last_accepted=200, credit=0)
        is ErrorCode.PAYMENT_BEHIND
    )
    assert _code(amount=250, owed_after=300, step_cost=100, last_accepted=200, credit=50) is None
    assert (
        _code(amount=249, owed_after=300, step_cost=100, last_accepted=200, credit=50)
        is ErrorCode.PAYMENT_BEHIND
    )


def test_a_paid_step_needs_a_voucher_above_the_last_even_within_credit() -> None:
    for amount in (200, 150):
        assert (
            _code(amount=amount, owed_after=300, step_cost=100, last_accepted=200, credit=10**9)
            is ErrorCode.REPLAYED_VOUCHER
        )


def test_a_free_step_may_repeat_the_last_voucher_but_not_go_below_it() -> None:
    assert _code(amount=200, owed_after=200, step_cost=0, last_accepted=200, credit=0) is None
    assert _code(amount=0, owed_after=0, step_cost=0, last_accepted=0, credit=0) is None
    assert (
        _code(amount=100, owed_after=200, step_cost=0, last_accepted=200, credit=0)
        is ErrorCode.REPLAYED_VOUCHER
    )


def test_the_refusal_says_what_is_needed_in_tokens() -> None:
    milli = 10**15  # 0.001 SWARM
    with pytest.raises(ProtocolError) as refused:
        judge_amount(
            240 * milli,
            owed_after=300 * milli,
            step_cost=100 * milli,
            last_accepted=200 * milli,
            credit=50 * milli,
            units=SWARM,
        )
    assert refused.value.message == (
        "voucher for 0.24 SWARM is behind: after this step the channel owes 0.3 SWARM, the node "
        "extends 0.05 SWARM of credit, so at least 0.25 SWARM is needed"
    )


def test_chain_clock_follows_the_chain_when_it_runs_ahead_of_the_wall_clock() -> None:
    import time

    ahead = int(time.time()) + 86_400
    clock = ChainClock(lambda: ahead)
    clock.refresh()
    assert ahead <= clock.now() < ahead + 5
    behind = ChainClock(lambda: 1_000)
    behind.refresh()
    assert behind.now() >= time.time() - 1
