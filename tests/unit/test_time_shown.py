"""Chain times as people read them: a date, and how far it is from the chain's now."""

from __future__ import annotations

from ledger.units import format_time, format_time_from

NOW = 1_796_587_442  # 2026-12-06 20:04:02 UTC


def test_a_future_time_says_how_soon() -> None:
    assert format_time_from(NOW + 2 * 86_400 + 5, NOW) == "2026-12-08 20:04:07 UTC (in 2 days)"
    assert format_time_from(NOW + 90, NOW) == f"{format_time(NOW + 90)} (in 1 minute)"


def test_a_past_time_says_how_long_ago() -> None:
    assert format_time_from(NOW - 3 * 3_600, NOW) == "2026-12-06 17:04:02 UTC (3 hours ago)"
    assert format_time_from(NOW - 1, NOW) == f"{format_time(NOW - 1)} (1 second ago)"


def test_the_present_is_now() -> None:
    assert format_time_from(NOW, NOW) == "2026-12-06 20:04:02 UTC (now)"
