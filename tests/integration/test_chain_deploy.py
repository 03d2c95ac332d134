"""`stakeswarm chain deploy` to a plain Anvil, as an operator would deploy to a public chain.

The chain is a bare Anvil (no devnet deployment, no dev accounts in any file); every actor is
a fresh key in an encrypted keystore, given ETH by a transfer from an Anvil account. The
command runs as a real subprocess; the deployment it writes is then used by the other
`stakeswarm chain` commands and by a real node serving a paid client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import base58
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.chain import Chain
from ledger.compile import PROJECT_ROOT, compile_contracts
from ledger.contracts import Contracts, StakeToken
from ledger.deployment import CONTRACT_NAMES, TOKEN, Deployment
from ledger.types import ChannelId, Wei, model_id
from stakeswarm.devnet import LocalChain, dev_keys
from stakeswarm.swarm import NodeProcess
from tests.integration.nodes import Payer, client_p2p, serve_two_steps, wait_committed

pytestmark = pytest.mark.timeout(900)

PASSWORD_ENV = "STAKESWARM_TEST_KEYSTORE_PASSWORD"
PASSWORD = "correct horse battery staple"
ETH = 10**18
PEER_ID = base58.b58encode(b"\x00\x24\x08\x01\x12\x20" + b"\x07" * 32).decode()
# the deployment's parameters, as the operator types them, and what they mean in base units
DEPLOY_ARGS = (
    "--min-stake-per-block", "5",
    "--min-verifier-stake", "50.5",
    "--unbonding-delay", "2h",
    "--challenge-window", "3600",
    "--commit-deadline", "10m",
    "--receipt-challenge-period", "1h",
    "--response-window", "30m",
    "--challenge-bond", "0.5",
    "--max-channel-duration", "2d",
    "--slash-bps", "4000",
    "--bounty-bps", "1000",
    "--token-symbol", "STK",
)  # fmt: skip
EXPECTED_PARAMS = {
    "token_symbol": "STK",
    "min_stake_per_block": 5 * TOKEN,
    "min_verifier_stake": 50_500_000_000_000_000_000,
    "unbonding_delay": 7200,
    "challenge_window": 3600,
    "commit_deadline": 600,
    "receipt_challenge_period": 3600,
    "response_window": 1800,
    "challenge_bond": TOKEN // 2,
    "max_channel_duration": 172_800,
    "quorum": 1,
    "slash_bps": 4000,
    "bounty_bps": 1000,
}


@dataclass(frozen=True)
class Keystore:
    """A fresh key in an encrypted keystore file."""

    path: Path
    account: LocalAccount

    @property
    def address(self) -> str:
        return self.account.address


@dataclass(frozen=True)
class Plain:
    """A bare Anvil, a connection to it, and an account Anvil funded (a faucet)."""

    rpc_url: str
    chain: Chain
    faucet: LocalAccount
    workdir: Path

    def keystore(self, name: str, eth: int = 10 * ETH) -> Keystore:
        """A new key in `<workdir>/<name>.json`, given `eth` wei by the faucet."""
        account = Account.create()
        encrypted = Account.encrypt(account.key, PASSWORD, kdf="scrypt", iterations=2**4)
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(encrypted))
        path.chmod(0o600)
        if eth:
            self.chain.sender(self.faucet).transfer_eth(account.address, eth)
        return Keystore(path, account)


def stakeswarm(*args: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    """Run `python -m stakeswarm ARGS` with the keystore password in PASSWORD_ENV."""
    env = {**os.environ, PASSWORD_ENV: password, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "stakeswarm", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def deploy(deployer: Keystore, rpc_url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return stakeswarm(
        "chain", "deploy",
        "--rpc", rpc_url,
        "--keystore", str(deployer.path),
        "--password-env", PASSWORD_ENV,
        "--out", str(out),
        *extra,
    )  # fmt: skip


def with_keystore(deployment_file: Path, keystore: Keystore) -> tuple[str, ...]:
    return (
        "--deployment", str(deployment_file),
        "--keystore", str(keystore.path),
        "--password-env", PASSWORD_ENV,
    )  # fmt: skip


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plain]:
    workdir = tmp_path_factory.mktemp("plain-chain")
    local = LocalChain.start("anvil", log_path=workdir / "anvil.log", accounts=2)
    try:
        chain = Chain(local.rpc_url, compile_contracts().abis())
        yield Plain(local.rpc_url, chain, dev_keys(2)[1], workdir)
    finally:
        local.stop()


@pytest.fixture(scope="module")
def deployer(plain: Plain) -> Keystore:
    return plain.keystore("deployer")


@pytest.fixture(scope="module")
def deployed(plain: Plain, deployer: Keystore) -> tuple[subprocess.CompletedProcess, Path]:
    out = plain.workdir / "deployment.json"
    result = deploy(deployer, plain.rpc_url, out, *DEPLOY_ARGS, "--confirmations", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    return result, out


def test_deploy_prints_every_address_and_writes_a_keyless_deployment_file(
    plain: Plain, deployer: Keystore, deployed: tuple[subprocess.CompletedProcess, Path]
) -> None:
    result, out = deployed
    deployment = Deployment.load(out)

    assert deployment.accounts == () and "private_key" not in out.read_text().replace(
        '"accounts": []', ""
    )
    assert out.stat().st_mode & 0o077 == 0
    assert (deployment.chain_id, deployment.rpc_url) == (31337, plain.rpc_url)
    assert deployment.deployer == deployer.address
    for attr, name in CONTRACT_NAMES.items():
        address = getattr(deployment.contracts, attr)
        assert len(plain.chain.w3.eth.get_code(address)) > 0, name
        assert any(name in line and address in line for line in result.stdout.splitlines())
    for name, value in EXPECTED_PARAMS.items():
        assert getattr(deployment.params, name) == value, name
    assert deployment.params.reward_recipient is None
    # six deployments from deploy_block on, one block each; the last has 3 confirmations
    assert plain.chain.block_number() >= deployment.deploy_block + 5 + 2
    contracts = Contracts.from_deployment(plain.chain, deployment)
    assert contracts.token.symbol() == "STK"
    assert contracts.token.balance_of(deployer.address) == deployment.params.token_supply
    assert contracts.node_registry.min_stake_per_block() == 5 * TOKEN
    for shown in ("5 STK", "50.5 STK", "2h (7200 s)", "1h (3600 s)", "2d (172800 s)", "4000 bps"):
        assert shown in result.stdout, shown
    assert f"--deployment {out}" in result.stdout


def test_an_existing_deployment_file_is_kept_without_force(
    plain: Plain, deployer: Keystore, deployed: tuple[subprocess.CompletedProcess, Path]
) -> None:
    _, out = deployed
    before = out.read_text()

    result = deploy(deployer, plain.rpc_url, out)

    assert_one_error_line(result, "exists", "--force")
    assert out.read_text() == before


def test_operators_register_pay_and_serve_on_the_deployment(
    plain: Plain,
    deployer: Keystore,
    deployed: tuple[subprocess.CompletedProcess, Path],
    model_path: Path,
    tmp_path: Path,
) -> None:
    _, out = deployed
    deployment = Deployment.load(out)
    chain = deployment.connect()
    treasury = StakeToken(chain, deployment.contracts.stake_token, chain.sender(deployer.account))
    operator, client, verifier, server = (
        plain.keystore(name) for name in ("operator", "client", "verifier", "server")
    )
    for actor in (operator, client, verifier, server):
        treasury.transfer(actor.address, Wei(1_000 * TOKEN))

    registered = stakeswarm(
        "chain", "node", "register",
        "--model", "tiny-llama", "--blocks", "0:4", "--price", "0.001",
        "--peer-id", PEER_ID, "--stake", "20",
        *with_keystore(out, operator),
    )  # fmt: skip
    opened = stakeswarm(
        "chain", "channel", "open",
        "--server", operator.address, "--deposit", "3", "--duration", "600",
        *with_keystore(out, client),
    )  # fmt: skip
    verifying = stakeswarm(
        "chain", "verifier", "register", "--stake", "50.5", *with_keystore(out, verifier)
    )

    for result in (registered, opened, verifying):
        assert result.returncode == 0, result.stdout + result.stderr
    contracts = Contracts.from_deployment(chain, deployment)
    node = contracts.node_registry.get_node(operator.address)
    assert (node.model_id, node.span_start, node.span_end) == (model_id("tiny-llama"), 0, 4)
    assert node.stake == 20 * TOKEN and contracts.node_registry.is_active(operator.address)
    channel = contracts.payment_channels.get_channel(ChannelId(1))
    assert (channel.client, channel.server, channel.deposit) == (
        client.address,
        operator.address,
        3 * TOKEN,
    )
    assert contracts.verifier_registry.is_active(verifier.address)
    assert "20 STK" in registered.stdout and "50.5 STK" in verifying.stdout

    # a real node serving the whole tiny model, paid by the client through a channel
    home = tmp_path / "server-home"
    logs = tmp_path / "server"
    logs.mkdir()
    command = [
        sys.executable, "-m", "node", "serve",
        "--model", str(model_path), "--blocks", "0:6",
        *with_keystore(out, server),
        "--home", str(home), "--http-port", "0", "--threads", "1",
        "--commit-interval", "1",
    ]  # fmt: skip
    env = {**os.environ, PASSWORD_ENV: PASSWORD, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    with (logs / "stdout.log").open("wb") as stdout, (logs / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    served = NodeProcess("server", process, home, logs / "stdout.log", logs / "stderr.log")
    try:
        served.wait_ready()
        assert served.address == server.address
        with client_p2p(served.maddrs) as (runner, p2p):
            serve_two_steps(runner, p2p, Payer(deployment, chain, client.account), served)
        wait_committed(served, 2)
    finally:
        served.stop()
    assert contracts.node_registry.get_node(server.address).stake == 6 * 5 * TOKEN
    assert contracts.payment_channels.get_channel(ChannelId(2)).server == server.address


def test_deploy_with_an_existing_erc20_stakes_in_it(plain: Plain) -> None:
    artifact = compile_contracts()["StakeToken"]
    theirs = plain.chain.sender(plain.faucet).deploy(
        artifact.abi, artifact.bytecode,
        "Someone Else's Dollar", "SED", plain.faucet.address, 5_000_000 * TOKEN,
        name="StakeToken",
    )  # fmt: skip
    token = theirs.contract_address
    assert token is not None
    deployer = plain.keystore("deployer-with-token")
    out = plain.workdir / "existing-token.json"

    refused = deploy(deployer, plain.rpc_url, out, "--token", token, "--token-supply", "5")
    result = deploy(deployer, plain.rpc_url, out, "--token", token, "--min-stake-per-block", "2")

    assert_one_error_line(refused, "--token-supply", "--token")
    assert result.returncode == 0, result.stdout + result.stderr
    deployment = Deployment.load(out)
    assert deployment.contracts.stake_token == token
    assert any(
        "StakeToken (existing)" in line and token in line for line in result.stdout.splitlines()
    )
    assert plain.chain.nonce(deployer.address) == 5  # five contracts: no StakeToken of its own
    assert (deployment.params.token_name, deployment.params.token_symbol) == (
        "Someone Else's Dollar",
        "SED",
    )
    contracts = Contracts.from_deployment(plain.chain, deployment)
    assert contracts.node_registry.min_stake_per_block() == 2 * TOKEN
    balance = stakeswarm("chain", "balance", plain.faucet.address, "--deployment", str(out))
    assert balance.returncode == 0 and "5000000 SED" in balance.stdout, balance.stderr


@pytest.mark.parametrize(
    "case", ["bad rpc", "wrong password", "token not a contract", "deployer without gas"]
)
def test_deploy_errors_are_one_line(plain: Plain, deployer: Keystore, case: str) -> None:
    out = plain.workdir / f"never-{case.replace(' ', '-')}.json"
    if case == "bad rpc":
        result = deploy(deployer, "http://127.0.0.1:1", out)
        words: tuple[str, ...] = ("cannot reach the chain", "http://127.0.0.1:1")
    elif case == "wrong password":
        result = stakeswarm(
            "chain", "deploy", "--rpc", plain.rpc_url, "--keystore", str(deployer.path),
            "--password-env", PASSWORD_ENV, "--out", str(out),
            password="not the password",
        )  # fmt: skip
        words = ("wrong password",)
    elif case == "token not a contract":
        result = deploy(deployer, plain.rpc_url, out, "--token", plain.faucet.address)
        words = ("no contract at", plain.faucet.address)
    else:
        broke = plain.keystore("broke", eth=0)
        result = deploy(broke, plain.rpc_url, out)
        words = (broke.address, "fund it")

    assert_one_error_line(result, *words)
    assert not out.exists()
