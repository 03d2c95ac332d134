"""The `stakeswarm` command: one typer app, one sub-app per role."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="stakeswarm",
    help="Run language models on a staked, paid and verified swarm of servers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
