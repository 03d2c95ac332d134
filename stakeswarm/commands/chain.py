"""`stakeswarm chain`: on-chain actions for node operators, clients and verifiers.

Thin commands over `ledger.contracts`. `chain deploy` deploys the contracts to a chain
(see `stakeswarm.commands.chain_deploy`); every other command takes either
    --devnet [--account NAME|ROLE|INDEX] [--home DIR]      the devnet's deployment and dev keys
or
    --deployment FILE [--rpc URL] [--keystore FILE [--password-env NAME]]
(the keystore password is prompted for unless --password-env names a variable holding it).

Amounts are in whole stake tokens and may have decimals (`--stake 100` is 100 tokens,
`--price 0.001`); they are converted with the token's on-chain `decimals()` (18).
A revert prints the decoded contract error, amounts in tokens and times as dates, e.g.
`StakeInsufficient(account=0x…, stake=10 SWARM, needed=30 SWARM)`, and exits with status 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import base58
import typer
from rich.console import Console

from ledger.types import ChannelId, Wei, model_id
from node.cli_options import ChainOptions, DbOpt, with_chain_options
from stakeswarm.commands.chain_deploy import deploy
from stakeswarm.commands.chain_support import (
    CliInputError,
    Connected,
    acting_address,
    connect,
    format_tokens,
    parse_address,
    parse_peer_id,
    parse_signature,
    parse_span,
    parse_tokens,
    print_fields,
    print_tx,
    reporting,
)
from stakeswarm.home import Home

if TYPE_CHECKING:  # web3 loads in the commands that reach a chain, not with `chain --help`
    from ledger.contracts import NodeInfo, VerifierInfo
    from node.earnings import EarningsReport

app = typer.Typer(
    help="On-chain actions: stake as a node or verifier, pay through channels, balances.",
    no_args_is_help=True,
)
node_app = typer.Typer(
    help="Register, stake, unbond, rebond and inspect nodes; what a node earned.",
    no_args_is_help=True,
)
channel_app = typer.Typer(
    help="Open, inspect, redeem and reclaim payment channels.", no_args_is_help=True
)
verifier_app = typer.Typer(
    help="Register, unbond, rebond, withdraw and inspect verifiers.", no_args_is_help=True
)
app.command("deploy")(deploy)
app.add_typer(node_app, name="node")
app.add_typer(channel_app, name="channel")
app.add_typer(verifier_app, name="verifier")


def _print_node(console: Console, conn: Connected, info: NodeInfo) -> None:
    rows: list[tuple[str, str]] = []
    active = conn.contracts.node_registry.is_active(info.address)
    rows.append(("registered", "yes" if info.registered else "no"))
    rows.append(("active", "yes" if active else "no"))
    if info.registered:
        rows.append(("model id", "0x" + info.model_id.hex()))
        rows.append(("blocks", f"{info.span_start}:{info.span_end} ({info.span_length} blocks)"))
        rows.append(("price per token per block", conn.show(info.price_per_token_per_block)))
        rows.append(("price per token", conn.show(info.price_per_token)))
        rows.append(("peer id", base58.b58encode(info.peer_id).decode()))
    rows.append(("stake", conn.show(info.stake)))
    rows.append(("unbonding", conn.show(info.unbonding)))
    rows.append(("unbonding release", conn.when(info.unbonding_release_at)))
    rows.append(("last commit", conn.when(info.last_commit_at)))
    if info.unbonding:
        # the release, or the end of the last commit's challenge window if that is later
        withdrawable = conn.contracts.node_registry.withdrawable_at(info.address)
        rows.append(("withdrawable after", conn.when(withdrawable)))
    print_fields(console, f"Node {info.address}", rows)


def _print_verifier(console: Console, conn: Connected, info: VerifierInfo) -> None:
    active = conn.contracts.verifier_registry.is_active(info.address)
    rows = [
        ("registered", "yes" if info.registered else "no"),
        ("active", "yes" if active else "no"),
        ("stake", conn.show(info.stake)),
        ("unbonding", conn.show(info.unbonding)),
        ("unbonding release", conn.when(info.unbonding_release_at)),
    ]
    print_fields(console, f"Verifier {info.address}", rows)


# --- node ---------------------------------------------------------------------------------


@node_app.command("register")
@with_chain_options
def node_register(
    model: Annotated[str, typer.Option(help="Model name, e.g. SmolLM2-135M-Instruct.")],
    blocks: Annotated[str, typer.Option(help="Span START:END of blocks served (END excluded).")],
    price: Annotated[str, typer.Option(help="Price per token per block, in tokens (e.g. 0.001).")],
    peer_id: Annotated[str, typer.Option(help="libp2p peer id of the node's server (base58).")],
    stake: Annotated[
        str,
        typer.Option(
            help="Stake in tokens (e.g. 100); at least the registry's stake per block x blocks."
        ),
    ],
    *,
    options: ChainOptions,
) -> None:
    """Register as a node for a span of a model's blocks, approving the stake if needed."""
    with reporting() as console:
        span_start, span_end = parse_span(blocks)
        peer = parse_peer_id(peer_id)
        conn = connect(options, role="node", sign=True)
        amount = conn.tokens(stake, "--stake")
        registry = conn.contracts.node_registry
        result = registry.register_with_approve(
            model_id(model),
            span_start,
            span_end,
            conn.tokens(price, "--price"),
            peer,
            amount,
            on_approval=lambda approval: print_tx(console, "approve stake", approval),
        )
        print_tx(console, f"registered for {model} blocks {span_start}:{span_end}", result)
        assert conn.address is not None
        _print_node(console, conn, registry.get_node(conn.address))


