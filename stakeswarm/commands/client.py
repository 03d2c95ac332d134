"""`stakeswarm client`: generate text from the swarm and pay per token; the client's wallet and
channels.

    stakeswarm client generate "I ate dosa today" --model ./SmolLM2 --max-new-tokens 32 \\
        --initial-peers /ip4/127.0.0.1/tcp/4242/p2p/Qm... --devnet [--chat] \\
        [--max-price 0.0001] [--budget 1]
    stakeswarm client wallet create [--keystore FILE]        # a new key, encrypted
    stakeswarm client wallet show [--keystore FILE | --devnet] # address (and balances)
    stakeswarm client channels [--reclaim] (--devnet | --deployment FILE --keystore FILE)

Without --devnet, commands read the deployment file given and sign with the keystore given,
by default `<home>/client/keystore.json`. Amounts (--max-price per token through the whole
route, --budget for the whole run) are whole stake tokens with decimals. `generate` streams
the text as it arrives, then prints the route, the speed, what each server was paid and the
channels' balances; Ctrl-C stops it with a newline, `interrupted` and what was paid on stderr,
then the same summary (exit status 130). Peer addresses, the model folder and --chat are
checked before any chain, ledger or network work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from client.config import ClientConfig
from client.errors import BudgetExceededError, ClientError
from ledger.wallet import PasswordSource, create_wallet, keystore_address
from node.cli_options import (
    AccountOpt,
    ChainOptions,
    DeploymentOpt,
    DevnetOpt,
    HomeOpt,
    LogLevelOpt,
    PasswordEnvOpt,
    RpcOpt,
    check_initial_peers,
    check_model_folder,
    with_chain_options,
)
from node.errors import NodeError
from node.logs import setup_logging
from stakeswarm.commands.chain_support import (
    CliInputError,
    Connected,
    connect,
    format_tokens,
    reporting,
    when,
)
from stakeswarm.home import Home

app = typer.Typer(
    help="Generate text from the swarm, paying per token; the client's wallet and channels.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
wallet_app = typer.Typer(help="The client's wallet: an encrypted keystore.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")

KEYSTORE_NAME = "keystore.json"  # the default keystore: <home>/client/keystore.json

KeystoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--keystore",
        help="The client's keystore (default <home>/client/keystore.json; not with --devnet).",
        show_default=False,
    ),
]


def default_keystore(home: Path | None) -> Path:
    return Home.resolve(home).root / "client" / KEYSTORE_NAME


def _with_keystore(options: ChainOptions) -> ChainOptions:
    """`options`, without --devnet and --keystore: with the default keystore."""
    if options.devnet or options.keystore is not None:
        return options
    keystore = default_keystore(options.home)
    if not keystore.is_file():
        raise CliInputError(
            f"no keystore at {keystore}: create one with `stakeswarm client wallet create`, "
            "give --keystore FILE, or use --devnet"
        )
    return replace(options, keystore=keystore)


class _Printer:
    """A transformers streamer that prints the new text as tokens arrive (batch of one) and
    counts the new tokens (what an interrupted run generated)."""

    def __init__(self, tokenizer: Any, console: Console) -> None:
        from transformers import TextStreamer

        printer = self
        self.tokens = 0

        class _Streamer(TextStreamer):
            def put(self, value: Any) -> None:
                if not self.next_tokens_are_prompt:
                    printer.tokens += int(value.shape[-1]) if value.dim() else 1
                super().put(value)

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                console.file.write(text + ("\n" if stream_end else ""))
                console.file.flush()

        self.streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> Any:
    if not chat:
        return tokenizer(prompt, return_tensors="pt")["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise CliInputError("--chat: this model's tokenizer has no chat template")
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
    )
    return encoded["input_ids"] if isinstance(encoded, Mapping) else encoded


@app.command("generate")
@with_chain_options(keystore=KeystoreOpt)
def generate(
    prompt: Annotated[str, typer.Argument(help="The text to continue (or the chat message).")],
    model: Annotated[
        Path,
        typer.Option(help="Local model folder (config, tokenizer, embeddings and head)."),
    ],
    initial_peers: Annotated[
        list[str],
        typer.Option(help="Multiaddr of a swarm member (repeat).", show_default=False),
    ],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 32,
    chat: Annotated[bool, typer.Option(help="Apply the tokenizer's chat template.")] = False,
    model_name: Annotated[
        str | None,
        typer.Option(help="The swarm's name of the model (default: the folder's name)."),
    ] = None,
    max_price: Annotated[
        str | None,
        typer.Option(help="Tokens per generated token, through the whole route, at most."),
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="Tokens this run may spend at most.", show_default=False)
    ] = None,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature; 0 decodes greedily.")
    ] = 0.0,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus sampling mass.", show_default=False)
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Sample among the k likeliest.", show_default=False)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed for sampling.", show_default=False)
    ] = None,
    dtype: Annotated[str, typer.Option(help="Hidden states on the wire.")] = ClientConfig.dtype,
    log_level: LogLevelOpt = "WARNING",
    *,
    options: ChainOptions,
) -> None:
    """Generate text through the swarm, streaming it, and pay every server per token."""
    # local inputs first: a typo ends here, before any chain, ledger or network work
    peers = check_initial_peers(initial_peers)
    check_model_folder(model)
    if max_new_tokens < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--max-new-tokens")
    if temperature < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--temperature")
    import torch

    from client.model import DistributedModelForCausalLM, load_tokenizer
    from node.families import load_config

    setup_logging(log_level)
    errors = Console(stderr=True, soft_wrap=True)
    with reporting() as console:
        try:
            load_config(model)
        except NodeError as exc:
            raise CliInputError(str(exc)) from None
        tokenizer = load_tokenizer(model)
        if tokenizer is None:
            raise CliInputError(f"{model} has no tokenizer files")
        ids = _prompt_ids(tokenizer, prompt, chat)
        conn = connect(_with_keystore(options), role="client", sign=True)
        assert conn.signer is not None
        config = ClientConfig(
            model_path=model,
            model_name=model_name,
            dtype=dtype,
            initial_peers=peers,
            rpc_url=options.rpc,
            home=Home.resolve(options.home).root,
            max_price=None if max_price is None else conn.tokens(max_price, "--max-price"),
            budget=None if budget is None else conn.tokens(budget, "--budget"),
        )
        try:
            llm = DistributedModelForCausalLM.from_pretrained(
                model, initial_peers=peers, wallet=conn.signer,
                deployment=conn.deployment, config=config,
            )  # fmt: skip
        except (ClientError, NodeError) as exc:
            errors.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
        try:
            sampling: dict[str, Any] = {"do_sample": temperature > 0}
            if temperature > 0:
                sampling.update(temperature=temperature, top_p=top_p, top_k=top_k)
                if seed is not None:
                    torch.manual_seed(seed)
            printer = _Printer(llm.tokenizer, console)
            stopped: str | None = None
            interrupted = False
            began = time.perf_counter()
            with llm.inference_session(max_length=ids.shape[1] + max_new_tokens) as session:
                try:
                    out = llm.generate(
                        ids, session=session, max_new_tokens=max_new_tokens,
                        streamer=printer.streamer, **sampling,
                    )  # fmt: skip
                    new_tokens = int(out.shape[1] - ids.shape[1])
                except BudgetExceededError as exc:
                    stopped = str(exc)
                    out = exc.partial if exc.partial is not None else ids
                    new_tokens = int(out.shape[1] - ids.shape[1])
                except KeyboardInterrupt:  # Ctrl-C: say so, and what it cost
                    interrupted = True
                    new_tokens = printer.tokens
                elapsed = time.perf_counter() - began
                console.file.write("\n")
                console.file.flush()
                if stopped:
                    errors.print(f"[yellow]stopped:[/] {escape(stopped)}")
                if interrupted:
                    paid = sum(served.cost for served in session.served.values())
                    errors.print(
                        f"[yellow]interrupted[/] after {new_tokens} tokens; paid "
                        f"{conn.show(paid)} this run"
                    )
                _summary(console, conn, llm, session, new_tokens, elapsed)
        except ClientError as exc:
            errors.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
        finally:
            llm.close()
        if interrupted:
            raise typer.Exit(130)
        if stopped:
            raise typer.Exit(1)


@contextmanager
def _wallet_ledger(options: ChainOptions) -> Iterator[tuple[Connected, Any, Any]]:
    """The signing connection, the wallet's client ledger (opened for this deployment) and the
    contracts writing as the wallet through that ledger; the ledger is closed on exit."""
    from ledger.db import open_deployment_ledger, sqlite_url

    conn = connect(options, role="client", sign=True)
    assert conn.signer is not None
    path = Home.resolve(options.home).root / "client" / conn.signer.address / "ledger.sqlite"
    ledger = open_deployment_ledger(sqlite_url(path), conn.chain, conn.deployment)
    try:
        sender = conn.chain.sender(conn.signer, journal=ledger.tx_journal())
        yield conn, ledger, conn.contracts.with_sender(sender)
    finally:
        ledger.close()


def _column(name: str) -> dict[str, Any]:
    # addresses are copied from here: never cut them short
    return {"min_width": 42, "no_wrap": True} if name == "server" else {}


def print_rows(
    console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    """`rows` under `title`: a table where it fits the console's width, else one block of
    `column  value` lines per row, so that no figure is ever cut short (a pipe is 80 columns
    wide). Nothing at all for no rows."""
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, **_column(column))
    for row in rows:
        table.add_row(*row)
    unbounded = console.options.update(max_width=2**16)  # the width it needs to cut nothing
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
        return
    console.print(f"[italic]{title}[/]")
    width = max(len(column) for column in columns)
    for index, row in enumerate(rows):
        if index:
            console.print()
        for column, value in zip(columns, row, strict=True):
            console.print(f"  {column:<{width}}  {value}", soft_wrap=True)


def _short(peer_id: str) -> str:
    return f"…{peer_id[-10:]}"


def _summary(
    console: Console, conn: Connected, llm: Any, session: Any, new_tokens: int, elapsed: float
) -> None:
    route = [
        (f"{hop.start}:{hop.end}", hop.address, _short(hop.peer_id), conn.show(hop.price_per_token))
        for hop in session.route
    ]
    print_rows(console, "Route", ("blocks", "server", "peer", "price per token"), route)
    rate = new_tokens / elapsed if elapsed > 0 else 0.0
    console.print(
        f"{new_tokens} tokens in {elapsed:.2f} s: [bold]{rate:.2f} tokens/s[/]"
        + (f"  ({session.failovers} failover(s))" if session.failovers else "")
    )
    served = list(session.served.values())
    if not served:
        console.print("nothing paid this run")
        return
    paid = [(s.address, str(s.tokens), conn.show(s.cost)) for s in served]
    paid.append(("total", "", conn.show(sum(s.cost for s in served))))
    print_rows(console, "Paid this run", ("server", "tokens", "paid"), paid)
    _channels_table(console, conn, llm.client.payments.known_channels(), title="Channels")


def _channels_table(console: Console, conn: Connected, channels: list[Any], *, title: str) -> None:
    now = conn.chain.timestamp()
    rows = [
        (
            str(channel.channel_id),
            channel.server,
            conn.show(channel.deposit),
            conn.show(channel.signed),
            conn.show(channel.deposit - channel.signed),
            when(channel.expiry, now=now),
        )
        for channel in channels
    ]
    columns = ("channel", "server", "deposit", "paid", "left", "expiry")
    print_rows(console, title, columns, rows)


@app.command("channels")
@with_chain_options(keystore=KeystoreOpt)
def channels(
    reclaim: Annotated[
        bool, typer.Option(help="Reclaim what is left in every expired channel.")
    ] = False,
    *,
    options: ChainOptions,
) -> None:
    """List the wallet's payment channels (deposit, paid, redeemed, expiry); reclaim expired."""
    from client.payments import Budget, Payments
    from ledger.db import ChannelStatus, client_channels

    with reporting() as console:
        options = _with_keystore(options)
        with _wallet_ledger(options) as (conn, ledger, contracts):
            assert conn.signer is not None
            payments = Payments(
                contracts=contracts,
                ledger=ledger,
                account=conn.signer,
                chain_id=conn.chain.chain_id,
                budget=Budget(None, conn.units),
                units=conn.units,
            )
            if reclaim:
                try:
                    done = payments.reclaim_expired()
                except ClientError as exc:
                    raise CliInputError(str(exc)) from None
                for item in done:
                    console.print(
                        f"[green]✓[/] reclaimed channel {item.channel_id}: "
                        f"{conn.show(item.refunded)} back  tx {item.tx_hash}"
                    )
                if not done:
                    console.print("no expired channel to reclaim")
            else:
                payments.refresh()
            now = conn.chain.timestamp()
            with ledger.begin() as db:
                rows = client_channels(
                    db, conn.chain.chain_id, payments.contract, conn.signer.address
                )
            listed = []
            for row in rows:
                status = row.status.value
                if row.status is ChannelStatus.OPEN and row.expiry <= now:
                    status = "expired (reclaim with --reclaim)"
                listed.append(
                    (
                        str(row.channel_id),
                        row.server,
                        conn.show(row.deposit),
                        conn.show(row.voucher_amount),
                        conn.show(row.redeemed),
                        when(row.expiry, now=now),
                        status,
                    )
                )
            columns = ("channel", "server", "deposit", "paid", "redeemed", "expiry", "status")
            print_rows(console, f"Channels of {conn.signer.address}", columns, listed)
            if not rows:
                console.print("no channels yet")


