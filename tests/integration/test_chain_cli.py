"""`stakeswarm chain ...` against the session devnet, through typer's CliRunner."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import base58
import pytest
from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner, Result

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.eip712 import sign_voucher
from ledger.types import ChannelId, Voucher, model_id
from ledger.units import format_time
from ledger.wallet import KeystoreKdf, import_wallet
from stakeswarm.cli import app
from stakeswarm.home import Home

PEER_ID = base58.b58encode(b"\x00\x24\x08\x01\x12\x20" + b"\x05" * 32).decode()


@pytest.fixture
def run(chain: Chain, devnet_home: Home) -> Callable[..., Result]:
    """Run `stakeswarm chain ARGS --devnet --home <the session devnet's home>`."""
    runner = CliRunner()

    def invoke(*args: str, devnet: bool = True, env: dict[str, str] | None = None) -> Result:
        extra = ["--devnet", "--home", str(devnet_home.root)] if devnet else []
        return runner.invoke(app, ["chain", *args, *extra], env=env)

    return invoke


def register_args(stake: str = "40", blocks: str = "2:6") -> list[str]:
    return [
        "node",
        "register",
        "--model",
        "tiny-llama",
        "--blocks",
        blocks,
        "--price",
        "0.001",
        "--peer-id",
        PEER_ID,
        "--stake",
        stake,
    ]


def test_node_register_stakes_and_shows_the_node(
    run: Callable[..., Result], contracts: Contracts, deployment: Deployment
) -> None:
    result = run(*register_args(stake="40.5"), "--account", "node-1")

    assert result.exit_code == 0, result.output
    node = contracts.node_registry.get_node(deployment.account("node-1").address)
    assert (node.model_id, node.span_start, node.span_end) == (model_id("tiny-llama"), 2, 6)
    assert node.stake == 40_500_000_000_000_000_000  # 40.5 tokens of 18 decimals
    assert node.price_per_token_per_block == TOKEN // 1000
    assert base58.b58encode(node.peer_id).decode() == PEER_ID
    assert "approve stake" in result.output and "registered for tiny-llama" in result.output
    assert "40.5 SWARM" in result.output
    tx_hash = result.output.split("registered for tiny-llama blocks 2:6  tx ")[1].split()[0]
    assert contracts.token.chain.receipt(tx_hash)["status"] == 1


def test_revert_prints_the_decoded_error_and_exits_non_zero(
    run: Callable[..., Result], deployment: Deployment
) -> None:
    result = run(*register_args(stake="39"), "--account", "node-1")  # 4 blocks need 40

    assert result.exit_code == 1
    assert "approve" not in result.output  # simulated first: nothing was approved in vain
    node = deployment.account("node-1").address
    assert f"StakeInsufficient(account={node}, stake=39 SWARM, needed=40 SWARM)" in result.output
    assert "Traceback" not in result.output


def test_too_little_stake_is_told_in_tokens_not_base_units(
    run: Callable[..., Result], deployment: Deployment
) -> None:
    # 10 blocks at 10 tokens a block need 100 tokens
    result = run(*register_args(stake="10", blocks="0:10"), "--account", "node-1")

    assert result.exit_code == 1
    assert "stake=10 SWARM" in result.output and "needed=100 SWARM" in result.output
    assert str(10 * TOKEN) not in result.output


def test_node_add_stake_unbond_withdraw_and_show(
    run: Callable[..., Result],
    contracts: Contracts,
    deployment: Deployment,
    advance_time: Callable[[int], None],
) -> None:
    assert run(*register_args()).exit_code == 0  # --devnet defaults to the first node, node-0
    address = deployment.account("node-0").address

    added = run("node", "add-stake", "--amount", "10")
    unbonded = run("node", "unbond", "--amount", "10")
    release = contracts.node_registry.get_node(address).unbonding_release_at
    locked = run("node", "withdraw")
    advance_time(deployment.params.unbonding_delay + 1)
    withdrawn = run("node", "withdraw")
    shown = run("node", "show", address, "--account", "client-0")

    assert added.exit_code == unbonded.exit_code == withdrawn.exit_code == 0
    assert "added 10 SWARM to the stake" in added.output
    assert _field(unbonded.output, "unbonding release") == f"{format_time(release)} (in 2 days)"
    assert locked.exit_code == 1
    assert f"StakeUnbondingLocked(account={address}, until={format_time(release)})" in (
        locked.output
    )
    assert str(release) not in locked.output  # a date, not Unix seconds
    assert "withdrew 10 SWARM" in withdrawn.output
    assert contracts.node_registry.get_node(address).stake == 40 * TOKEN
    assert shown.exit_code == 0 and "2:6 (4 blocks)" in shown.output and PEER_ID in shown.output


def test_channel_open_redeem_reclaim(
    run: Callable[..., Result],
    chain: Chain,
    contracts: Contracts,
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
    advance_time: Callable[[int], None],
) -> None:
    server = deployment.account("node-0").address
    opened = run("channel", "open", "--server", server, "--deposit", "12", "--duration", "600")
    assert opened.exit_code == 0, opened.output
    channel_id = ChannelId(contracts.payment_channels.channel_count())
    domain = contracts.payment_channels.domain()
    signature = sign_voucher(domain, Voucher(channel_id, 5 * TOKEN), dev_account("client-0"))

    redeemed = run(
        "channel", "redeem", str(channel_id), "--amount", "5", "--signature", "0x" + signature.hex()
    )
    early = run("channel", "reclaim", str(channel_id))
    advance_time(601)
    reclaimed = run("channel", "reclaim", str(channel_id))
    shown = run("channel", "show", str(channel_id))

    assert f"opened channel {channel_id}" in opened.output
    assert redeemed.exit_code == 0 and "redeemed 5 SWARM" in redeemed.output
    assert early.exit_code == 1 and "ChannelsNotExpired" in early.output
    assert reclaimed.exit_code == 0 and "reclaimed 7 SWARM" in reclaimed.output
    channel = contracts.payment_channels.get_channel(channel_id)
    assert channel.closed and channel.redeemed == 5 * TOKEN
    assert shown.exit_code == 0 and "closed" in shown.output


def test_channel_redeem_with_a_forged_voucher_is_refused(
    run: Callable[..., Result],
    chain: Chain,
    contracts: Contracts,
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    server = deployment.account("node-0").address
    assert (
        run("channel", "open", "--server", server, "--deposit", "1", "--duration", "60").exit_code
        == 0
    )
    channel_id = contracts.payment_channels.channel_count()
    domain = contracts.payment_channels.domain()
    forged = sign_voucher(domain, Voucher(channel_id, TOKEN), dev_account("client-2"))

    result = run("channel", "redeem", str(channel_id), "--amount", "1", "--signature", forged.hex())

    assert result.exit_code == 1
    assert (
        f"ChannelsInvalidSignature(channelId={channel_id}, signer={dev_account('client-2').address})"
        in result.output
    )


def test_verifier_register_and_balance(
    run: Callable[..., Result], contracts: Contracts, deployment: Deployment
) -> None:
    verifier = deployment.account("verifier-1").address

    registered = run("verifier", "register", "--stake", "150", "--account", "verifier-1")
    balance = run("balance", verifier)

    assert registered.exit_code == 0, registered.output
    assert contracts.verifier_registry.get_verifier(verifier).stake == 150 * TOKEN
    assert "active yes" in registered.output
    assert balance.exit_code == 0
    assert f"{verifier}: 99850 SWARM" in balance.output  # funded 100,000, staked 150


def test_verifier_unbond_withdraw_and_show(
    run: Callable[..., Result],
    contracts: Contracts,
    deployment: Deployment,
    advance_time: Callable[[int], None],
) -> None:
    verifier = deployment.account("verifier-1").address
    as_verifier = ("--account", "verifier-1")
    assert run("verifier", "register", "--stake", "150", *as_verifier).exit_code == 0

    too_much = run("verifier", "unbond", "--amount", "60", *as_verifier)  # would leave 90 < 100
    unbonded = run("verifier", "unbond", "--amount", "50", *as_verifier)
    locked = run("verifier", "withdraw", *as_verifier)
    advance_time(deployment.params.unbonding_delay + 1)
    withdrawn = run("verifier", "withdraw", *as_verifier)
    shown = run("verifier", "show", verifier, "--account", "client-0")
    stranger = run("verifier", "show", deployment.account("client-1").address)

    assert too_much.exit_code == 1
    assert (
        f"StakeInsufficient(account={verifier}, stake=90 SWARM, needed=100 SWARM)"
        in too_much.output
    )
    assert unbonded.exit_code == 0, unbonded.output
    assert "unbonding 50 SWARM  tx 0x" in unbonded.output
    assert _field(unbonded.output, "stake") == "100 SWARM"
    assert _field(unbonded.output, "unbonding") == "50 SWARM"
    assert _field(unbonded.output, "unbonding release") != "-"
    assert locked.exit_code == 1 and "StakeUnbondingLocked" in locked.output
    assert withdrawn.exit_code == 0 and "withdrew 50 SWARM  tx 0x" in withdrawn.output
    assert _field(withdrawn.output, "unbonding") == "0 SWARM"
    info = contracts.verifier_registry.get_verifier(verifier)
    assert (info.stake, info.unbonding) == (100 * TOKEN, 0)
    assert contracts.token.balance_of(verifier) == 99_900 * TOKEN  # 150 staked, 50 back
    assert shown.exit_code == 0 and f"Verifier {verifier}" in shown.output
    assert _field(shown.output, "active") == "yes" and _field(shown.output, "stake") == "100 SWARM"
    assert stranger.exit_code == 0
    assert _field(stranger.output, "registered") == _field(stranger.output, "active") == "no"


def _field(output: str, name: str) -> str:
    """The value of a `name  value` line of a printed record."""
    for line in output.splitlines():
        if line.strip().startswith(name + "  "):
            return line.strip()[len(name) :].strip()
    raise AssertionError(f"no {name!r} in:\n{output}")


def test_keystore_and_deployment_file_instead_of_devnet(
    run: Callable[..., Result],
    contracts: Contracts,
    deployment: Deployment,
    devnet_home: Home,
    tmp_path: Path,
) -> None:
    dev = deployment.account("node-2")
    keystore = tmp_path / "node.json"
    import_wallet(keystore, dev.private_key, "hunter2", kdf=KeystoreKdf.fast_insecure())
    files = ["--deployment", str(devnet_home.devnet_deployment), "--keystore", str(keystore)]

    result = run(
        *register_args(),
        *files,
        "--password-env",
        "NODE_PASSWORD",
        devnet=False,
        env={"NODE_PASSWORD": "hunter2"},
    )
    wrong = run(
        "node", "add-stake", "--amount", "1", *files, "--password-env", "NODE_PASSWORD",
        devnet=False,
        env={"NODE_PASSWORD": "wrong"},
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert contracts.node_registry.get_node(dev.address).registered
    assert wrong.exit_code == 1 and "wrong password" in wrong.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (register_args(blocks="6:2"), "need START < END"),
        (register_args(stake="lots"), "'lots' is not a number of tokens"),
        (register_args(stake="0.0000000000000000001"), "more than 18 decimals"),
        (["node", "show", "0x1234"], "'0x1234' is not an address"),
        (["node", "register", "--help"], "tokens (e.g. 100)"),
    ],
)
def test_bad_input_gets_a_clear_message(
    run: Callable[..., Result], args: list[str], message: str
) -> None:
    result = run(*args)

    assert message in result.output
    assert result.exit_code == (0 if "--help" in args else 2)
    assert "Traceback" not in result.output


def test_a_deployment_for_another_chain_is_refused(
    run: Callable[..., Result], deployment: Deployment, tmp_path: Path
) -> None:
    other = tmp_path / "other.json"
    dataclasses.replace(deployment, chain_id=5).save(other)

    result = run("balance", deployment.deployer, "--deployment", str(other), devnet=False)

    assert result.exit_code == 1
    assert "is chain 31337, but the deployment is on chain 5" in result.output


def test_devnet_commands_without_a_devnet_say_how_to_start_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["chain", "balance", "--devnet", "--home", str(tmp_path)])

    assert result.exit_code == 1
    assert "stakeswarm dev up" in result.output
