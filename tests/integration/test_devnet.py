"""`stakeswarm dev up` / `dev down` as real processes, on Anvil and on Hardhat's node."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ledger.chain import ChainError
from ledger.contracts import Contracts
from ledger.deployment import Deployment
from stakeswarm.devnet import Devnet, DevnetConfig, DevnetState
from stakeswarm.home import Home
from tests.integration.interrupt import sigint_reaches_it

STARTUP_TIMEOUT = 120.0  # seconds: compiling from scratch on a busy 2-core machine included


def stakeswarm(*args: str) -> list[str]:
    return [sys.executable, "-m", "stakeswarm", *args]


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read the process's stdout until a line contains `needle`; the output so far.

    A thread does the reading: a selector on the pipe would miss lines that `readline` has
    already pulled into the file object's buffer."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)
            if needle in line:
                return
        lines.put("")  # the process ended

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    process.kill()
    process.wait()
    raise AssertionError(f"no {needle!r} from {process.args!r}; output:\n{''.join(seen)}")


@pytest.fixture
def dev_up(tmp_path: Path) -> Iterator[tuple[Home, subprocess.Popen[str]]]:
    """`stakeswarm dev up --home <tmp>` running in the background until it printed its summary."""
    home = Home.resolve(tmp_path / "home")
    process = subprocess.Popen(
        stakeswarm("dev", "up", "--home", str(home.root)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=sigint_reaches_it,
    )
    try:
        wait_for_line(process, "devnet running", STARTUP_TIMEOUT)
        yield home, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        state = DevnetState.load(home.devnet_state)
        if state is not None and state.chain_alive():
            psutil.Process(state.chain_pid).kill()


def test_dev_up_writes_a_working_deployment_and_dev_down_stops_it(
    dev_up: tuple[Home, subprocess.Popen[str]],
) -> None:
    home, process = dev_up
    deployment = Deployment.load(home.devnet_deployment)
    state = DevnetState.load(home.devnet_state)
    assert state is not None and state.owner_pid == process.pid and state.chain_alive()

    chain = deployment.connect()
    contracts = Contracts.from_deployment(chain, deployment)
    node = deployment.account("node-0")
    assert contracts.token.balance_of(node.address) == 100_000 * 10**18
    assert contracts.node_registry.slasher() == deployment.contracts.slasher
    assert [a.role for a in deployment.accounts].count("verifier") == 2

    down = subprocess.run(
        stakeswarm("dev", "down", "--home", str(home.root)),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert down.returncode == 0, down.stderr
    assert f"stopped the anvil devnet at {deployment.rpc_url}" in down.stdout
    assert process.wait(30) == 0
    assert not psutil.pid_exists(state.chain_pid) or not state.chain_alive()
    assert not home.devnet_deployment.exists() and not home.devnet_state.exists()
    with pytest.raises(ChainError, match="cannot reach"):
        deployment.connect()


def test_second_dev_up_in_the_same_home_is_refused(
    dev_up: tuple[Home, subprocess.Popen[str]],
) -> None:
    home, _ = dev_up
    deployment_before = home.devnet_deployment.read_text()

    second = subprocess.run(
        stakeswarm("dev", "up", "--home", str(home.root)),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert second.returncode == 1
    assert "a devnet is already running" in second.stderr
    assert "stakeswarm dev down" in second.stderr
    assert home.devnet_deployment.read_text() == deployment_before  # the first one is untouched


def test_ctrl_c_stops_the_chain(dev_up: tuple[Home, subprocess.Popen[str]]) -> None:
    home, process = dev_up
    state = DevnetState.load(home.devnet_state)
    assert state is not None

    process.send_signal(signal.SIGINT)

    assert process.wait(30) == 0
    assert not state.chain_alive()
    assert not home.devnet_deployment.exists()


def test_dev_down_without_a_devnet_says_so(tmp_path: Path) -> None:
    down = subprocess.run(
        stakeswarm("dev", "down", "--home", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert down.returncode == 0
    assert "no devnet running" in down.stdout


def test_hardhat_devnet_starts_deploys_and_funds_more_than_its_20_accounts(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home")
    process = subprocess.Popen(
        stakeswarm("dev", "up", "--chain", "hardhat", "--accounts", "22", "--home", str(home.root)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=sigint_reaches_it,
    )
    try:
        summary = wait_for_line(process, "devnet running", STARTUP_TIMEOUT)
        deployment = Deployment.load(home.devnet_deployment)
        chain = deployment.connect()
        contracts = Contracts.from_deployment(chain, deployment)
        last = deployment.accounts[21]

        assert "hardhat" in chain.w3.client_version.lower()
        assert contracts.node_registry.slasher() == deployment.contracts.slasher
        assert chain.eth_balance(last.address) > 0
        assert contracts.token.balance_of(last.address) == 100_000 * 10**18
        assert last.private_key in summary
    finally:
        subprocess.run(stakeswarm("dev", "down", "--home", str(home.root)), timeout=60, check=False)
        process.wait(30)
    assert not home.devnet_state.exists()


def test_devnet_context_manager_stops_the_chain_when_the_block_fails(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path)

    with pytest.raises(RuntimeError, match="boom"), Devnet.start(DevnetConfig(home=home)) as d:
        state = DevnetState.load(home.devnet_state)
        assert state is not None and state.chain_alive()
        assert Deployment.load(home.devnet_deployment) == d
        raise RuntimeError("boom")

    assert state is not None and not state.chain_alive()
    assert not home.devnet_state.exists()
