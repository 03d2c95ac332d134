"""`stakeswarm chain`: on-chain actions for node operators, clients and verifiers.

Thin commands over `ledger.contracts`. Every command takes either
    --devnet [--account NAME|ROLE|INDEX] [--home DIR]      the devnet's deployment and dev keys
or
    --deployment FILE [--rpc URL] [--keystore FILE [--password-env NAME]]
(the keystore password is prompted for unless --password-env names a variable holding it).

Amounts are in whole stake tokens and may have decimals (`--stake 100` is 100 tokens,
`--price 0.001`); they are converted with the token's on-chain `decimals()` (18).
A revert prints the decoded contract error, e.g.
`RegistryInsufficientStake(node=0x…, stake=10, needed=30)` (amounts there are base units),
and exits with status 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import base58
import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_address, to_checksum_address
from rich.console import Console
from rich.markup import escape

from ledger.chain import Chain, ContractRevert, TxResult
from ledger.contracts import Contracts, NodeInfo
from ledger.deployment import Deployment
from ledger.errors import LedgerError
from ledger.types import Address, BlockIndex, ChannelId, Wei, model_id
from ledger.wallet import PasswordSource, keystore_address, load_wallet
from stakeswarm.home import Home

app = typer.Typer(
    help="On-chain actions: stake as a node or verifier, pay through channels, balances.",
    no_args_is_help=True,
)
node_app = typer.Typer(help="Register, stake, unbond and inspect nodes.", no_args_is_help=True)
channel_app = typer.Typer(
    help="Open, inspect, redeem and reclaim payment channels.", no_args_is_help=True
)
verifier_app = typer.Typer(help="Register as a verifier.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(channel_app, name="channel")
app.add_typer(verifier_app, name="verifier")

# --- the options every command shares -------------------------------------------------------

DevnetOpt = Annotated[
    bool, typer.Option("--devnet", help="Use the running devnet's deployment and a dev key.")
]
AccountOpt = Annotated[
    str | None,
    typer.Option(
        "--account",
        help="With --devnet: a dev account by name (node-1), role (its first: client) or index.",
        show_default=False,
    ),
]
HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="State directory (default ~/.stakeswarm).", show_default=False),
]
RpcOpt = Annotated[
    str | None,
    typer.Option("--rpc", help="JSON-RPC URL (default: the deployment's).", show_default=False),
]
DeploymentOpt = Annotated[
    Path | None,
    typer.Option(
        "--deployment", help="Deployment JSON file (without --devnet).", show_default=False
    ),
]
KeystoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--keystore", help="Keystore of the signing key (without --devnet).", show_default=False
    ),
]
PasswordEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--password-env",
        help="Name of an environment variable holding the keystore password (else prompted).",
        show_default=False,
    ),
]


class CliInputError(Exception):
    """A command-line value is malformed (shown without a traceback, exit status 2)."""


@dataclass(frozen=True)
class ChainOptions:
    """Where to act and as whom, as the common options say."""

    devnet: bool
    account: str | None
    home: Path | None
    rpc: str | None
    deployment: Path | None
    keystore: Path | None
    password_env: str | None


@dataclass(frozen=True)
class Connected:
    """A deployment on a live chain, the contracts, and the signing key if one was asked for."""

    deployment: Deployment
    chain: Chain
    contracts: Contracts
    signer: LocalAccount | None
    address: Address | None  # the acting account (known without unlocking a keystore)
    decimals: int
    symbol: str

    def tokens(self, text: str, what: str) -> Wei:
        return parse_tokens(text, self.decimals, what)

    def show(self, amount: int) -> str:
        return f"{format_tokens(amount, self.decimals)} {self.symbol}"


def connect(options: ChainOptions, *, role: str, sign: bool) -> Connected:
    """Load the deployment, connect, and (when `sign`) unlock the key of the acting account;
    `role` is the dev account used on a devnet when --account is not given."""
    if options.devnet:
        if options.deployment is not None or options.keystore is not None:
            raise CliInputError(
                "--devnet uses the devnet's deployment and keys: drop --deployment/--keystore"
            )
        deployment = Deployment.load(Home.resolve(options.home).devnet_deployment)
        dev = deployment.account(options.account or role)
        signer: LocalAccount | None = Account.from_key(dev.private_key)
        address: Address | None = dev.address
    else:
        if options.deployment is None:
            raise CliInputError("give --devnet, or --deployment FILE (and --keystore FILE to sign)")
        if options.account is not None:
            raise CliInputError(
                "--account selects a devnet dev key; without --devnet use --keystore"
            )
        deployment = Deployment.load(options.deployment)
        signer, address = None, None
        if options.keystore is not None:
            address = keystore_address(options.keystore)
            if sign:
                password = (
                    PasswordSource.from_env(options.password_env)
                    if options.password_env
                    else PasswordSource.prompted(f"Password for {options.keystore}: ")
                )
                signer = load_wallet(options.keystore, password)
        elif sign:
            raise CliInputError("this command signs a transaction: give --keystore FILE")
    chain = deployment.connect(rpc_url=options.rpc)
    sender = chain.sender(signer) if sign and signer is not None else None
    contracts = Contracts.from_deployment(chain, deployment, sender)
    return Connected(
        deployment=deployment,
        chain=chain,
        contracts=contracts,
        signer=signer,
        address=address,
        decimals=contracts.token.decimals(),
        symbol=contracts.token.symbol(),
    )


@contextmanager
def reporting() -> Iterator[Console]:
    """Run a command body: a revert or a ledger/input error is printed (no traceback) and the
    command exits non-zero."""
    errors = Console(stderr=True, soft_wrap=True)
    try:
        yield Console(soft_wrap=True)
    except ContractRevert as exc:
        errors.print(f"[bold red]reverted[/] {escape(exc.action or '')}: {escape(exc.signature)}")
        raise typer.Exit(1) from None
    except CliInputError as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except LedgerError as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None


# --- value parsing and formatting ---------------------------------------------------------


def parse_tokens(text: str, decimals: int, what: str = "amount") -> Wei:
    """Whole tokens with optional decimals ("100", "0.25") to base units."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise CliInputError(f"{what} {text!r} is not a number of tokens") from None
    if not value.is_finite() or value < 0:
        raise CliInputError(f"{what} must be a non-negative number of tokens, got {text!r}")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise CliInputError(f"{what} {text!r} has more than {decimals} decimals")
    return Wei(int(scaled))


