"""`stakeswarm dev`: a local chain with every contract deployed, for development.

    stakeswarm dev up [--chain anvil|hardhat] [--accounts N] [--port P] [--home DIR]
    stakeswarm dev down [--home DIR]

`dev up` stays in the foreground until Ctrl-C (or `dev down` from another terminal), then stops
the chain. The deployment file it writes, `<home>/devnet/deployment.json`, is what every
`--devnet` command reads.
"""

from __future__ import annotations

import enum
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ledger.deployment import TOKEN, Deployment
from ledger.errors import LedgerError
from stakeswarm.devnet import Devnet, DevnetConfig, stop_devnet
from stakeswarm.home import Home

app = typer.Typer(
    help="A local chain with every contract deployed and funded dev accounts.",
    no_args_is_help=True,
)


class ChainChoice(enum.StrEnum):
    anvil = "anvil"
    hardhat = "hardhat"


HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="State directory (default ~/.stakeswarm).", show_default=False),
]


class _Stop(Exception):
    """SIGTERM (e.g. from `stakeswarm dev down`) asks `dev up` to stop."""


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


@app.command()
def up(
    chain: Annotated[
        ChainChoice, typer.Option(help="Which local chain to run.")
    ] = ChainChoice.anvil,
    accounts: Annotated[
        int, typer.Option(help="Dev accounts: a deployer, then nodes, clients and verifiers.")
    ] = 10,
    port: Annotated[int, typer.Option(help="RPC port on 127.0.0.1 (0: any free port).")] = 0,
    home: HomeOption = None,
) -> None:
    """Start a local chain, deploy every contract, fund the dev accounts, and run until Ctrl-C."""
    console = Console(soft_wrap=True)
    errors = Console(stderr=True, soft_wrap=True)
    resolved = Home.resolve(home)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        config = DevnetConfig(home=resolved, chain=chain.value, accounts=accounts, port=port)
        with Devnet.start(config) as deployment:
            _print_summary(console, deployment, resolved)
            console.print("[bold]devnet running[/]: Ctrl-C or `stakeswarm dev down` stops it")
            while True:
                signal.pause()
    except (KeyboardInterrupt, _Stop):
        console.print("devnet stopped")
    except LedgerError as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def down(home: HomeOption = None) -> None:
    """Stop the devnet running in this home (started by `stakeswarm dev up`)."""
    console = Console(soft_wrap=True)
    resolved = Home.resolve(home)
    try:
        stopped = stop_devnet(resolved)
    except LedgerError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if stopped is None:
        console.print(f"no devnet running in {resolved.root}")
    else:
        console.print(f"stopped the {stopped.chain} devnet at {stopped.rpc_url}")


def _print_summary(console: Console, deployment: Deployment, home: Home) -> None:
    """Addresses and keys in full, one per line (they get copied; tables would truncate them)."""
    params = deployment.params
    symbol = params.token_symbol
    console.print(
        f"[bold green]devnet up[/] at {deployment.rpc_url} (chain id {deployment.chain_id})"
    )
    console.print("[bold]Contracts[/]")
    for name, address in deployment.to_json()["contracts"].items():
        console.print(f"  {name:<17} {address}")
    console.print("[bold]Dev accounts[/] (public test keys: never use them anywhere else)")
    for index, account in enumerate(deployment.accounts):
        console.print(f"  {index:>2} {account.name:<11} {account.address}  {account.private_key}")
    console.print(
        f"[bold]Parameters[/]: stake per block {params.min_stake_per_block / TOKEN:g} {symbol}, "
        f"verifier stake {params.min_verifier_stake / TOKEN:g} {symbol}, "
        f"quorum {params.quorum}, slash {params.slash_bps / 100:g}%, "
        f"bounty {params.bounty_bps / 100:g}% of a slash, "
        f"challenge window {params.challenge_window} s, unbonding {params.unbonding_delay} s"
    )
    console.print(f"deployment file: {home.devnet_deployment}")
