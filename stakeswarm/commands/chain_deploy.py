"""`stakeswarm chain deploy`: deploy the contracts to any EVM chain from a keystore.

    stakeswarm chain deploy --rpc URL --keystore FILE [--password-env VAR] [--token ADDRESS]
        [--min-stake-per-block 10] [--unbonding-delay 2d] [--challenge-window 1d] [--quorum 3]
        [--confirmations 3] [--out FILE] [--force]

The stake token is a new StakeToken (whose whole supply goes to the deployer) or, with
`--token`, an existing ERC-20. Amounts are whole tokens with optional decimals, converted
with the stake token's decimals; durations are seconds or a number with s, m, h or d. The
deployment file (default `<home>/deployment.json`, never overwritten without `--force`) holds
no keys: every other command reads it with `--deployment FILE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ledger.compile import PROJECT_ROOT, compile_contracts
from ledger.deployment import (
    CONTRACT_NAMES,
    Deployment,
    DeploymentParams,
    check_stake_token,
    deploy_all,
)
from ledger.identity import keystore_password
from ledger.types import Address, Wei
from ledger.wallet import load_wallet
from node.cli_options import HomeOpt, PasswordEnvOpt
from stakeswarm.commands.chain_support import (
    CliInputError,
    format_duration,
    format_tokens,
    parse_address,
    parse_duration,
    parse_tokens,
    reporting,
)
from stakeswarm.home import Home

if TYPE_CHECKING:  # web3 loads when deploying, not with `chain --help`
    from ledger.chain import Chain

NEW_TOKEN_DECIMALS = 18  # a new StakeToken's decimals (OpenZeppelin's ERC20 default)
_DEFAULTS = DeploymentParams()


def _tokens_default(amount: int) -> str:
    return format_tokens(amount, NEW_TOKEN_DECIMALS)


def deploy(
    rpc: Annotated[str, typer.Option(help="JSON-RPC URL of the chain to deploy to.")],
    keystore: Annotated[
        Path, typer.Option(help="Keystore of the deployer (pays the gas).", show_default=False)
    ],
    token: Annotated[
        str | None,
        typer.Option(
            help="An existing ERC-20 to stake and pay in (default: deploy a new StakeToken).",
            show_default=False,
        ),
    ] = None,
    token_name: Annotated[
        str | None,
        typer.Option(help=f"New StakeToken's name (default: {_DEFAULTS.token_name})."),
    ] = None,
    token_symbol: Annotated[
        str | None,
        typer.Option(help=f"New StakeToken's symbol (default: {_DEFAULTS.token_symbol})."),
    ] = None,
    token_supply: Annotated[
        str | None,
        typer.Option(
            help="New StakeToken's fixed supply in tokens, all to the deployer "
            f"(default: {_tokens_default(_DEFAULTS.token_supply)})."
        ),
    ] = None,
    min_stake_per_block: Annotated[
        str, typer.Option(help="Tokens a node stakes per block of its span.")
    ] = _tokens_default(_DEFAULTS.min_stake_per_block),
    min_verifier_stake: Annotated[
        str, typer.Option(help="Tokens a verifier stakes at least.")
    ] = _tokens_default(_DEFAULTS.min_verifier_stake),
    unbonding_delay: Annotated[
        str, typer.Option(help="Time from unbond to withdraw; stake stays slashable meanwhile.")
    ] = format_duration(_DEFAULTS.unbonding_delay),
    challenge_window: Annotated[
        str,
        typer.Option(help="Time a commitment stays slashable (at most the unbonding delay)."),
    ] = format_duration(_DEFAULTS.challenge_window),
    max_channel_duration: Annotated[
        str, typer.Option(help="Longest time a payment channel may stay open.")
    ] = format_duration(_DEFAULTS.max_channel_duration),
    commit_deadline: Annotated[
        str, typer.Option(help="Time a node has to commit the leaf of a receipt it signed.")
    ] = format_duration(_DEFAULTS.commit_deadline),
    receipt_challenge_period: Annotated[
        str, typer.Option(help="Time after the commit deadline a receipt may be challenged.")
    ] = format_duration(_DEFAULTS.receipt_challenge_period),
    response_window: Annotated[
        str, typer.Option(help="Time a node has to answer a receipt challenge.")
    ] = format_duration(_DEFAULTS.response_window),
    challenge_bond: Annotated[
        str, typer.Option(help="Tokens a receipt challenger puts up (the node's if it answers).")
    ] = _tokens_default(_DEFAULTS.challenge_bond),
    quorum: Annotated[int, typer.Option(help="Verifier signatures a slash needs.")] = (
        _DEFAULTS.quorum
    ),
    max_leaves: Annotated[
        int, typer.Option(help="Most leaves one committed batch may hold (a verifier's audit).")
    ] = _DEFAULTS.max_leaves,
    slash_bps: Annotated[
        int, typer.Option(help="Share of a node's stake one slash takes (basis points).")
    ] = _DEFAULTS.slash_bps,
    bounty_bps: Annotated[
        int, typer.Option(help="Share of a slash paid to its verifiers or reporter (bps).")
    ] = _DEFAULTS.bounty_bps,
    reward_recipient: Annotated[
        str | None,
        typer.Option(
            help="Receives the rest of every slash (default: the deployer).", show_default=False
        ),
    ] = None,
    confirmations: Annotated[
        int, typer.Option(help="Blocks the last deployment must have (1: mined).")
    ] = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Deployment file to write (default: <home>/deployment.json).", show_default=False
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing deployment file.")
    ] = False,
    password_env: PasswordEnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Deploy the contracts to an EVM chain and write the deployment file other commands read."""
    from ledger.chain import Chain

    with reporting() as console:
        path = (out if out is not None else Home.resolve(home).deployment).expanduser().resolve()
        if path.exists() and not force:
            raise CliInputError(f"{path} exists: pass --force to overwrite it, or --out FILE")
        if confirmations < 1:
            raise CliInputError("--confirmations must be at least 1")
        existing = parse_address(token, "--token") if token is not None else None
        if existing is not None and any(
            value is not None for value in (token_name, token_symbol, token_supply)
        ):
            raise CliInputError(
                "--token-name/--token-symbol/--token-supply describe a new StakeToken: "
                "drop them with --token"
            )
        durations = {
            "unbonding_delay": parse_duration(unbonding_delay, "--unbonding-delay"),
            "challenge_window": parse_duration(challenge_window, "--challenge-window"),
            "max_channel_duration": parse_duration(max_channel_duration, "--max-channel-duration"),
            "commit_deadline": parse_duration(commit_deadline, "--commit-deadline"),
            "receipt_challenge_period": parse_duration(
                receipt_challenge_period, "--receipt-challenge-period"
            ),
            "response_window": parse_duration(response_window, "--response-window"),
        }
        recipient = (
            parse_address(reward_recipient, "--reward-recipient") if reward_recipient else None
        )
        wallet = load_wallet(keystore, keystore_password(keystore, password_env))
        artifacts = compile_contracts(PROJECT_ROOT)
        chain = Chain(rpc, artifacts.abis())
        if existing is not None:
            check_stake_token(chain, existing)
            decimals, name, symbol, supply = _token_facts(chain, existing)
        else:
            decimals = NEW_TOKEN_DECIMALS
            name = token_name if token_name is not None else _DEFAULTS.token_name
            symbol = token_symbol if token_symbol is not None else _DEFAULTS.token_symbol
            supply = (
                parse_tokens(token_supply, decimals, "--token-supply")
                if token_supply is not None
                else _DEFAULTS.token_supply
            )
        params = DeploymentParams(
            token_name=name,
            token_symbol=symbol,
            token_supply=supply,
            min_stake_per_block=parse_tokens(
                min_stake_per_block, decimals, "--min-stake-per-block"
            ),
            min_verifier_stake=parse_tokens(min_verifier_stake, decimals, "--min-verifier-stake"),
            challenge_bond=parse_tokens(challenge_bond, decimals, "--challenge-bond"),
            quorum=quorum,
            max_leaves=max_leaves,
            slash_bps=slash_bps,
            bounty_bps=bounty_bps,
            reward_recipient=recipient,
            **durations,
        )
        if chain.eth_balance(wallet.address) == 0:
            raise CliInputError(
                f"the deployer {wallet.address} has no native currency on chain "
                f"{chain.chain_id} to pay gas: fund it first"
            )
        console.print(
            f"deploying to chain {chain.chain_id} from {wallet.address}, "
            f"waiting for {confirmations} confirmation{'s' if confirmations > 1 else ''}"
        )
        with console.status("deploying (one transaction per contract)"):
            deployment = deploy_all(
                chain,
                chain.sender(wallet),
                params,
                artifacts,
                PROJECT_ROOT / "build" / "abi",
                token=existing,
                confirmations=confirmations,
            )
        deployment.save(path)
        _print_deployment(console, deployment, decimals, existing is not None)
        console.print(f"deployment file {path}")
        console.print(f"other commands take it with: --deployment {path}")