def format_tokens(amount: int, decimals: int) -> str:
    """Base units as whole tokens, without trailing zeros ("100", "0.25")."""
    text = format(Decimal(amount).scaleb(-decimals), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_span(text: str) -> tuple[BlockIndex, BlockIndex]:
    """ "START:END" (END excluded) to a block span."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise CliInputError(f"--blocks takes START:END (END excluded), got {text!r}")
    start, end = int(match.group(1)), int(match.group(2))
    if not start < end < 2**16:
        raise CliInputError(f"--blocks {text!r}: need START < END < 65536")
    return BlockIndex(start), BlockIndex(end)


def parse_peer_id(text: str) -> bytes:
    """A libp2p peer id in base58 (as hivemind prints it) or 0x-hex, to its bytes."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text[2:]) if text.startswith("0x") else base58.b58decode(text)
    except ValueError:
        raise CliInputError(f"--peer-id {text!r} is neither base58 nor 0x-hex") from None
    if not raw:
        raise CliInputError("--peer-id is empty")
    return raw


def parse_address(text: str, what: str) -> Address:
    if not is_address(text):
        raise CliInputError(f"{what} {text!r} is not an address")
    return Address(to_checksum_address(text))


def parse_signature(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise CliInputError("--signature must be 0x-hex") from None
    if len(raw) != 65:
        raise CliInputError(f"--signature must be 65 bytes (r, s, v), got {len(raw)}")
    return raw


def _when(timestamp: int) -> str:
    if timestamp == 0:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_tx(console: Console, what: str, result: TxResult | None) -> None:
    if result is None:
        return
    console.print(
        f"[green]✓[/] {escape(what)}  tx {result.tx_hash}  gas {result.gas_used:,}  "
        f"block {result.block_number}"
    )


def _acting(conn: Connected, address: str | None) -> Address:
    if address is not None:
        return parse_address(address, "ADDRESS")
    if conn.address is None:
        raise CliInputError("give an ADDRESS, or --devnet/--keystore to use your own")
    return conn.address


def _print_fields(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    """A title and aligned `field  value` lines; values are never truncated (ids get copied)."""
    console.print(f"[bold]{escape(title)}[/]")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        console.print(f"  {name:<{width}}  {escape(value)}")


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
    rows.append(("unbonding release", _when(info.unbonding_release_at)))
    _print_fields(console, f"Node {info.address}", rows)


# --- node ---------------------------------------------------------------------------------


@node_app.command("register")
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
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Register as a node for a span of a model's blocks, approving the stake if needed."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
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
            on_approval=lambda approval: _print_tx(console, "approve stake", approval),
        )
        _print_tx(console, f"registered for {model} blocks {span_start}:{span_end}", result)
        assert conn.address is not None
        _print_node(console, conn, registry.get_node(conn.address))


@node_app.command("add-stake")
def node_add_stake(
    amount: Annotated[str, typer.Option(help="Tokens to add to the stake (e.g. 50).")],
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Add tokens to your node's active stake, approving them if needed."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        conn = connect(options, role="node", sign=True)
        value = conn.tokens(amount, "--amount")
        registry = conn.contracts.node_registry
        result = registry.add_stake_with_approve(
            value, on_approval=lambda approval: _print_tx(console, "approve stake", approval)
        )
        _print_tx(console, f"added {conn.show(value)} to the stake", result)
        assert conn.address is not None
        _print_node(console, conn, registry.get_node(conn.address))


@node_app.command("unbond")
def node_unbond(
    amount: Annotated[str, typer.Option(help="Tokens to move from stake to unbonding (e.g. 50).")],
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Start unbonding stake; it stays slashable until you withdraw it after the delay."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        conn = connect(options, role="node", sign=True)
        value = conn.tokens(amount, "--amount")
        registry = conn.contracts.node_registry
        _print_tx(console, f"unbonding {conn.show(value)}", registry.unbond(value))
        assert conn.address is not None
        _print_node(console, conn, registry.get_node(conn.address))


@node_app.command("withdraw")
def node_withdraw(
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Withdraw your node's unbonded stake once its release time has passed."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        conn = connect(options, role="node", sign=True)
        result = conn.contracts.node_registry.withdraw()
        amount = result.event("StakeWithdrawn").args["amount"]
        _print_tx(console, f"withdrew {conn.show(amount)}", result)
        assert conn.address is not None
        _print_node(console, conn, conn.contracts.node_registry.get_node(conn.address))


@node_app.command("show")
def node_show(
    address: Annotated[str | None, typer.Argument(help="Node address (default: yours).")] = None,
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Show a node's registration and stake."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        conn = connect(options, role="node", sign=False)
        node = _acting(conn, address)
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
        ("expiry", _when(channel.expiry)),
        ("closed", "yes" if channel.closed else "no"),
    ]
    _print_fields(console, f"Channel {channel_id}", rows)


@channel_app.command("open")
def channel_open(
    server: Annotated[str, typer.Option(help="Address of the server to pay.")],
    deposit: Annotated[str, typer.Option(help="Tokens to escrow (e.g. 10).")],
    duration: Annotated[int, typer.Option(help="Seconds until the channel expires.")],
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Open a payment channel to a server, approving the deposit if needed."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
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
            on_approval=lambda approval: _print_tx(console, "approve deposit", approval),
        )
        channel_id = channels.opened_channel_id(result)
        _print_tx(console, f"opened channel {channel_id}", result)
        _print_channel(console, conn, channel_id)


@channel_app.command("show")
def channel_show(
    channel_id: Annotated[int, typer.Argument(help="Channel id.")],
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Show a payment channel."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        conn = connect(options, role="client", sign=False)
        _print_channel(console, conn, ChannelId(channel_id))


@channel_app.command("redeem")
def channel_redeem(
    channel_id: Annotated[int, typer.Argument(help="Channel id.")],
    amount: Annotated[str, typer.Option(help="The voucher's cumulative amount, in tokens.")],
    signature: Annotated[
        str, typer.Option(help="The client's voucher signature (0x-hex, 65 bytes).")
    ],
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """As the channel's server, redeem a client's voucher (paid: amount minus redeemed)."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        raw_signature = parse_signature(signature)
        conn = connect(options, role="node", sign=True)
        value = conn.tokens(amount, "--amount")
        channels = conn.contracts.payment_channels
        result = channels.redeem(ChannelId(channel_id), value, raw_signature)
        paid = result.event("VoucherRedeemed").args["paid"]
        _print_tx(console, f"redeemed {conn.show(paid)} from channel {channel_id}", result)
        _print_channel(console, conn, ChannelId(channel_id))


@channel_app.command("reclaim")
def channel_reclaim(
    channel_id: Annotated[int, typer.Argument(help="Channel id.")],
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """As the client, after expiry, take back what the server did not redeem."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        conn = connect(options, role="client", sign=True)
        result = conn.contracts.payment_channels.reclaim(ChannelId(channel_id))
        refunded = result.event("ChannelReclaimed").args["refunded"]
        _print_tx(console, f"reclaimed {conn.show(refunded)} from channel {channel_id}", result)
        _print_channel(console, conn, ChannelId(channel_id))


# --- verifier -----------------------------------------------------------------------------


@verifier_app.command("register")
def verifier_register(
    stake: Annotated[str, typer.Option(help="Stake in tokens (at least the registry's minimum).")],
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Register as a verifier, approving the stake if needed."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        conn = connect(options, role="verifier", sign=True)
        value = conn.tokens(stake, "--stake")
        registry = conn.contracts.verifier_registry
        result = registry.register_with_approve(
            value, on_approval=lambda approval: _print_tx(console, "approve stake", approval)
        )
        _print_tx(console, f"registered as a verifier with {conn.show(value)}", result)
        assert conn.address is not None
        info = registry.get_verifier(conn.address)
        console.print(
            f"verifier {info.address}: stake {conn.show(info.stake)}, "
            f"active {'yes' if registry.is_active(info.address) else 'no'}"
        )


# --- balance ------------------------------------------------------------------------------


@app.command("balance")
def balance(
    address: Annotated[str | None, typer.Argument(help="Address (default: yours).")] = None,
    devnet: DevnetOpt = False,
    account: AccountOpt = None,
    home: HomeOpt = None,
    rpc: RpcOpt = None,
    deployment: DeploymentOpt = None,
    keystore: KeystoreOpt = None,
    password_env: PasswordEnvOpt = None,
) -> None:
    """Show an address's stake-token and native (gas) balances."""
    options = ChainOptions(devnet, account, home, rpc, deployment, keystore, password_env)
    with reporting() as console:
        conn = connect(options, role="deployer", sign=False)
        who = _acting(conn, address)
        tokens = conn.contracts.token.balance_of(who)
        native = conn.chain.eth_balance(who)
        console.print(f"{who}: {conn.show(tokens)}, {format_tokens(native, 18)} ETH")
