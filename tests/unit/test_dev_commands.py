"""`stakeswarm dev` as a user reads it: `dev swarm --help` names every cheat mode, and the
command `dev swarm` prints to try runs in another terminal as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from node.fault_modes import FAULT_MODES
from stakeswarm.commands.dev import app, runnable_cli


def test_dev_swarm_help_lists_every_cheat_mode() -> None:
    result = CliRunner().invoke(app, ["swarm", "--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0
    text = re.sub(r"[\s│|]+", " ", result.output)  # the help box wraps and frames lines
    for mode in FAULT_MODES:
        assert mode in text, mode
    assert "withhold" in text


def test_the_mode_names_need_no_torch() -> None:
    code = "import sys, node.fault_modes, node.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert result.stdout.strip() == "False", result.stderr


def _venv(root: Path) -> Path:
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "stakeswarm").write_text("#!/bin/sh\n")
    return bin_dir / "python"


def test_the_printed_cli_is_the_venvs_script_relative_to_the_project(tmp_path: Path) -> None:
    python = _venv(tmp_path / "project")

    assert runnable_cli(python, tmp_path / "project", None) == [".venv/bin/stakeswarm"]
    assert runnable_cli(python, tmp_path / "elsewhere", "/usr/bin/stakeswarm") == [
        str(tmp_path / "project" / ".venv" / "bin" / "stakeswarm")
    ]


def test_a_bare_stakeswarm_only_when_path_finds_this_one(tmp_path: Path) -> None:
    python = _venv(tmp_path)
    script = str(tmp_path / ".venv" / "bin" / "stakeswarm")

    assert runnable_cli(python, tmp_path, script) == ["stakeswarm"]


def test_without_a_console_script_the_interpreter_runs_the_module(tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python3"

    assert runnable_cli(python, tmp_path / "elsewhere", None) == [str(python), "-m", "stakeswarm"]
