"""Test-only waits on real verifier processes. Starting and stopping them is
`stakeswarm.swarm`'s job (`running_verifier`, `start_verifier`, `VerifierProcess`):

    with running_verifier(deployment, workdir, model_path, "verifier-0", peers) as verifier:
        status = wait_for_status(verifier, "a slash", lambda s: s["slashes"]["recorded"] >= 1)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ledger.compile import PROJECT_ROOT
from stakeswarm.swarm import VerifierProcess


def wait_for_status(
    verifier: VerifierProcess,
    what: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Poll the verifier's `/status` until `check` holds and return it; if the verifier exits
    or `timeout` seconds pass first, the test fails with the last status and its logs."""
    deadline = time.monotonic() + timeout
    while True:
        status = verifier.status()
        if check(status):
            return status
        if not verifier.alive() or time.monotonic() > deadline:
            raise AssertionError(f"verifier: {what} did not happen: {status}\n{verifier.logs(60)}")
        time.sleep(0.5)


def status_cli(verifier: VerifierProcess, account: str = "verifier-0") -> str:
    """What `stakeswarm verifier status` prints for `verifier`'s ledger (the CLI must succeed)."""
    shown = subprocess.run(
        [sys.executable, "-m", "stakeswarm", "verifier", "status", "--devnet",
         "--home", str(verifier.home), "--account", account],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def status_field(text: str, name: str) -> str:
    """The value printed after `name` on its line of `status_cli`'s output."""
    for line in text.splitlines():
        if line.strip().startswith(name + "  "):
            return line.strip()[len(name) :].strip()
    raise AssertionError(f"no {name!r} in:\n{text}")
