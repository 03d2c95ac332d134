"""`stakeswarm dev swarm` as a user runs it: a real subprocess starts its own chain and nodes on
a tiny model and prints how to use them; the `stakeswarm client generate` command it suggests
works as printed; Ctrl-C (and `stakeswarm dev down`, which sends SIGTERM) stops every process
it started.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from stakeswarm.commands.dev import runnable_cli
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.interrupt import sigint_reaches_it
from tests.integration.nodes import REPO_ROOT

pytestmark = pytest.mark.timeout(600)

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "300"}
_PEER_LINE = re.compile(r"^\s+(/ip4/\S+/p2p/\S+)$", re.MULTILINE)
_NODE_LINE = re.compile(r"^\s+(node-\d+)\s+(0x[0-9a-fA-F]{40})\s+blocks (\d+):(\d+)", re.MULTILINE)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 5)


class DevSwarm:
    """A `stakeswarm dev swarm` subprocess and its output."""

    def __init__(self, process: subprocess.Popen[bytes], output: Path, home: Path) -> None:
        self.process = process
        self.output = output
        self.home = home

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, marker: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while marker not in (text := self.text()):
            assert self.process.poll() is None, f"dev swarm exited early:\n{text}"
            assert time.monotonic() < deadline, f"no {marker!r} after {timeout} s:\n{text}"
            time.sleep(0.5)
        return text

    def chain_pid(self) -> int:
        """The chain's pid, as the devnet state file records it."""
        return json.loads((self.home / "devnet" / "devnet.json").read_text())["chain_pid"]


@contextmanager
def dev_swarm(home: Path, *args: str) -> Iterator[DevSwarm]:
    output = home.parent / f"{home.name}.log"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stakeswarm", "dev", "swarm", "--home", str(home), *args],
            cwd=REPO_ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=sigint_reaches_it,
        )  # fmt: skip
    swarm = DevSwarm(process, output, home)
    try:
        yield swarm
    finally:
        if process.poll() is None:  # the test failed half-way: do not leave it running
            process.send_signal(signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                groups = set()
                with suppress(OSError, ValueError, KeyError):
                    groups.add(swarm.chain_pid())  # the chain's command line names no home
                process.kill()
                process.wait()
                for left in _started_by(home, groups):  # its chain and nodes, orphaned
                    with suppress(psutil.NoSuchProcess):
                        psutil.Process(int(left.split(":")[0])).kill()


def _started_by(home: Path, pids: set[int]) -> list[str]:
    """Processes still running that the swarm started: with its home on their command line, or
    in the process group of one of `pids` (each started in a group of its own)."""
    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if str(home) in cmdline or os.getpgid(process.pid) in pids:
                left.append(f"{process.pid}: {cmdline[:200]}")
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return left


def _children(swarm: DevSwarm) -> dict[int, str]:
    """The processes `dev swarm` started itself (the chain and the nodes), pid -> command."""
    return {
        child.pid: " ".join(child.cmdline())
        for child in psutil.Process(swarm.process.pid).children()
    }


def test_a_client_generates_through_the_swarm_and_ctrl_c_stops_it(
    model_path: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with dev_swarm(home, "--model", str(model_path), "--nodes", "3") as swarm:
        text = swarm.wait_for("swarm running")
        nodes = _NODE_LINE.findall(text)
        assert [(n[0], int(n[2]), int(n[3])) for n in nodes] == [
            ("node-0", 0, 2), ("node-1", 2, 4), ("node-2", 4, 5),
        ]  # fmt: skip
        peers = _PEER_LINE.findall(text)
        assert len(peers) >= 3
        assert f"deployment file: {home / 'devnet' / 'deployment.json'}" in text
        assert (home / "devnet" / "deployment.json").is_file()
        children = _children(swarm)
        assert swarm.chain_pid() in children
        assert sum("node serve" in command for command in children.values()) == 3
        pids = set(children)

        # the suggested command, as printed (no venv activated: no bare `stakeswarm` unless
        # PATH finds this environment's)
        suggested = next(line.strip() for line in text.splitlines() if "client generate" in line)
        argv = shlex.split(suggested)
        assert argv[argv.index("client") + 1] == "generate"
        assert argv[: argv.index("client")] == runnable_cli(cwd=REPO_ROOT)
        argv[argv.index("--max-new-tokens") + 1] = "4"
        client = subprocess.run(
            argv, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=240
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert "4 tokens in" in client.stdout
        for _, address, _, _ in nodes:
            assert address in client.stdout  # every node was on the route and paid

        swarm.process.send_signal(signal.SIGINT)
        assert swarm.process.wait(120) == 0
    out = swarm.text()
    assert "swarm stopped" in out
    assert _started_by(home, pids) == []
    assert not (home / "devnet" / "devnet.json").exists()


def test_dev_down_stops_a_swarm_and_a_bad_cheat_is_refused(
    model_path: Path, tmp_path: Path
) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "stakeswarm", "dev", "swarm", "--model", str(model_path),
         "--home", str(tmp_path / "bad"), "--faulty", "0:lazy"],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "unknown cheat mode 'lazy'" in bad.stderr
    assert not (tmp_path / "bad" / "devnet" / "devnet.json").exists()

    home = tmp_path / "home"
    args = ("--model", str(model_path), "--nodes", "2", "--faulty", "1:noise")
    with dev_swarm(home, *args) as swarm:
        text = swarm.wait_for("swarm running")
        assert re.search(r"node-1 .* CHEATS: --faulty noise", text), text
        children = _children(swarm)
        assert swarm.chain_pid() in children
        assert sum("node serve" in command for command in children.values()) == 2
        pids = set(children)
        down = subprocess.run(
            [sys.executable, "-m", "stakeswarm", "dev", "down", "--home", str(home)],
            cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert down.returncode == 0, down.stdout + down.stderr
        assert swarm.process.wait(60) == 0
    assert "swarm stopped" in swarm.text()
    assert _started_by(home, pids) == []
