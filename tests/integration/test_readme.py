"""The README's commands, as written, on the session devnet: every shell command of its "Using
it" section runs in order through the CLI (typer's CliRunner) and must succeed, unless it is
one this test names with the reason it cannot run here. A README edit that breaks a command,
or adds one this test does not know how to skip, fails here: the docs cannot drift.

What the test adds to each command is only what stands for the user's machine: `--home` (the
session devnet's home, where `~/.stakeswarm` would be), a working directory of its own (for
`wallet.json`), a password typed at each keystore prompt, and `WALLET=0x...` set to the address
the command before it printed.
"""

from __future__ import annotations

import getpass
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from stakeswarm.cli import app
from stakeswarm.home import Home
from tests.integration.nodes import REPO_ROOT

README = REPO_ROOT / "README.md"
SECTION = "## Using it"
WALKTHROUGH = "<!-- devnet walkthrough:"
_BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

# command prefix -> why it does not run here
SKIPPED = {
    "stakeswarm dev up": "runs until Ctrl-C; the session devnet stands in for it",
    "stakeswarm dev down": "would stop the session devnet the other commands use",
    "stakeswarm dev swarm": "runs a swarm until Ctrl-C; tests/integration/test_dev_swarm.py runs it",
    "stakeswarm chain deploy --rpc https://rpc.example.org": "an example remote chain",
    ".venv/bin/stakeswarm client": "needs a running swarm; test_dev_swarm.py runs the printed one",
}


def section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else len(text)]


def commands(block: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            found.append(shlex.join(words))
    return found


def readme_commands() -> list[tuple[str, bool]]:
    """Every command of the section, in order, and whether it is in the walkthrough block."""
    text = section(README.read_text(), SECTION)
    found = []
    for match in _BASH_BLOCK.finditer(text):
        in_walkthrough = WALKTHROUGH in text[: match.start()].rsplit("```", 1)[-1]
        found += [(command, in_walkthrough) for command in commands(match.group(1))]
    return found


def skip_reason(command: str) -> str | None:
    return next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)


def test_every_readme_command_runs_or_is_skipped_for_a_stated_reason() -> None:
    found = readme_commands()

    walkthrough = [command for command, inside in found if inside]
    assert len(walkthrough) >= 15, found  # the block and its marker were found
    for command, inside in found:
        if inside:
            assert skip_reason(command) is None, f"the walkthrough must run: {command}"
        else:
            assert skip_reason(command), f"a README command neither run nor skipped: {command}"


def test_the_readme_devnet_walkthrough_runs_as_written(
    chain: Chain,
    contracts: Contracts,
    deployment: Deployment,
    devnet_home: Home,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # wallet.json lands here
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "a devnet password")
    runner = CliRunner()
    variables: dict[str, str] = {}
    last_output = ""
    ran = []
    for command, inside in readme_commands():
        if not inside:
            continue
        assignment = re.fullmatch(r"(\w+)=(\S+)", command)
        if assignment:  # `WALLET=0x...  # the address it printed`
            printed = _ADDRESS.search(last_output)
            assert printed, f"{command}: no address in the output before it:\n{last_output}"
            variables[assignment.group(1)] = printed.group(0)
            continue
        for name, value in variables.items():
            command = command.replace(f"${name}", value)
        command = command.replace("~/.stakeswarm", str(devnet_home.root))
        argv = shlex.split(command)
        assert argv[0] == "stakeswarm", command
        result = runner.invoke(
            app, [*argv[1:], "--home", str(devnet_home.root)], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 0, f"{command}\n{result.output}"
        last_output = result.output
        ran.append(command)

    assert any("verifier withdraw" in command for command in ran)
    wallet = variables["WALLET"]
    node_0 = deployment.account("node-0").address
    assert contracts.token.balance_of(wallet) == 975 * TOKEN  # funded 1000, sent 25
    verifier = contracts.verifier_registry.get_verifier(deployment.account("verifier-0").address)
    assert (verifier.stake, verifier.unbonding) == (100 * TOKEN, 0)
    node = contracts.node_registry.get_node(node_0)
    assert (node.stake, node.unbonding) == (150 * TOKEN, 0)
    assert f"{wallet}: 975 SWARM, " in last_output