@node_app.command("add-stake")
@with_chain_options
def node_add_stake(
    amount: Annotated[str, typer.Option(help="Tokens to add to the stake (e.g. 50).")],
    *,
    options: ChainOptions,
) -> None:
    """Add tokens to your node's active stake, approving them if needed."""
    with reporting() as console:
        conn = connect(options, role="node", sign=True)
        value = conn.tokens(amount, "--amount")
        registry = conn.contracts.node_registry
        result = registry.add_stake_with_approve(
            value, on_approval=lambda approval: print_tx(console, "approve stake", approval)
        )
        print_tx(console, f"added {conn.show(value)} to the stake", result)
        assert conn.address is not None
        _print_node(console, conn, registry.get_node(conn.address))


@node_app.command("unbond")
@with_chain_options
def node_unbond(
    amount: Annotated[str, typer.Option(help="Tokens to move from stake to unbonding (e.g. 50).")],
    *,
    options: ChainOptions,
) -> None:
    """Start unbonding stake; it stays slashable until you withdraw it after the delay."""
    with reporting() as console:
        conn = connect(options, role="node", sign=True)
        value = conn.tokens(amount, "--amount")
        registry = conn.contracts.node_registry
        print_tx(console, f"unbonding {conn.show(value)}", registry.unbond(value))
        assert conn.address is not None
        _print_node(console, conn, registry.get_node(conn.address))


@node_app.command("rebond")
@with_chain_options
def node_rebond(
    amount: Annotated[
        str | None,
        typer.Option(help="Tokens to move back from unbonding to stake (default: all of it)."),
    ] = None,
    *,
    options: ChainOptions,
) -> None:
    """Move unbonding stake back into your node's active stake (no tokens move)."""
    # what stays unbonding keeps its release time; `node serve` rebonds by itself when it
    # needs stake (node.registration)
    with reporting() as console:
        conn = connect(options, role="node", sign=True)
        registry = conn.contracts.node_registry
        assert conn.address is not None
        info = registry.get_node(conn.address)
        value = _rebond_amount(conn, amount, info.unbonding)
        print_tx(console, f"rebonded {conn.show(value)}", registry.rebond(value))
        _print_node(console, conn, registry.get_node(conn.address))


def _rebond_amount(conn: Connected, amount: str | None, unbonding: int) -> Wei:
    """`--amount` in base units, or all of `unbonding` without it; refused when nothing is
    unbonding (the registry would revert)."""
    if not unbonding:
        raise CliInputError(
            f"nothing to rebond: {conn.address} has no unbonding stake (see `unbond`)"
        )
    return Wei(unbonding) if amount is None else conn.tokens(amount, "--amount")


