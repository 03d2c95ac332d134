"""What a newcomer types and sees: local inputs (peer addresses, the model folder, --chat) are
refused with one `error:` line before any chain, ledger or network work, and the CLI itself
loads no model or network library until a command needs it.

Every test runs the CLI as a user would, in a subprocess; none needs a chain (a command that
got as far as the chain would fail differently: no devnet runs under the `--home` given).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stakeswarm.tiny_models import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_ID = "QmWtA8FbXdUdnHcxV1N1TTtsxyTbFzZHm8G63Z4sqGGmEd"  # well formed; nobody listens
GOOD_PEER = f"/ip4/127.0.0.1/tcp/1/p2p/{PEER_ID}"
HEAVY = ("torch", "transformers", "hivemind", "web3", "eth_account")


def _stakeswarm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "stakeswarm", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 2)


BAD_PEERS = [
    ("127.0.0.1:40113", "not a multiaddr (Must begin with /)"),
    ("/ip4/127.0.0.1/tcp/40113", "no peer id (/p2p/PEER_ID)"),
    ("/ip4/127.0.0.1/tcp/40113/p2p/Qm...", "not a multiaddr"),
]


def _refuses_the_peer(
    home: Path, result: subprocess.CompletedProcess[str], peer: str, problem: str
) -> None:
    assert result.returncode == 2
    line = _one_error_line(result)
    assert f"--initial-peers {peer!r}: {problem}" in line
    assert "expected /ip4/HOST/tcp/PORT/p2p/PEER_ID" in line
    assert not home.exists()  # no ledger, no identity, nothing written


@pytest.mark.parametrize(("peer", "problem"), BAD_PEERS)
def test_client_generate_refuses_a_malformed_initial_peer_before_anything_else(
    tmp_path: Path, tiny: Path, peer: str, problem: str
) -> None:
    home = tmp_path / "home"
    result = _stakeswarm(
        "client", "generate", "hi", "--model", str(tiny), "--initial-peers", peer,
        "--devnet", "--home", str(home),
    )  # fmt: skip
    _refuses_the_peer(home, result, peer, problem)


@pytest.mark.parametrize("command", [("node", "serve"), ("verifier", "run")])
def test_servers_refuse_a_malformed_initial_peer_before_anything_else(
    tmp_path: Path, tiny: Path, command: tuple[str, ...]
) -> None:
    home = tmp_path / "home"
    peer, problem = BAD_PEERS[0]
    result = _stakeswarm(
        *command, "--model", str(tiny), "--initial-peers", GOOD_PEER, "--initial-peers", peer,
        "--devnet", "--home", str(home),
    )  # fmt: skip
    _refuses_the_peer(home, result, peer, problem)


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_node_serve_refuses_a_model_folder_without_config_before_its_ledger(
    tmp_path: Path, folder: str
) -> None:
    model = tmp_path / folder
    if folder == "empty":
        model.mkdir()
    home = tmp_path / "home"
    result = _stakeswarm(
        "node", "serve", "--model", str(model), "--blocks", "0:1", "--devnet", "--home", str(home)
    )
    assert result.returncode == 2
    line = _one_error_line(result)
    assert str(model) in line
    assert ("no such folder" if folder == "missing" else "no config.json") in line
    assert not home.exists()  # no ledger was created, no migration ran


def test_chat_without_a_chat_template_is_refused_before_joining(tmp_path: Path, tiny: Path) -> None:
    home = tmp_path / "home"
    result = _stakeswarm(
        "client", "generate", "hi", "--chat", "--model", str(tiny),
        "--initial-peers", GOOD_PEER, "--devnet", "--home", str(home),
    )  # fmt: skip
    assert result.returncode == 2
    assert _one_error_line(result) == "error: --chat: this model's tokenizer has no chat template"
    assert not home.exists()  # refused before the chain, the ledger and the swarm


def test_importing_the_cli_loads_no_model_or_network_library() -> None:
    probe = f"import sys, stakeswarm.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "[]"


def test_wallet_show_loads_no_model_or_network_library(tmp_path: Path) -> None:
    """`client wallet show` without a deployment only reads the keystore's address."""
    keystore = tmp_path / "keystore.json"
    address = "0x" + "ab" * 20
    keystore.write_text(json.dumps({"address": address[2:], "crypto": {}, "version": 3}))
    probe = (
        "import sys\n"
        "from stakeswarm.cli import app\n"
        "try:\n"
        f"    app(['client', 'wallet', 'show', '--keystore', {str(keystore)!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert address.lower() in result.stdout.lower(), result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@NO_CUDA
@pytest.mark.parametrize("command", [("node", "serve", "--blocks", "0:1"), ("verifier", "run")])
def test_servers_on_a_machine_without_cuda_refuse_device_cuda_before_their_ledger(
    tmp_path: Path, tiny: Path, command: tuple[str, ...]
) -> None:
    home = tmp_path / "home"
    result = _stakeswarm(
        *command, "--model", str(tiny), "--device", "cuda", "--devnet", "--home", str(home)
    )
    assert result.returncode == 2
    assert _one_error_line(result) == (
        "error: --device cuda: this machine has no CUDA device (torch sees none); "
        "use --device cpu or auto"
    )
    assert not home.exists()  # no ledger was created, no migration ran


@NO_CUDA
def test_client_generate_without_cuda_refuses_device_cuda_before_joining(
    tmp_path: Path, tiny: Path
) -> None:
    home = tmp_path / "home"
    result = _stakeswarm(
        "client", "generate", "hi", "--model", str(tiny), "--initial-peers", GOOD_PEER,
        "--device", "cuda:1", "--devnet", "--home", str(home),
    )  # fmt: skip
    assert result.returncode == 2
    assert "this machine has no CUDA device" in result.stderr
    assert not home.exists()


def test_node_serve_refuses_a_span_whose_cache_does_not_fit_before_its_ledger(
    tmp_path: Path, tiny: Path
) -> None:
    home = tmp_path / "home"
    result = _stakeswarm(
        "node", "serve", "--model", str(tiny), "--blocks", "0:2", "--device", "cpu",
        "--cache-tokens", str(10**12), "--devnet", "--home", str(home),
    )  # fmt: skip
    assert result.returncode == 2
    line = _one_error_line(result)
    assert line.startswith("error: blocks 0:2 need ~")
    assert "for 1000000000000 tokens) but cpu has" in line
    assert line.endswith("at most 0 blocks fit; lower --cache-tokens or free memory")
    assert not home.exists()