@app.command("check-receipts")
@with_chain_options(keystore=KeystoreOpt)
def check_receipts(
    rate: Annotated[
        float,
        typer.Option(help="Share of the receipts to challenge on-chain (0 to 1)."),
    ] = 0.01,
    *,
    options: ChainOptions,
) -> None:
    """Hold servers to their receipts: challenge a sample of the receipts past their commit
    deadline (each costs the Slasher's challenge bond, which an honest server earns by
    answering) and slash the servers of earlier challenges left unanswered."""
    from client.audit import ReceiptAuditor

    with reporting() as console:
        if not 0.0 <= rate <= 1.0:
            raise CliInputError(f"--rate must be between 0 and 1, got {rate}")
        options = _with_keystore(options)
        with _wallet_ledger(options) as (conn, ledger, contracts):
            assert conn.signer is not None
            auditor = ReceiptAuditor(
                ledger,
                contracts,
                conn.signer,
                conn.units,
                rate=rate,
                from_block=conn.deployment.deploy_block,
            )
            try:
                report = auditor.check()
            except ClientError as exc:
                raise CliInputError(str(exc)) from None
            console.print(
                f"{report.eligible} receipts in their challenge window; challenged "
                f"{len(report.challenged)} now; earlier challenges: {report.answered} answered, "
                f"{report.waiting} waiting for an answer, {len(report.slashed)} slashed now"
            )
            for challenge_id in report.challenged:
                console.print(f"[yellow]challenged[/] receipt challenge {challenge_id}")
            for challenge_id in report.slashed:
                console.print(f"[red]slashed[/] the server of unanswered challenge {challenge_id}")