@node_app.command("earnings")
@with_chain_options
def node_earnings(
    address: Annotated[str | None, typer.Argument(help="Node address (default: yours).")] = None,
    db_url: DbOpt = None,
    *,
    options: ChainOptions,
) -> None:
    """What your node earned per channel: deposit, redeemed, owed (the node's ledger: --db, or
    its file in --home), expiry."""
    # owed: the node's latest voucher minus what the chain shows redeemed; it needs the node's
    # ledger (--db, else the file in --home), without which only the chain's side is shown
    from ledger.db import (  # SQLAlchemy: here
        chosen_ledger_url,
        describe_url,
        held_vouchers,
        open_deployment_ledger,
    )
    from ledger.errors import LedgerDbError
    from node.earnings import node_earnings as report_of

    with reporting() as console:
        conn = connect(options, role="node", sign=False)
        node = acting_address(conn, address)
        contract = conn.contracts.payment_channels
        channels = contract.channels_of_server(node, from_block=conn.deployment.deploy_block)
        path = Home.resolve(options.home).root / "node" / node / "ledger.sqlite"
        vouchers: dict[int, int] | None = None
        why_unknown = f"no node ledger at {path} (give the node's --home, or its --db)"
        if db_url is not None or path.exists():
            where = path if db_url is None else describe_url(db_url)
            try:
                url = chosen_ledger_url(db_url, path)
                ledger = open_deployment_ledger(url, conn.chain, conn.deployment)
                try:
                    with ledger.begin() as db:
                        vouchers = held_vouchers(db, conn.chain.chain_id, contract.address)
                finally:
                    ledger.close()
            except LedgerDbError as exc:
                why_unknown = f"the node ledger at {where} cannot be read: {exc}"
        report = report_of(channels, vouchers, conn.chain.timestamp())
        _print_earnings(console, conn, node, report, None if vouchers is not None else why_unknown)


def _print_earnings(
    console: Console, conn: Connected, node: str, report: EarningsReport, why_unknown: str | None
) -> None:
    def owed(amount: int | None) -> str:
        return "unknown" if amount is None else conn.show(amount)

    if not report.channels:
        console.print(f"no payment channel was opened to {node}")
        return
    for row in report.channels:
        channel = row.channel
        rows = [
            ("client", channel.client),
            ("deposit", conn.show(channel.deposit)),
            ("redeemed", conn.show(channel.redeemed)),
            ("owed", owed(row.owed)),
            ("expiry", conn.when(channel.expiry)),
        ]
        if row.lost:
            rows.append(("lost", f"{conn.show(row.lost)} (signed, not redeemed before expiry)"))
        print_fields(console, f"Channel {channel.channel_id} ({row.state})", rows)
    totals = [
        ("channels", str(len(report.channels))),
        ("deposit", conn.show(report.deposit)),
        ("redeemed", conn.show(report.redeemed)),
        ("owed", owed(report.owed)),
    ]
    if report.lost:
        totals.append(("lost", conn.show(report.lost)))
    print_fields(console, f"Earnings of node {node}", totals)
    if why_unknown is not None:
        console.print(f"owed is unknown: {why_unknown}; the chain shows only what was redeemed")


@node_app.command("withdraw")
@with_chain_options
def node_withdraw(
    *,
    options: ChainOptions,
) -> None:
    """Withdraw your node's unbonded stake once its release time has passed."""
    with reporting() as console:
        conn = connect(options, role="node", sign=True)
        result = conn.contracts.node_registry.withdraw()
        amount = result.event("StakeWithdrawn").args["amount"]
        print_tx(console, f"withdrew {conn.show(amount)}", result)
        assert conn.address is not None
        _print_node(console, conn, conn.contracts.node_registry.get_node(conn.address))


@node_app.command("show")
@with_chain_options
def node_show(
    address: Annotated[str | None, typer.Argument(help="Node address (default: yours).")] = None,
    *,
    options: ChainOptions,
) -> None:
    """Show a node's registration and stake."""
    with reporting() as console:
        conn = connect(options, role="node", sign=False)
        node = acting_address(conn, address)
        _print_node(console, conn, conn.contracts.node_registry.get_node(node))


# --- channel ------------------------------------------------------------------------------


def _print_channel(console: Console, conn: Connected, channel_id: ChannelId) -> None:
    channel = conn.contracts.payment_channels.get_channel(channel_id)
    rows = [
        ("client", channel.client),
        ("server", channel.server),
        ("deposit", conn.show(channel.deposit)),
        ("redeemed", conn.show(channel.redeemed)),
        ("remaining", conn.show(channel.remaining)),
        ("expiry", conn.when(channel.expiry)),
        ("closed", "yes" if channel.closed else "no"),
    ]
    print_fields(console, f"Channel {channel_id}", rows)


@channel_app.command("open")
@with_chain_options
def channel_open(
    server: Annotated[str, typer.Option(help="Address of the server to pay.")],
    deposit: Annotated[str, typer.Option(help="Tokens to escrow (e.g. 10).")],
    duration: Annotated[int, typer.Option(help="Seconds until the channel expires.")],
    *,
    options: ChainOptions,
) -> None:
    """Open a payment channel to a server, approving the deposit if needed."""
    with reporting() as console:
        server_address = parse_address(server, "--server")
        if duration <= 0:
            raise CliInputError("--duration must be a positive number of seconds")
        conn = connect(options, role="client", sign=True)
        value = conn.tokens(deposit, "--deposit")
        channels = conn.contracts.payment_channels
        expiry = conn.chain.timestamp() + duration
        result = channels.open_with_approve(
            server_address,
            value,
            expiry,
            on_approval=lambda approval: print_tx(console, "approve deposit", approval),
        )
        channel_id = channels.opened_channel_id(result)
        print_tx(console, f"opened channel {channel_id}", result)
        _print_channel(console, conn, channel_id)


