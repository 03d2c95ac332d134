"""Real `stakeswarm verifier run` processes for integration tests, started and always stopped.

    with running_verifier(deployment, workdir, model_path, "verifier-0", peers) as verifier:
        verifier.address, verifier.http_url, verifier.status()

Like `tests.integration.nodes`: each verifier runs with `--devnet --account NAME` in a home of
its own (a copy of the test deployment file), in its own process group, output in files whose
tails are shown when it fails to start; it is stopped by PID (SIGTERM, then SIGKILL of the
group) however the test ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ledger.deployment import Deployment
from tests.integration.nodes import REPO_ROOT, node_home

START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0

_READY = re.compile(r"^ready$", re.MULTILINE)
_ADDRESS = re.compile(r"^stakeswarm verifier (0x[0-9a-fA-F]{40}) auditing", re.MULTILINE)
_HTTP = re.compile(r"^\s+status api\s+(\S+)", re.MULTILINE)


@dataclass
class VerifierProcess:
    """A started verifier and what it printed about itself."""

    account: str
    process: subprocess.Popen[bytes]
    home: Path
    stdout: Path
    stderr: Path
    address: str = ""
    http_url: str = ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.http_url}/status", timeout=10)
        response.raise_for_status()
        return response.json()

    def logs(self, lines: int = 60) -> str:
        def tail(path: Path) -> str:
            if not path.exists():
                return ""
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

        return f"--- {self.account} stdout\n{tail(self.stdout)}\n--- stderr\n{tail(self.stderr)}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = self.stdout.read_text(errors="replace") if self.stdout.exists() else ""
            if _READY.search(text):
                address, http = _ADDRESS.search(text), _HTTP.search(text)
                assert address and http, f"unexpected verifier output:\n{text}"
                self.address, self.http_url = address.group(1), http.group(1)
                return
            if not self.alive():
                raise RuntimeError(f"verifier {self.account} exited early\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"verifier {self.account} not ready\n{self.logs()}")
            time.sleep(0.2)

    def wait_for(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 120.0
    ) -> dict[str, Any]:
        """Poll `/status` until `check` holds; the last status otherwise fails the test."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if check(status):
                return status
            if not self.alive() or time.monotonic() > deadline:
                raise AssertionError(f"verifier: {what} did not happen: {status}\n{self.logs()}")
            time.sleep(0.5)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout)


def start_verifier(
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    account: str,
    initial_peers: Sequence[str],
    *,
    sample_rate: float = 1.0,
    args: Sequence[str] = (),
) -> VerifierProcess:
    """Start one `stakeswarm verifier run` process (not waiting for it)."""
    home = node_home(deployment, workdir / account / "home")
    command = [
        sys.executable, "-m", "stakeswarm", "verifier", "run",
        "--model", str(model_path),
        "--devnet", "--home", str(home), "--account", account,
        "--sample-rate", str(sample_rate),
        "--http-port", "0", "--threads", "1",
        "--poll-interval", "1", "--retry-interval", "2",
    ]  # fmt: skip
    for peer in initial_peers:
        command += ["--initial-peers", peer]
    command += list(args)
    stdout, stderr = workdir / account / "stdout.log", workdir / account / "stderr.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    return VerifierProcess(account, process, home, stdout, stderr)


@contextmanager
def running_verifier(
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    account: str,
    initial_peers: Sequence[str],
    **options: Any,
) -> Iterator[VerifierProcess]:
    """A ready verifier for the duration of the block, stopped however it ends."""
    verifier = start_verifier(deployment, workdir, model_path, account, initial_peers, **options)
    try:
        verifier.wait_ready()
        yield verifier
    finally:
        verifier.stop()