@wallet_app.command("create")
def wallet_create(
    keystore: KeystoreOpt = None,
    home: HomeOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Create a new key and keep it encrypted in a keystore (never overwritten)."""
    with reporting() as console:
        path = keystore or default_keystore(home)
        password = (
            PasswordSource.from_env(password_env)
            if password_env
            else PasswordSource.prompted("New keystore password: ", confirm=True)
        )
        account = create_wallet(path, password)
        console.print(f"[green]✓[/] created {escape(str(path))}")
        console.print(f"  address  {account.address}")
        console.print("  fund it with stake tokens (and gas) before paying servers")


@wallet_app.command("show")
def wallet_show(
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
) -> None:
    """The wallet's address and, with a deployment (or --devnet), its balances."""
    with reporting() as console:
        if not devnet and deployment is None:
            path = keystore or default_keystore(home)
            console.print(f"address  {keystore_address(path)}")
            console.print(f"keystore {escape(str(path))}")
            return
        conn = connect(
            _with_keystore(ChainOptions(devnet, account, home, rpc, deployment, keystore, None)),
            role="client",
            sign=False,
        )
        assert conn.address is not None
        token = conn.contracts.token
        channels = conn.contracts.payment_channels.address
        console.print(f"address    {conn.address}")
        console.print(f"balance    {conn.show(token.balance_of(conn.address))}")
        console.print(f"gas        {format_tokens(conn.chain.eth_balance(conn.address), 18)} ETH")
        allowance = token.allowance(conn.address, channels)
        shown = "unlimited" if allowance >= 2**255 else conn.show(allowance)
        console.print(f"channels may pull  {shown}")
