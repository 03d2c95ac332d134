"""`stakeswarm demo`: the story of stakeswarm on a local chain the command starts and stops."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ledger.deployment import TOKEN
from ledger.errors import LedgerError
from stakeswarm.devnet import Devnet, DevnetConfig
from stakeswarm.home import Home
from stakeswarm.ledger_story import Snapshot, StoryLog, run_ledger_story

console = Console()


def _tokens(amount: int) -> str:
    return f"{amount / TOKEN:,.4f}".rstrip("0").rstrip(".")


def _balances_table(before: Snapshot, after: Snapshot) -> Table:
    table = Table(title="Balances and stakes after the story (stake tokens)")
    for column in ("party", "balance", "change", "staked", "change"):
        table.add_column(column, justify="left" if column == "party" else "right")

    def change(delta: int) -> str:
        return ("+" if delta > 0 else "") + _tokens(delta) if delta else "0"

    for name in before.balances:
        staked_after = after.stakes.get(name)
        staked_before = before.stakes.get(name, 0)
        table.add_row(
            name,
            _tokens(after.balances[name]),
            change(after.balances[name] - before.balances[name]),
            _tokens(staked_after) if staked_after is not None else "",
            change(staked_after - staked_before) if staked_after is not None else "",
        )
    return table


def demo(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="State directory for the demo's chain (default: a temporary one)."
        ),
    ] = None,
) -> None:
    """Start a local chain, play every money flow (stake, pay, commit, redeem, slash) and stop."""
    with tempfile.TemporaryDirectory(prefix="stakeswarm-demo-") as scratch:
        config = DevnetConfig(home=Home.resolve(home or scratch))
        try:
            with console.status("starting a local chain and deploying the contracts"):
                devnet = Devnet.launch(config)
            try:
                deployment = devnet.deployment
                console.print(
                    f"chain {deployment.chain_id} at {deployment.rpc_url}, contracts deployed"
                )
                log = StoryLog()
                chain = deployment.connect()
                before, after = run_ledger_story(deployment, chain, log, lambda when, snap: None)
                steps = Table(title="What happened (every line a transaction unless noted)")
                steps.add_column("step")
                steps.add_column("tx")
                steps.add_column("gas", justify="right")
                for what, tx in log.steps:
                    steps.add_row(
                        what,
                        tx.tx_hash[:18] + "…" if tx else "(off-chain)",
                        f"{tx.gas_used:,}" if tx else "",
                    )
                console.print(steps)
                console.print(_balances_table(before, after))
                console.print(
                    "Nodes staked and were paid per token; node-1 lost half its stake to a verdict,"
                    " node-2 half of its to an equivocation proof; bounties went to the verifier and"
                    " to the reporter, the rest of the slashed stake to the treasury (deployer)."
                    " The client's unspent escrow comes back after the channels expire."
                )
            finally:
                devnet.stop()
                console.print("local chain stopped")
        except LedgerError as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            raise typer.Exit(1) from None