def _token_facts(chain: Chain, address: Address) -> tuple[int, str, str, Wei]:
    """An existing token's decimals, name (its symbol if it has none), symbol and supply."""
    from ledger.chain import ChainError

    contract = chain.contract(address, "StakeToken")
    symbol = str(chain.call(contract, "symbol"))
    try:
        name = str(chain.call(contract, "name"))
    except ChainError:  # name() is optional in ERC-20
        name = symbol
    return (
        int(chain.call(contract, "decimals")),
        name,
        symbol,
        Wei(int(chain.call(contract, "totalSupply"))),
    )


def _print_deployment(
    console: Console, deployment: Deployment, decimals: int, existing_token: bool
) -> None:
    params = deployment.params
    symbol = params.token_symbol

    def tokens(amount: int) -> str:
        return f"{format_tokens(amount, decimals)} {symbol}"

    def duration(seconds: int) -> str:
        return f"{format_duration(seconds)} ({seconds} s)"

    contracts = Table(
        title=f"Contracts on chain {deployment.chain_id} (from block {deployment.deploy_block})",
        title_justify="left",
    )
    contracts.add_column("contract", no_wrap=True)
    contracts.add_column("address", no_wrap=True)
    for attr, name in CONTRACT_NAMES.items():
        label = f"{name} (existing)" if attr == "stake_token" and existing_token else name
        contracts.add_row(label, getattr(deployment.contracts, attr))
    console.print(contracts)

    table = Table(title="Parameters", title_justify="left")
    table.add_column("parameter", no_wrap=True)
    table.add_column("value", no_wrap=True)
    rows = [
        ("stake token", f"{params.token_name} ({symbol}), {decimals} decimals"),
        ("token supply", tokens(params.token_supply)),
        ("min stake per block", tokens(params.min_stake_per_block)),
        ("min verifier stake", tokens(params.min_verifier_stake)),
        ("unbonding delay", duration(params.unbonding_delay)),
        ("challenge window", duration(params.challenge_window)),
        ("max channel duration", duration(params.max_channel_duration)),
        ("receipt commit deadline", duration(params.commit_deadline)),
        ("receipt challenge period", duration(params.receipt_challenge_period)),
        ("challenge response window", duration(params.response_window)),
        ("challenge bond", tokens(params.challenge_bond)),
        ("quorum", str(params.quorum)),
        ("max leaves per batch", str(params.max_leaves)),
        ("slash", f"{params.slash_bps} bps ({params.slash_bps / 100:g}%)"),
        ("bounty", f"{params.bounty_bps} bps ({params.bounty_bps / 100:g}%)"),
        ("reward recipient", params.reward_recipient or deployment.deployer),
        ("deployer", deployment.deployer),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
