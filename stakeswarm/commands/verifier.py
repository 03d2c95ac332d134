"""`stakeswarm verifier`: audit the swarm and slash cheaters; the verifier's status; report
equivocating nodes.

    stakeswarm verifier run --model ./SmolLM2 --devnet [--sample-rate 0.05] \\
        --initial-peers /ip4/127.0.0.1/tcp/4242/p2p/Qm... [--http-port 8100]
    stakeswarm verifier run --model ./SmolLM2 --rpc URL --deployment FILE --keystore FILE ...
    stakeswarm verifier status (--devnet [--account verifier-1] | --keystore FILE | --url URL)
        [--db URL]
    stakeswarm verifier report-equivocation (--ledger FILE | --db URL) (--devnet |
        --deployment FILE --keystore FILE) [--submit]

`run` registers the key as a verifier if it is not one yet (with --stake tokens, default the
minimum), prints its address, peer id and status API, and audits until SIGINT/SIGTERM.
`run` and `status` take the verifier's ledger database with `--db URL` (an SQLAlchemy URL:
sqlite:///FILE or postgresql://USER@HOST/DBNAME); without it, its SQLite file in --home.
`status` reads the verifier's ledger (`<home>/verifier/<address>/ledger.sqlite`), or asks a
running verifier's `/status` with --url: audits and slashes, and the audit queue (pending per
node, the recent audit rate and the time to drain it; the nodes skipped as no longer worth a
slash only from a running verifier). `report-equivocation` looks through a ledger that
kept receipts (a client's) for two receipts one node signed for the same step, and with
--submit slashes the node with them (the sender earns the bounty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from ledger.errors import LedgerError
from node.cli_options import (
    AccountOpt,
    ChainOptions,
    DbOpt,
    DeploymentOpt,
    DevnetOpt,
    HomeOpt,
    HttpPortOpt,
    KeystoreOpt,
    LogLevelOpt,
    ModelNameOpt,
    RpcOpt,
    ThreadsOpt,
    check_initial_peers,
    check_model_folder,
    parse_tokens,
    with_chain_options,
)
from node.logs import setup_logging
from stakeswarm.commands.chain_support import (
    CliInputError,
    connect,
    print_tx,
    reporting,
)
from stakeswarm.home import Home
from verifier.config import VerifierConfig

app = typer.Typer(
    help="Audit the swarm and slash cheating nodes; the verifier's status.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command("run")
@with_chain_options
def run(
    model: Annotated[
        Path,
        typer.Option(help="Local model folder with the blocks to re-run.", show_default=False),
    ],
    sample_rate: Annotated[
        float, typer.Option(help="Probability that any one committed leaf is audited.")
    ] = VerifierConfig.sample_rate,
    model_name: ModelNameOpt = None,
    stake: Annotated[
        str | None,
        typer.Option(
            help="Tokens to stake if not registered yet (default: the minimum).",
            show_default=False,
        ),
    ] = None,
    initial_peers: Annotated[
        list[str] | None,
        typer.Option(help="Multiaddr of a swarm member (repeat).", show_default=False),
    ] = None,
    http_port: HttpPortOpt = VerifierConfig.http_port,
    reveal_timeout: Annotated[
        float, typer.Option(help="Seconds one reveal may take.")
    ] = VerifierConfig.reveal_timeout,
    reveal_deadline: Annotated[
        float,
        typer.Option(
            help="Seconds a node has to reveal a sampled leaf; after it, a withheld verdict "
            "and a slash (cut to fit the batch's challenge window)."
        ),
    ] = VerifierConfig.reveal_deadline,
    retry_interval: Annotated[
        float, typer.Option(help="Seconds between reveal attempts of one leaf.")
    ] = VerifierConfig.retry_interval,
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between reads of new commits and slashes.")
    ] = VerifierConfig.poll_interval,
    from_block: Annotated[
        int | None,
        typer.Option(help="First block to sample (default: resume).", show_default=False),
    ] = None,
    token_price_eth: Annotated[
        str,
        typer.Option(
            help="ETH one stake token is worth to you: a slash whose bounty is worth less than "
            "its gas is not sent, and the node's audits are skipped."
        ),
    ] = str(VerifierConfig.token_price_eth),
    threads: ThreadsOpt = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where spans are recomputed (in float32): auto (the first CUDA device, else "
            "the CPU), cpu, cuda or cuda:N."
        ),
    ] = VerifierConfig.device,
    db_url: DbOpt = None,
    log_level: LogLevelOpt = "INFO",
    *,
    options: ChainOptions,
) -> None:
    """Follow commits, audit sampled leaves, slash cheaters (until SIGINT/SIGTERM)."""
    # local inputs first: a typo ends here, before any chain, ledger or network work
    peers = check_initial_peers(initial_peers)
    check_model_folder(model)
    from node.device import local_device
    from node.errors import NodeError
    from node.families import load_config
    from verifier.errors import VerifierError
    from verifier.service import Ready, Verifier  # heavy imports only when running

    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True)
    setup_logging(log_level)
    try:
        config = VerifierConfig(
            model_path=model,
            model_name=model_name,
            sample_rate=sample_rate,
            reveal_timeout=reveal_timeout,
            reveal_deadline=reveal_deadline,
            retry_interval=retry_interval,
            torch_threads=threads,
            device=device,
            **options.identity(),
            ledger_url=db_url,
            stake=None if stake is None else parse_tokens(stake, "--stake"),
            poll_interval=poll_interval,
            from_block=from_block,
            token_price_eth=parse_tokens(token_price_eth, "--token-price-eth"),
            initial_peers=peers,
            http_port=http_port,
        )
    except VerifierError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    try:
        load_config(model)  # config.json and a supported architecture, before the ledger opens
        local_device(device)  # and a device this machine has
    except NodeError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    def on_ready(ready: Ready) -> None:
        out.print(f"stakeswarm verifier {ready.address} auditing {ready.model}")
        out.print(f"  sample rate {ready.sample_rate:g}")
        out.print(f"  quorum      {ready.quorum}")
        out.print(f"  peer id     {ready.peer_id}")
        if ready.http_url:
            out.print(f"  status api  {ready.http_url}")
        out.print("ready", style="bold green")

    verifier = Verifier(config, on_ready=on_ready)
    try:
        verifier.run()
    except KeyboardInterrupt:
        pass
    except (VerifierError, LedgerError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    out.print("stopped")


def _print_status(console: Console, status: dict[str, Any]) -> None:
    audits, slashes = status["audits"], status["slashes"]
    console.print(f"[bold]verifier {escape(status['address'])}[/]")
    rows = [
        ("audits done", str(audits["done"])),
        ("passed", str(audits["passed"])),
        ("failed", str(audits["failed"])),
        ("withheld", str(audits["withheld"])),
        ("errors", str(audits["errors"])),
        ("pending", str(audits["pending"])),
        ("verdicts signed", str(status["verdicts_signed"])),
        ("slashes", str(slashes["recorded"])),
        ("slashes for withholding", str(slashes.get("withheld", 0))),
        ("slashes submitted", str(slashes["submitted"])),
        ("stake slashed", str(slashes["stake_taken"])),
        ("bounties earned", str(slashes["bounties_earned"])),
    ]
    queue = status.get("queue")
    if queue is not None:
        rate = queue["rate_per_s"]
        rows += [
            ("queued", str(queue["pending"])),
            ("audits skipped", str(queue.get("dropped", 0))),
            (
                "audited recently",
                f"{queue['done_recent']} in the last {queue['window_s'] / 60:g} min",
            ),
            ("audit rate", "unknown" if rate is None else f"{rate:.2f}/s"),
            ("time to drain", str(queue["estimate"])),
        ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        console.print(f"  {name:<{width}}  {escape(value)}")
    if queue is None:
        return
    if queue["per_node"]:
        console.print("  queued per node:")
        for item in queue["per_node"]:
            since = f", oldest sampled {item['oldest_utc']}" if "oldest_utc" in item else ""
            console.print(f"    {item['node']}  {item['pending']} ({item['due']} due{since})")
    if "skipped" in queue and queue["skipped"]:
        console.print("  skipped nodes (not worth a slash):")
        for item in queue["skipped"]:
            console.print(f"    {item['node']}  {escape(item['reason'])}")


@app.command("status")
def status(
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    url: Annotated[
        str | None,
        typer.Option(help="A running verifier's status API instead of its ledger."),
    ] = None,
    db_url: DbOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
) -> None:
    """Audits done, passed and failed; slashes submitted and bounties earned."""
    from ledger.db import open_ledger, sqlite_url, verifier_totals
    from ledger.units import TokenUnits
    from verifier.api import totals_document
    from verifier.queue import queue_document, queue_report

    with reporting() as console:
        if url is not None:
            try:
                response = httpx.get(f"{url.rstrip('/')}/status", timeout=10)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise CliInputError(f"cannot read {url}/status: {exc}") from None
            document = response.json()
        else:
            options = ChainOptions(devnet, account, home, rpc, deployment, keystore, None)
            conn = connect(options, role="verifier", sign=False)
            if conn.address is None:
                raise CliInputError("give --devnet [--account NAME] or --keystore FILE")
            path = Home.resolve(home).root / "verifier" / conn.address / "ledger.sqlite"
            if db_url is None and not path.is_file():
                raise CliInputError(f"no verifier ledger at {path}: has this verifier run?")
            ledger = open_ledger(sqlite_url(path) if db_url is None else db_url)
            try:
                with ledger.begin() as db:
                    totals = verifier_totals(db, conn.address)
                    queue = queue_document(queue_report(db))
            finally:
                ledger.close()
            # the skipped nodes live in a running verifier, not in its ledger
            queue.pop("skipped")
            document = {
                "address": conn.address,
                **totals_document(totals, TokenUnits(conn.decimals, conn.symbol)),
                "queue": queue,
            }
        if json_output:
            console.print_json(data=document)
            return
        _print_status(console, document)


@app.command("report-equivocation")
@with_chain_options
def report_equivocation(
    ledger_file: Annotated[
        Path | None,
        typer.Option(
            "--ledger", help="A ledger file that kept receipts (a client's).", show_default=False
        ),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="URL",
            help="A ledger database that kept receipts, instead of --ledger: sqlite:///FILE or "
            "postgresql://USER@HOST/DBNAME.",
            show_default=False,
        ),
    ] = None,
    submit: Annotated[
        bool, typer.Option(help="Slash every equivocating node found (earns the bounty).")
    ] = False,
    token_price_eth: Annotated[
        str,
        typer.Option(
            help="ETH one stake token is worth to you: a node whose slash would pay less than "
            "its gas is not slashed."
        ),
    ] = str(VerifierConfig.token_price_eth),
    *,
    options: ChainOptions,
) -> None:
    """Find two receipts one node signed for the same step, and slash it with them."""
    from ledger.chain import ContractRevert
    from ledger.db import open_ledger, sqlite_url
    from ledger.units import TokenUnits
    from verifier.equivocation import find_equivocations, receipts_in_ledger, submit_equivocation
    from verifier.worth import SlashTerms, equivocation_worth

    price = parse_tokens(token_price_eth, "--token-price-eth")

    with reporting() as console:
        if (ledger_file is None) == (db_url is None):
            raise CliInputError("give the ledger that kept the receipts: --ledger FILE or --db URL")
        if ledger_file is not None and not ledger_file.is_file():
            raise CliInputError(f"no ledger at {ledger_file}")
        conn = connect(options, role="client", sign=submit)
        ledger = open_ledger(sqlite_url(ledger_file) if ledger_file is not None else str(db_url))
        try:
            with ledger.begin() as db:
                receipts = receipts_in_ledger(db)
        finally:
            ledger.close()
        found = find_equivocations(receipts, conn.contracts.slasher.domain())
        console.print(f"{len(receipts)} receipts, {len(found)} equivocation(s)")
        for item in found:
            leaf = item.a.leaf
            console.print(
                f"  node {item.node}: session 0x{leaf.session_id.hex()[:16]}… blocks "
                f"{leaf.span_start}:{leaf.span_end} step {leaf.step}: two different receipts"
            )
            if not submit:
                continue
            params = conn.contracts.slasher.params()
            worth = equivocation_worth(
                conn.contracts.node_registry.slashable_stake(item.node),
                SlashTerms(params.slash_bps, params.bounty_bps, params.quorum),
                decimals=conn.decimals,
                token_price_eth=price,
                gas_price_wei=int(conn.chain.w3.eth.gas_price),
            )
            if not worth.worth:
                why = worth.describe(TokenUnits(conn.decimals, conn.symbol))
                console.print(f"  [yellow]not slashed[/]: not worth its gas: {escape(why)}")
                continue
            try:
                outcome = submit_equivocation(conn.contracts.slasher, item)
            except ContractRevert as exc:
                console.print(f"  [yellow]not slashed[/]: {escape(exc.signature)}")
                continue
            print_tx(
                console,
                f"slashed {item.node}: {conn.show(outcome.amount)} taken, bounty "
                f"{conn.show(outcome.bounty)}",
                outcome.tx,
            )
