"""What a developer types on the session devnet, through typer's CliRunner: a keystore wallet
funded with `stakeswarm dev fund` stakes as a verifier; `stakeswarm chain transfer` sends
tokens and ETH; `stakeswarm dev advance-time 3d` ends an unbonding; the dev commands refuse
anything that is not a running devnet."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from typer.testing import CliRunner, Result

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from stakeswarm.cli import app
from stakeswarm.home import Home

NEW_ADDRESS = "0x000000000000000000000000000000000000dEaD"
ETH = 10**18


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def home_args(home: Home) -> tuple[str, str]:
    return ("--home", str(home.root))


def test_a_new_keystore_wallet_funded_on_the_devnet_registers_as_a_verifier(
    chain: Chain, contracts: Contracts, devnet_home: Home, tmp_path: Path
) -> None:
    keystore = tmp_path / "wallet.json"
    env = {"WALLET_PASSWORD": "hunter2"}
    created = invoke(
        "client", "wallet", "create", "--keystore", str(keystore),
        "--password-env", "WALLET_PASSWORD", env=env,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    address = re.search(r"address\s+(0x[0-9a-fA-F]{40})", created.output)
    assert address is not None, created.output
    files = ["--deployment", str(devnet_home.devnet_deployment), "--keystore", str(keystore)]
    register = ["chain", "verifier", "register", "--stake", "150", *files]
    broke = invoke(*register, "--password-env", "WALLET_PASSWORD", env=env)

    funded = invoke("dev", "fund", address.group(1), "--tokens", "500", "--eth", "2",
                    *home_args(devnet_home))  # fmt: skip
    registered = invoke(*register, "--password-env", "WALLET_PASSWORD", env=env)

    assert broke.exit_code == 1  # a new key has no gas and no tokens: a dead end before
    assert funded.exit_code == 0, funded.output
    assert "sent 500 SWARM from the deployer  tx 0x" in funded.output
    assert "added 2 ETH (anvil_setBalance, no transaction)" in funded.output
    assert f"{address.group(1)}: 500 SWARM, 2 ETH" in funded.output
    assert registered.exit_code == 0, registered.output
    verifier = contracts.verifier_registry.get_verifier(address.group(1))
    assert verifier.stake == 150 * TOKEN
    assert contracts.token.balance_of(address.group(1)) == 350 * TOKEN


def test_dev_fund_adds_to_what_an_address_has(
    chain: Chain, contracts: Contracts, deployment: Deployment, devnet_home: Home
) -> None:
    client = deployment.account("client-1").address
    eth_before = chain.eth_balance(client)

    result = invoke("dev", "fund", client, "--tokens", "0.5", "--eth", "0",
                    *home_args(devnet_home))  # fmt: skip

    assert result.exit_code == 0, result.output
    assert contracts.token.balance_of(client) == 100_000 * TOKEN + TOKEN // 2
    assert chain.eth_balance(client) == eth_before
    assert "ETH (" not in result.output  # --eth 0: the balance was left alone


def test_chain_transfer_sends_tokens_and_eth_and_prints_both_balances(
    chain: Chain, contracts: Contracts, deployment: Deployment, devnet_home: Home
) -> None:
    sender = deployment.account("client-0").address
    eth_before = chain.eth_balance(sender)

    result = invoke("chain", "transfer", NEW_ADDRESS, "--tokens", "250.5", "--eth", "1.25",
                    "--devnet", "--account", "client-0", *home_args(devnet_home))  # fmt: skip
    empty = invoke("chain", "transfer", NEW_ADDRESS, "--devnet", *home_args(devnet_home))

    assert result.exit_code == 0, result.output
    assert f"sent 250.5 SWARM to {NEW_ADDRESS}  tx 0x" in result.output
    assert f"sent 1.25 ETH to {NEW_ADDRESS}  tx 0x" in result.output
    assert f"{NEW_ADDRESS}: 250.5 SWARM, 1.25 ETH" in result.output
    assert f"{sender}: 99749.5 SWARM, " in result.output
    assert contracts.token.balance_of(NEW_ADDRESS) == 250 * TOKEN + TOKEN // 2
    assert chain.eth_balance(NEW_ADDRESS) == ETH + ETH // 4
    assert eth_before - chain.eth_balance(sender) > ETH + ETH // 4  # and the gas
    assert empty.exit_code == 2 and "nothing to send" in empty.output


def test_advance_time_ends_a_verifiers_unbonding(
    chain: Chain, contracts: Contracts, deployment: Deployment, devnet_home: Home
) -> None:
    devnet = ("--devnet", "--account", "verifier-1", *home_args(devnet_home))
    assert invoke("chain", "verifier", "register", "--stake", "150", *devnet).exit_code == 0
    assert invoke("chain", "verifier", "unbond", "--amount", "50", *devnet).exit_code == 0
    before = chain.timestamp()

    # past the 2-day delay: the release is the first second *after* it
    advanced = invoke("dev", "advance-time", "3d", *home_args(devnet_home))
    withdrawn = invoke("chain", "verifier", "withdraw", *devnet)

    assert advanced.exit_code == 0, advanced.output
    now = chain.timestamp()
    assert now >= before + 3 * 86_400
    assert re.search(
        r"chain time \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(was .* \+3d\)", advanced.output
    )
    assert f"block {chain.block_number() - 1}" in advanced.output  # the withdrawal came after
    assert withdrawn.exit_code == 0, withdrawn.output
    assert "withdrew 50 SWARM" in withdrawn.output


def test_advance_time_takes_units_and_refuses_nonsense(chain: Chain, devnet_home: Home) -> None:
    before = chain.timestamp()

    ninety = invoke("dev", "advance-time", "90s", *home_args(devnet_home))
    hours = invoke("dev", "advance-time", "3h", *home_args(devnet_home))
    bad = invoke("dev", "advance-time", "soon", *home_args(devnet_home))
    zero = invoke("dev", "advance-time", "0", *home_args(devnet_home))

    assert ninety.exit_code == hours.exit_code == 0, ninety.output + hours.output
    assert chain.timestamp() >= before + 90 + 3 * 3_600
    assert bad.exit_code == 2 and "DURATION takes seconds or a number with s, m, h or d" in (
        bad.output
    )
    assert zero.exit_code == 2 and "more than 0 seconds" in zero.output


def test_dev_commands_refuse_what_is_not_a_running_devnet(
    chain: Chain, contracts: Contracts, deployment: Deployment, devnet_home: Home, tmp_path: Path
) -> None:
    nothing = Home.resolve(tmp_path / "empty")
    # a home whose recorded chain runs, but whose deployment is not a devnet's (no dev keys)
    real = Home.resolve(tmp_path / "real")
    real.devnet_state.parent.mkdir(parents=True)
    shutil.copy(devnet_home.devnet_state, real.devnet_state)
    dataclasses.replace(deployment, accounts=()).save(real.devnet_deployment)
    time_before = chain.timestamp()

    fund_nothing = invoke("dev", "fund", NEW_ADDRESS, *home_args(nothing))
    time_nothing = invoke("dev", "advance-time", "2d", *home_args(nothing))
    fund_real = invoke("dev", "fund", NEW_ADDRESS, *home_args(real))
    time_real = invoke("dev", "advance-time", "2d", *home_args(real))

    for result in (fund_nothing, time_nothing):
        assert result.exit_code == 1
        assert "no devnet running in" in result.output and "stakeswarm dev up" in result.output
    for result in (fund_real, time_real):
        assert result.exit_code == 1
        assert "not a devnet" in result.output and "refusing" in result.output
    assert "Traceback" not in fund_real.output + time_real.output
    assert contracts.token.balance_of(NEW_ADDRESS) == 0 and chain.eth_balance(NEW_ADDRESS) == 0
    assert chain.timestamp() < time_before + 86_400


def test_verifier_unbond_below_the_minimum_says_what_is_allowed(
    chain: Chain, devnet_home: Home
) -> None:
    devnet = ("--devnet", "--account", "verifier-0", *home_args(devnet_home))
    assert invoke("chain", "verifier", "register", "--stake", "100", *devnet).exit_code == 0

    half = invoke("chain", "verifier", "unbond", "--amount", "50", *devnet)
    everything = invoke("chain", "verifier", "unbond", "--amount", "100", *devnet)

    assert half.exit_code == 1
    assert "StakeInsufficient" in half.output
    assert "a verifier keeps at least 100 SWARM staked" in half.output
    assert "with 100 SWARM staked, --amount 100 to leave" in half.output
    assert everything.exit_code == 0, everything.output
