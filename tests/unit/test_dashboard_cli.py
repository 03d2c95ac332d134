"""`stakeswarm dashboard` as a newcomer types it: a malformed peer, no chain named, or no
deployment file is refused with one `error:` line (and no traceback) before anything is served."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER = "/ip4/127.0.0.1/tcp/1/p2p/QmWtA8FbXdUdnHcxV1N1TTtsxyTbFzZHm8G63Z4sqGGmEd"  # nobody listens


def _dashboard(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "stakeswarm", "dashboard", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_bad_inputs_are_refused_with_one_line(tmp_path: Path) -> None:
    bad_peer = _dashboard("--initial-peers", "127.0.0.1:31337", "--devnet")
    assert bad_peer.returncode == 2
    assert "--initial-peers '127.0.0.1:31337'" in _error(bad_peer)

    no_chain = _dashboard("--initial-peers", PEER)
    assert no_chain.returncode == 2
    assert "give --devnet, or --deployment FILE" in _error(no_chain)

    no_devnet = _dashboard("--initial-peers", PEER, "--devnet", "--home", str(tmp_path))
    assert no_devnet.returncode == 1
    assert "no deployment file at" in _error(no_devnet)