@channel_app.command("show")
@with_chain_options
def channel_show(
    channel_id: Annotated[int, typer.Argument(help="Channel id.")],
    *,
    options: ChainOptions,
) -> None:
    """Show a payment channel."""
    with reporting() as console:
        conn = connect(options, role="client", sign=False)
        _print_channel(console, conn, ChannelId(channel_id))


@channel_app.command("redeem")
@with_chain_options
def channel_redeem(
    channel_id: Annotated[int, typer.Argument(help="Channel id.")],
    amount: Annotated[str, typer.Option(help="The voucher's cumulative amount, in tokens.")],
    signature: Annotated[
        str, typer.Option(help="The client's voucher signature (0x-hex, 65 bytes).")
    ],
    *,
    options: ChainOptions,
) -> None:
    """As the channel's server, redeem a client's voucher (paid: amount minus redeemed)."""
    with reporting() as console:
        raw_signature = parse_signature(signature)
        conn = connect(options, role="node", sign=True)
        value = conn.tokens(amount, "--amount")
        channels = conn.contracts.payment_channels
        result = channels.redeem(ChannelId(channel_id), value, raw_signature)
        paid = result.event("VoucherRedeemed").args["paid"]
        print_tx(console, f"redeemed {conn.show(paid)} from channel {channel_id}", result)
        _print_channel(console, conn, ChannelId(channel_id))


@channel_app.command("reclaim")
@with_chain_options
def channel_reclaim(
    channel_id: Annotated[int, typer.Argument(help="Channel id.")],
    *,
    options: ChainOptions,
) -> None:
    """As the client, after expiry, take back what the server did not redeem."""
    with reporting() as console:
        conn = connect(options, role="client", sign=True)
        result = conn.contracts.payment_channels.reclaim(ChannelId(channel_id))
        refunded = result.event("ChannelReclaimed").args["refunded"]
        print_tx(console, f"reclaimed {conn.show(refunded)} from channel {channel_id}", result)
        _print_channel(console, conn, ChannelId(channel_id))


# --- verifier -----------------------------------------------------------------------------


@verifier_app.command("register")
@with_chain_options
def verifier_register(
    stake: Annotated[str, typer.Option(help="Stake in tokens (at least the registry's minimum).")],
    *,
    options: ChainOptions,
) -> None:
    """Register as a verifier, approving the stake if needed."""
    with reporting() as console:
        conn = connect(options, role="verifier", sign=True)
        value = conn.tokens(stake, "--stake")
        registry = conn.contracts.verifier_registry
        result = registry.register_with_approve(
            value, on_approval=lambda approval: print_tx(console, "approve stake", approval)
        )
        print_tx(console, f"registered as a verifier with {conn.show(value)}", result)
        assert conn.address is not None
        info = registry.get_verifier(conn.address)
        console.print(
            f"verifier {info.address}: stake {conn.show(info.stake)}, "
            f"active {'yes' if registry.is_active(info.address) else 'no'}"
        )


@verifier_app.command("unbond")
@with_chain_options
def verifier_unbond(
    amount: Annotated[str, typer.Option(help="Tokens to move from stake to unbonding (e.g. 50).")],
    *,
    options: ChainOptions,
) -> None:
    """Start unbonding verifier stake; what stays must be the minimum or nothing (you leave)."""
    from ledger.chain import ContractRevert  # web3: only in commands that reach a chain

    with reporting() as console:
        conn = connect(options, role="verifier", sign=True)
        value = conn.tokens(amount, "--amount")
        registry = conn.contracts.verifier_registry
        assert conn.address is not None
        try:
            result = registry.unbond(value)
        except ContractRevert as exc:
            if exc.name == "StakeInsufficient":  # it would keep less than the minimum
                _explain_verifier_minimum(conn, registry.get_verifier(conn.address))
            raise
        print_tx(console, f"unbonding {conn.show(value)}", result)
        _print_verifier(console, conn, registry.get_verifier(conn.address))


