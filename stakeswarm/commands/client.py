"""`stakeswarm client`: generate text from the swarm and pay per token, or chat with it; the
client's wallet and channels.

    stakeswarm client generate "I ate dosa today" --model ./SmolLM2 --max-new-tokens 32 \\
        --initial-peers /ip4/127.0.0.1/tcp/4242/p2p/Qm... --devnet [--chat] [--system TEXT] \\
        [--repetition-penalty 1.3] [--stop TEXT ...] [--max-price 0.0001] [--budget 1]
    stakeswarm client chat --model ./SmolLM2 --initial-peers ... --devnet [--system TEXT]
    stakeswarm client wallet create [--keystore FILE]        # a new key, encrypted
    stakeswarm client wallet show [--keystore FILE | --devnet] # address (and balances)
    stakeswarm client channels [--reclaim] (--devnet | --deployment FILE --keystore FILE)
    stakeswarm client check-receipts [--rate 0.01] (--devnet | ...)

Every command that keeps or reads the client's ledger takes `--db URL` (an SQLAlchemy URL:
sqlite:///FILE or postgresql://USER@HOST/DBNAME); without it, the wallet's SQLite file
`<home>/client/<address>/ledger.sqlite`.

Without --devnet, commands read the deployment file given and sign with the keystore given,
by default `<home>/client/keystore.json`. Amounts (--max-price per token through the whole
route, --budget for the whole run) are whole stake tokens with decimals. `generate` streams
the text as it arrives, then prints the route, the speed, what each server was paid and the
channels' balances; Ctrl-C stops it with a newline, `interrupted` and what was paid on stderr,
then the same summary (exit status 130). Peer addresses, the model folder, --chat and --system
are checked before any chain, ledger or network work. `chat` lives in
`stakeswarm.commands.chat`; what both share in `stakeswarm.commands.client_support`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from client.errors import BudgetExceededError, ClientError
from ledger.wallet import PasswordSource, create_wallet, keystore_address
from node.cli_options import (
    AccountOpt,
    ChainOptions,
    DbOpt,
    DeploymentOpt,
    DevnetOpt,
    HomeOpt,
    PasswordEnvOpt,
    RpcOpt,
    with_chain_options,
)
from node.logs import setup_logging
from stakeswarm.commands.chain_support import (
    CliInputError,
    Connected,
    connect,
    format_tokens,
    reporting,
    when,
)
from stakeswarm.commands.chat import chat
from stakeswarm.commands.client_support import (
    CtrlC,
    GenerationOptions,
    KeystoreOpt,
    Printer,
    check_db_url,
    check_system,
    connect_client,
    default_keystore,
    encode,
    load_local_tokenizer,
    open_model,
    print_rows,
    render_chat,
    summary,
    with_generation_options,
    with_keystore,
)
from stakeswarm.home import Home

__all__ = ["app"]

app = typer.Typer(
    help="Generate text from the swarm (or chat with it), paying per token; the client's "
    "wallet and channels.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
wallet_app = typer.Typer(help="The client's wallet: an encrypted keystore.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")
app.command("chat")(chat)


def _prompt_ids(tokenizer: Any, prompt: str, chat: bool, system: str | None) -> Any:
    if not chat:
        return tokenizer(prompt, return_tensors="pt")["input_ids"]
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        check_system(tokenizer, system, what="--system")
        messages.insert(0, {"role": "system", "content": system})
    text = render_chat(tokenizer, messages, add_generation_prompt=True, what="--chat")
    return encode(tokenizer, text)


@app.command("generate")
@with_chain_options(keystore=KeystoreOpt)
@with_generation_options
def generate(
    prompt: Annotated[str, typer.Argument(help="The text to continue (or the chat message).")],
    chat: Annotated[bool, typer.Option(help="Apply the tokenizer's chat template.")] = False,
    *,
    generation: GenerationOptions,
    options: ChainOptions,
) -> None:
    """Generate text through the swarm, streaming it, and pay every server per token."""
    # local inputs first: a typo ends here, before any chain, ledger or network work
    peers = generation.check()
    setup_logging(generation.log_level)
    errors = Console(stderr=True, soft_wrap=True)
    with reporting() as console:
        tokenizer = load_local_tokenizer(generation.model)
        # a system message only makes sense in a chat: it implies --chat
        ids = _prompt_ids(tokenizer, prompt, chat or generation.system is not None,
                          generation.system)  # fmt: skip
        conn = connect_client(options)
        llm = open_model(generation, peers, conn, options)
        try:
            decoding = generation.decoding(llm.tokenizer)
            ctrl_c = CtrlC()
            printer = Printer(llm.tokenizer, console.file, generation.stop, ctrl_c)
            stopped: str | None = None
            interrupted = False
            max_new_tokens = generation.max_new_tokens
            began = time.perf_counter()
            with ctrl_c, llm.inference_session(max_length=ids.shape[1] + max_new_tokens) as session:
                try:
                    out = llm.generate(
                        ids, session=session, max_new_tokens=max_new_tokens,
                        streamer=printer, **decoding,
                    )  # fmt: skip
                    new_tokens = int(out.shape[1] - ids.shape[1])
                except BudgetExceededError as exc:
                    stopped = str(exc)
                    out = exc.partial if exc.partial is not None else ids
                    new_tokens = int(out.shape[1] - ids.shape[1])
                    printer.end()
                except KeyboardInterrupt:  # Ctrl-C: say so, and what it cost
                    interrupted = True
                    new_tokens = printer.tokens
                    console.file.write("\n")
                    console.file.flush()
                if ctrl_c.pressed and not interrupted:  # pressed after the last token
                    interrupted = True
                    new_tokens = printer.tokens
                elapsed = time.perf_counter() - began
                if stopped:
                    errors.print(f"[yellow]stopped:[/] {escape(stopped)}")
                if interrupted:
                    paid = sum(served.cost for served in session.served.values())
                    errors.print(
                        f"[yellow]interrupted[/] after {new_tokens} tokens; paid "
                        f"{conn.show(paid)} this run"
                    )
                summary(
                    console, conn, llm, route=session.route, served=session.served.values(),
                    failovers=session.failovers, new_tokens=new_tokens, elapsed=elapsed,
                )  # fmt: skip
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
def _wallet_ledger(
    options: ChainOptions, db_url: str | None
) -> Iterator[tuple[Connected, Any, Any]]:
    """The signing connection, the wallet's client ledger (`--db`, else its SQLite file in
    --home; opened for this deployment) and the contracts writing as the wallet through that
    ledger; the ledger is closed on exit."""
    from ledger.db import chosen_ledger_url, open_deployment_ledger

    check_db_url(db_url)
    conn = connect(options, role="client", sign=True)
    assert conn.signer is not None
    path = Home.resolve(options.home).root / "client" / conn.signer.address / "ledger.sqlite"
    ledger = open_deployment_ledger(chosen_ledger_url(db_url, path), conn.chain, conn.deployment)
    try:
        sender = conn.chain.sender(conn.signer, journal=ledger.tx_journal())
        yield conn, ledger, conn.contracts.with_sender(sender)
    finally:
        ledger.close()


@app.command("channels")
@with_chain_options(keystore=KeystoreOpt)
def channels(
    reclaim: Annotated[
        bool, typer.Option(help="Reclaim what is left in every expired channel.")
    ] = False,
    db_url: DbOpt = None,
    *,
    options: ChainOptions,
) -> None:
    """List the wallet's payment channels (deposit, paid, redeemed, expiry); reclaim expired."""
    from client.payments import Budget, Payments
    from ledger.db import ChannelStatus, client_channels

    with reporting() as console:
        options = with_keystore(options)
        with _wallet_ledger(options, db_url) as (conn, ledger, contracts):
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
    db_url: DbOpt = None,
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
        options = with_keystore(options)
        with _wallet_ledger(options, db_url) as (conn, ledger, contracts):
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
            with_keystore(ChainOptions(devnet, account, home, rpc, deployment, keystore, None)),
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
