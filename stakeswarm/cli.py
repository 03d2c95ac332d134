"""The `stakeswarm` command: one typer app, one sub-app per role."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="stakeswarm",
    help="Run language models on a staked, paid and verified swarm of servers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Sub-apps are imported here, after `app` exists; each module owns its commands.
from stakeswarm.commands import chain as chain_commands  # noqa: E402
from stakeswarm.commands import dev as dev_commands  # noqa: E402

app.add_typer(dev_commands.app, name="dev")
app.add_typer(chain_commands.app, name="chain")

from stakeswarm.commands import demo as demo_command  # noqa: E402

app.command(name="demo")(demo_command.demo)

from stakeswarm.commands import dashboard as dashboard_command  # noqa: E402

app.command(name="dashboard")(dashboard_command.dashboard)

from node import cli as node_commands  # noqa: E402

app.add_typer(node_commands.app, name="node")

from stakeswarm.commands import client as client_commands  # noqa: E402

app.add_typer(client_commands.app, name="client")

from stakeswarm.commands import verifier as verifier_commands  # noqa: E402

app.add_typer(verifier_commands.app, name="verifier")

from stakeswarm.commands import gateway as gateway_commands  # noqa: E402

app.add_typer(gateway_commands.app, name="gateway")