def _explain_verifier_minimum(conn: Connected, info: VerifierInfo) -> None:
    """What a verifier may unbond: down to the registry's minimum, or everything to leave."""
    minimum = conn.contracts.verifier_registry.min_stake()
    everything = f"--amount {format_tokens(info.stake, conn.decimals)} to leave"
    allowed = everything
    if info.stake > minimum:
        allowed = f"--amount {format_tokens(info.stake - minimum, conn.decimals)} at most, or "
        allowed += everything
    Console(stderr=True, soft_wrap=True).print(
        f"a verifier keeps at least {conn.show(minimum)} staked, or unbonds all of it to leave "
        f"the registry: with {conn.show(info.stake)} staked, {allowed}"
    )


@verifier_app.command("rebond")
@with_chain_options
def verifier_rebond(
    amount: Annotated[
        str | None,
        typer.Option(help="Tokens to move back from unbonding to stake (default: all of it)."),
    ] = None,
    *,
    options: ChainOptions,
) -> None:
    """Move unbonding verifier stake back into active stake (no tokens move)."""
    with reporting() as console:
        conn = connect(options, role="verifier", sign=True)
        registry = conn.contracts.verifier_registry
        assert conn.address is not None
        value = _rebond_amount(conn, amount, registry.get_verifier(conn.address).unbonding)
        print_tx(console, f"rebonded {conn.show(value)}", registry.rebond(value))
        _print_verifier(console, conn, registry.get_verifier(conn.address))


@verifier_app.command("withdraw")
@with_chain_options
def verifier_withdraw(
    *,
    options: ChainOptions,
) -> None:
    """Withdraw your unbonded verifier stake once its release time has passed."""
    with reporting() as console:
        conn = connect(options, role="verifier", sign=True)
        registry = conn.contracts.verifier_registry
        result = registry.withdraw()
        amount = result.event("StakeWithdrawn").args["amount"]
        print_tx(console, f"withdrew {conn.show(amount)}", result)
        assert conn.address is not None
        _print_verifier(console, conn, registry.get_verifier(conn.address))


@verifier_app.command("show")
@with_chain_options
def verifier_show(
    address: Annotated[
        str | None, typer.Argument(help="Verifier address (default: yours).")
    ] = None,
    *,
    options: ChainOptions,
) -> None:
    """Show a verifier's stake, unbonding stake and whether it is active."""
    with reporting() as console:
        conn = connect(options, role="verifier", sign=False)
        verifier = acting_address(conn, address)
        _print_verifier(console, conn, conn.contracts.verifier_registry.get_verifier(verifier))


# --- balance ------------------------------------------------------------------------------


@app.command("balance")
@with_chain_options
def balance(
    address: Annotated[str | None, typer.Argument(help="Address (default: yours).")] = None,
    *,
    options: ChainOptions,
) -> None:
    """Show an address's stake-token and native (gas) balances."""
    with reporting() as console:
        conn = connect(options, role="deployer", sign=False)
        who = acting_address(conn, address)
        tokens = conn.contracts.token.balance_of(who)
        native = conn.chain.eth_balance(who)
        console.print(f"{who}: {conn.show(tokens)}, {format_tokens(native, 18)} ETH")


@app.command("transfer")
@with_chain_options
def transfer(
    to: Annotated[str, typer.Argument(help="Address to send to.")],
    tokens: Annotated[
        str, typer.Option(help="Stake tokens to send (e.g. 250, 0.5; 0: none).")
    ] = "0",
    eth: Annotated[str, typer.Option(help="ETH (native currency) to send (0: none).")] = "0",
    *,
    options: ChainOptions,
) -> None:
    """Send stake tokens and/or ETH from your account to an address."""
    with reporting() as console:
        recipient = parse_address(to, "TO")
        eth_wei = parse_tokens(eth, 18, "--eth")
        conn = connect(options, role="deployer", sign=True)
        amount = conn.tokens(tokens, "--tokens")
        if not amount and not eth_wei:
            raise CliInputError("nothing to send: give --tokens N and/or --eth N")
        assert conn.signer is not None and conn.address is not None  # sign=True
        if amount:
            sent = conn.contracts.token.transfer(recipient, amount)
            print_tx(console, f"sent {conn.show(amount)} to {recipient}", sent)
        if eth_wei:
            paid = conn.chain.sender(conn.signer).transfer_eth(recipient, eth_wei)
            print_tx(console, f"sent {format_tokens(eth_wei, 18)} ETH to {recipient}", paid)
        for who in (conn.address, recipient):
            native = format_tokens(conn.chain.eth_balance(who), 18)
            console.print(f"{who}: {conn.show(conn.contracts.token.balance_of(who))}, {native} ETH")
