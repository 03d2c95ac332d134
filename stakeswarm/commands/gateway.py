"""`stakeswarm gateway`: the OpenAI-compatible gateway, and its API keys.

    stakeswarm gateway serve --model ./SmolLM2 --initial-peers /ip4/127.0.0.1/tcp/4242/p2p/Qm... \\
        --devnet [--account client-0] [--host 127.0.0.1 --port 8000 --max-concurrent 4 --db URL]
    stakeswarm gateway keys create --name alice --budget 5     # prints the key, once
    stakeswarm gateway keys show alice | keys list | keys revoke alice

`serve` pays the swarm from the client's wallet (--devnet [--account], or --deployment and
--keystore, as `stakeswarm client` takes them) and charges each request to its API key. The
keys live in the gateway's database: --db URL, by default the SQLite file
`<home>/gateway/gateway.sqlite` (the `keys` commands take the same --home and --db). Budgets
are whole stake tokens (18 decimals, as the devnet's; --decimals for another token). Nothing
here loads torch, FastAPI or the client at import time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from node.cli_options import (
    ChainOptions,
    HomeOpt,
    LogLevelOpt,
    check_initial_peers,
    check_model_folder,
    with_chain_options,
)
from node.logs import setup_logging
from stakeswarm.commands.chain_support import CliInputError, parse_tokens, reporting
from stakeswarm.commands.client_support import KeystoreOpt, connect_client
from stakeswarm.home import Home

__all__ = ["app"]

app = typer.Typer(
    help="The OpenAI-compatible gateway: serve the swarm's model to any OpenAI client, paid "
    "from a wallet, charged to API keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
keys_app = typer.Typer(help="The gateway's API keys and their budgets.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="SQLAlchemy URL of the gateway's keys database (default: the SQLite file "
        "<home>/gateway/gateway.sqlite).",
        show_default=False,
    ),
]
DecimalsOpt = Annotated[
    int, typer.Option(help="Decimals of the stake token budgets are counted in.", min=0, max=77)
]
TOKEN_DECIMALS = 18  # the devnet's stake token (and most ERC20s)


def _keys_url(home: Path | None, db: str | None) -> str:
    from gateway.config import gateway_db_path
    from ledger.db import sqlite_url

    if db is not None:
        return db
    path = gateway_db_path(Home.resolve(home).root)
    path.parent.mkdir(parents=True, exist_ok=True)
    return sqlite_url(path)


@app.command("serve")
@with_chain_options(keystore=KeystoreOpt)
def serve(
    model: Annotated[
        Path, typer.Option(help="Local model folder (config, tokenizer, embeddings and head).")
    ],
    initial_peers: Annotated[
        list[str], typer.Option(help="Multiaddr of a swarm member (repeat).", show_default=False)
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one).")] = 8000,
    max_concurrent: Annotated[
        int, typer.Option(help="Requests generating at once; one more is answered 429.", min=1)
    ] = 4,
    db: DbOpt = None,
    model_name: Annotated[
        str | None,
        typer.Option(help="The swarm's name of the model (default: the folder's name)."),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option(help="Tokens one request may generate at most (per choice).", min=1)
    ] = 512,
    max_price: Annotated[
        str | None,
        typer.Option(help="Tokens per token through the whole route, at most.", show_default=False),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(help="Tokens the gateway's wallet may spend in all.", show_default=False),
    ] = None,
    device: Annotated[
        str, typer.Option(help="Where the local ends compute: auto, cpu, cuda or cuda:N.")
    ] = "auto",
    log_level: LogLevelOpt = "WARNING",
    *,
    options: ChainOptions,
) -> None:
    """Serve the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions) on the swarm."""
    peers = check_initial_peers(initial_peers)
    check_model_folder(model)
    setup_logging(log_level)
    from client.config import ClientConfig
    from client.errors import ClientError
    from gateway.config import GatewayConfig, GatewayConfigError
    from gateway.service import build_gateway
    from node.errors import NodeError

    with reporting() as console:
        conn = connect_client(options)
        assert conn.signer is not None
        try:
            client = ClientConfig(
                model_path=model,
                model_name=model_name,
                device=device,
                initial_peers=peers,
                rpc_url=options.rpc,
                home=Home.resolve(options.home).root,
                max_price=None if max_price is None else conn.tokens(max_price, "--max-price"),
                budget=None if budget is None else conn.tokens(budget, "--budget"),
                # with --db the wallet's ledger (channels, vouchers, receipts) lives beside the keys
                ledger_url=db,
            )
            config = GatewayConfig(
                client=client,
                host=host,
                port=port,
                max_concurrent=max_concurrent,
                keys_url=db,
                max_tokens=max_tokens,
            )
        except (ClientError, GatewayConfigError) as exc:
            raise CliInputError(str(exc)) from None
        with contextlib.ExitStack() as stops:
            try:
                gateway = build_gateway(
                    config, account=conn.signer, deployment=conn.deployment, stops=stops
                )
            except (ClientError, NodeError, GatewayConfigError) as exc:
                raise CliInputError(str(exc)) from None
            console.print(
                f"gateway serving {config.served_model} at {gateway.url}/v1 (OpenAI API), "
                f"paying from {conn.signer.address}"
            )
            if db is not None:
                console.print(
                    "API keys and the wallet's ledger in the --db database "
                    "(`stakeswarm gateway keys create --db ...`)"
                )
            else:
                console.print(f"API keys in {config.keys_path} (`stakeswarm gateway keys create`)")
            console.print("Ctrl-C stops it")
            console.print("ready")
            gateway.serve()
        console.print("gateway stopped")


@keys_app.command("create")
def create_key(
    name: Annotated[str, typer.Option(help="A name for the key (who uses it).")],
    budget: Annotated[str, typer.Option(help="Stake tokens its requests may spend in all.")],
    decimals: DecimalsOpt = TOKEN_DECIMALS,
    home: HomeOpt = None,
    db: DbOpt = None,
) -> None:
    """Create an API key; it is printed once (only its hash is stored)."""
    from gateway.keys import new_key
    from ledger.db import create_gateway_key, open_ledger

    with reporting() as console:
        amount = parse_tokens(budget, decimals, "--budget")
        ledger = open_ledger(_keys_url(home, db))
        try:
            key, digest = new_key()
            with ledger.begin() as session:
                create_gateway_key(session, name=name, key_hash=digest, budget=amount)
        finally:
            ledger.close()
        console.print(f"created key {name!r} with a budget of {budget} tokens:")
        print(key)
        console.print("[dim]keep it now: it is not stored and cannot be shown again[/]")


def _table(rows: list[object], decimals: int) -> Table:
    from ledger.db.gateway import GatewayKey
    from ledger.units import format_tokens

    table = Table("name", "budget", "spent", "left", "requests", "tokens", "last used", "state")
    for row in rows:
        assert isinstance(row, GatewayKey)
        table.add_row(
            row.name,
            format_tokens(row.budget, decimals),
            format_tokens(row.spent, decimals),
            format_tokens(max(0, row.budget - row.spent), decimals),
            str(row.requests),
            f"{row.prompt_tokens} + {row.completion_tokens}",
            "-" if row.last_used_at is None else f"{row.last_used_at:%Y-%m-%d %H:%M:%S}",
            "revoked" if row.revoked_at is not None else "active",
        )
    return table


@keys_app.command("show")
def show_key(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    decimals: DecimalsOpt = TOKEN_DECIMALS,
    home: HomeOpt = None,
    db: DbOpt = None,
) -> None:
    """A key's budget, what it spent (tokens and exact base units) and its requests."""
    from ledger.db import gateway_key_by_name, open_ledger

    with reporting() as console:
        ledger = open_ledger(_keys_url(home, db))
        try:
            with ledger.begin() as session:
                row = gateway_key_by_name(session, name)
        finally:
            ledger.close()
        if row is None:
            raise CliInputError(f"no key named {name!r}")
        console.print(_table([row], decimals))
        console.print(f"spent {row.spent} of {row.budget} base units")


@keys_app.command("list")
def list_keys(
    decimals: DecimalsOpt = TOKEN_DECIMALS, home: HomeOpt = None, db: DbOpt = None
) -> None:
    """Every key: budget, spent, requests, state."""
    from ledger.db import gateway_keys, open_ledger

    with reporting() as console:
        ledger = open_ledger(_keys_url(home, db))
        try:
            with ledger.begin() as session:
                rows = gateway_keys(session)
        finally:
            ledger.close()
        if not rows:
            console.print("no keys yet: create one with `stakeswarm gateway keys create`")
            return
        console.print(_table(list(rows), decimals))


@keys_app.command("revoke")
def revoke_key(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    home: HomeOpt = None,
    db: DbOpt = None,
) -> None:
    """Revoke a key: its requests are refused (401) from now on; its records stay."""
    from ledger.db import open_ledger, revoke_gateway_key

    with reporting() as console:
        ledger = open_ledger(_keys_url(home, db))
        try:
            with ledger.begin() as session:
                revoke_gateway_key(session, name)
        finally:
            ledger.close()
        console.print(f"revoked key {name!r}")
