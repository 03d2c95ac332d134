"""The client CLI's tables (`stakeswarm client generate`'s summary, `client channels`) keep
every figure readable at any width: at 80 columns, a pipe's width, the channels table used to
cut its amounts to `0.0…  SWA…`. With no rows, no empty table is printed."""

from __future__ import annotations

import io

from rich.console import Console

from stakeswarm.commands.client_support import print_rows

COLUMNS = ("channel", "server", "deposit", "paid", "left", "expiry")
ROWS = [
    (
        "12",
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "1.000000000000000001 SWARM",
        "0.000123456789 SWARM",
        "0.999876543211000001 SWARM",
        "2026-12-06 07:40:12 UTC",
    ),
    (
        "13",
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "250 SWARM",
        "0.5 SWARM",
        "249.5 SWARM",
        "2026-12-07 01:02:03 UTC",
    ),
]


def _printed(width: int, rows: list[tuple[str, ...]]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, no_color=True, highlight=False)
    print_rows(console, "Channels", COLUMNS, rows)
    return out.getvalue()


def test_every_figure_stays_whole_at_80_columns() -> None:
    text = _printed(80, ROWS)
    assert "…" not in text
    for row in ROWS:
        for value in row:
            assert value in text, (value, text)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_wide_console_gets_the_table() -> None:
    text = _printed(200, ROWS)
    header = next(line for line in text.splitlines() if "channel" in line)
    assert all(column in header for column in COLUMNS)  # one header line: a table
    for row in ROWS:
        assert all(value in text for value in row)


def test_no_rows_print_nothing() -> None:
    assert _printed(80, []) == "" and _printed(200, []) == ""
