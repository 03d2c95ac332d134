"""What every `stakeswarm chain` command shares: connecting to a deployment as some account
(as the chain options of `node.cli_options` say), parsing amounts and ids from the command line,
and printing.

Amounts are whole stake tokens with optional decimals (`100`, `0.25`), converted with the
token's on-chain `decimals()`; errors a user can fix print without a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import base58
import typer
from eth_utils import is_address, to_checksum_address
from rich.console import Console
from rich.markup import escape

from ledger.errors import LedgerError
from ledger.types import Address, BlockIndex, Wei, parse_token_amount, to_base_units
from ledger.units import TokenUnits, format_time, format_time_from
from ledger.units import format_tokens as format_tokens  # re-exported to the commands
from node.cli_options import ChainOptions
from stakeswarm.home import Home

if TYPE_CHECKING:  # web3 and eth_account load in `connect`, not with every command's --help
    from eth_account.signers.local import LocalAccount

    from ledger.chain import Chain, TxResult
    from ledger.contracts import Contracts
    from ledger.deployment import Deployment


class CliInputError(Exception):
    """A command-line value is malformed (shown without a traceback, exit status 2)."""


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

    @property
    def units(self) -> TokenUnits:
        return TokenUnits(decimals=self.decimals, symbol=self.symbol)

    def tokens(self, text: str, what: str) -> Wei:
        return parse_tokens(text, self.decimals, what)

    def show(self, amount: int) -> str:
        return self.units.show(amount)

    def when(self, timestamp: int) -> str:
        """A chain time as a date, and how far it is from the chain's time now."""
        return when(timestamp, now=self.chain.timestamp())


# The stake token of the deployment the running command connected to (`connect` sets it):
# `reporting` shows a revert's amounts in it ("100 SWARM"), not in base units.
_command_units: ContextVar[TokenUnits | None] = ContextVar("command_units", default=None)


def connect(options: ChainOptions, *, role: str, sign: bool) -> Connected:
    """Load the deployment, connect, and (when `sign`) unlock the key of the acting account;
    `role` is the dev account used on a devnet when --account is not given."""
    from eth_account import Account

    from ledger.contracts import Contracts
    from ledger.deployment import Deployment
    from ledger.identity import keystore_password
    from ledger.wallet import keystore_address, load_wallet

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
                password = keystore_password(options.keystore, options.password_env)
                signer = load_wallet(options.keystore, password)
        elif sign:
            raise CliInputError("this command signs a transaction: give --keystore FILE")
    chain = deployment.connect(rpc_url=options.rpc)
    sender = chain.sender(signer) if sign and signer is not None else None
    contracts = Contracts.from_deployment(chain, deployment, sender)
    connected = Connected(
        deployment=deployment,
        chain=chain,
        contracts=contracts,
        signer=signer,
        address=address,
        decimals=contracts.token.decimals(),
        symbol=contracts.token.symbol(),
    )
    reporting_in(connected.units)
    return connected


def reporting_in(units: TokenUnits) -> None:
    """Tell the running `reporting` block the stake token a revert's amounts are in (`connect`
    does it for the commands that connect through it)."""
    _command_units.set(units)


@contextmanager
def reporting() -> Iterator[Console]:
    """Run a command body: a revert or a ledger/input error is printed (no traceback) and the
    command exits non-zero. A revert shows its stake-token amounts in the token of the
    deployment the body connected to (`connect`), and its times as dates."""
    errors = Console(stderr=True, soft_wrap=True)
    units = _command_units.set(None)
    try:
        yield Console(soft_wrap=True)
    except CliInputError as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except LedgerError as exc:
        from ledger.abi_codec import ContractRevert  # loaded already by whatever reverted

        if isinstance(exc, ContractRevert):
            described = exc.describe(_command_units.get())
            errors.print(f"[bold red]reverted[/] {escape(exc.action or '')}: {escape(described)}")
        else:
            errors.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        _command_units.reset(units)


# --- value parsing and formatting ---------------------------------------------------------


def parse_tokens(text: str, decimals: int, what: str = "amount") -> Wei:
    """Whole tokens with optional decimals ("100", "0.25") to base units."""
    try:
        return to_base_units(parse_token_amount(text, what), decimals, what)
    except ValueError as exc:
        raise CliInputError(str(exc)) from None


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400}


def parse_duration(text: str, what: str) -> int:
    """Seconds, bare or with a unit ("3600", "90m", "12h", "2d"), to seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text.lower())
    if not match:
        raise CliInputError(f"{what} takes seconds or a number with s, m, h or d, got {text!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_duration(seconds: int) -> str:
    """Seconds as the largest whole unit ("2d", "90m", "45s")."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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


def when(timestamp: int, *, now: int | None = None) -> str:
    """A chain time as a UTC date ("-" for none), with how far it is from `now` when given
    ("2026-12-07 08:04:02 UTC (in 2 days)")."""
    if timestamp == 0:
        return "-"
    return format_time(timestamp) if now is None else format_time_from(timestamp, now)


def print_tx(console: Console, what: str, result: TxResult | None) -> None:
    if result is None:
        return
    console.print(
        f"[green]✓[/] {escape(what)}  tx {result.tx_hash}  gas {result.gas_used:,}  "
        f"block {result.block_number}"
    )


def acting_address(conn: Connected, address: str | None) -> Address:
    if address is not None:
        return parse_address(address, "ADDRESS")
    if conn.address is None:
        raise CliInputError("give an ADDRESS, or --devnet/--keystore to use your own")
    return conn.address


def print_fields(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    """A title and aligned `field  value` lines; values are never truncated (ids get copied)."""
    console.print(f"[bold]{escape(title)}[/]")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        console.print(f"  {name:<{width}}  {escape(value)}")
