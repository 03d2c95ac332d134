"""Runs a page's commands in order on the session devnet, as a reader would type them.

What stands for the reader's machine, on every page:

- `~/.stakeswarm` is the page's own home (`--home`), holding the devnet's deployment and
  state (so `--devnet` and `dev fund`/`dev advance-time` find the session devnet) and, in
  `models/SmolLM2-135M-Instruct`, a tiny random Llama (6 blocks, with a chat template) under
  the demo model's name;
- `~/` and the working directory are one folder of the page's own, holding `deployment.json`
  (the file a deployer publishes: the devnet's) and `my-llama` (the same tiny Llama);
- `--home` is added to every `stakeswarm` command, `.venv/bin/stakeswarm` is `stakeswarm`;
- a keystore password is typed at every prompt, and every `--password-env NAME` finds it in
  `NAME`;
- `NAME=0x...` sets `$NAME` to the first address the command before it printed;
- the page's substitution table replaces its placeholders (`0xYOU`, `<peer>`...) with what
  the devnet or a process started for the page says.

`stakeswarm` commands run in this process (typer's CliRunner) and must exit 0. A command of
the plan's `background` list runs as its own process (`python -m stakeswarm ...`) beside the
commands after it, until the page is done: it must print `ready` (the next command waits for
it, as a reader does), and its banner (peer, status API) is there for the substitutions. A skipped `stakeswarm` command is
still parsed (options, arguments) without running, so a renamed option fails; a skipped
`make` target must exist in the Makefile and a skipped script must exist.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer
from typer.testing import CliRunner

from ledger.deployment import Deployment
from stakeswarm.cli import app
from stakeswarm.home import Home
from stakeswarm.swarm import (
    ChildProcess,
    NodeProcess,
    NodeSpec,
    SwarmError,
    VerifierProcess,
    start_node,
    stop_all,
)
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.doc_commands import Command
from tests.integration.nodes import REPO_ROOT

PASSWORD = "a devnet password"
DEMO_MODEL = "SmolLM2-135M-Instruct"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_ADDRESS = r"0x[0-9a-fA-F]{40}"
_TAIL = 40  # output lines a failure shows

Substitution = Callable[["DocRun"], str]


@dataclass(frozen=True)
class Plan:
    """How a page's commands run here; every table is keyed by what the page shows."""

    # command prefix -> why it does not run here (name the test that runs it, if one does)
    skip: Mapping[str, str] = field(default_factory=dict)
    # command prefixes started as processes and stopped when the page's commands are done
    background: tuple[str, ...] = ()
    # command prefixes that are not `stakeswarm` and run in bash
    shell: tuple[str, ...] = ()
    # placeholder -> its value here, longest first
    substitute: Mapping[str, Substitution] = field(default_factory=dict)
    # a dev account whose node serves the whole demo-named tiny model beside the page (its
    # join multiaddr is `run.peer`): for pages whose commands use a swarm they do not start
    swarm_node: str | None = None
    # what the page's commands must have done, checked after the last one
    check: Callable[[DocRun], None] | None = None

    def rule(self, argv: tuple[str, ...]) -> tuple[str, str]:
        """("skip", why), ("background", ""), ("shell", "") or ("run", "")."""
        for prefix, why in self.skip.items():
            if _starts_with(argv, prefix):
                return "skip", why
        if any(_starts_with(argv, prefix) for prefix in self.background):
            return "background", ""
        if any(_starts_with(argv, prefix) for prefix in self.shell):
            return "shell", ""
        if argv[0] == "stakeswarm" or "=" in argv[0] and len(argv) == 1:
            return "run", ""
        if piped(argv) is not None:
            return "run", ""
        return "unknown", ""


def piped(argv: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """`printf '...' | stakeswarm ...` as (the printf, the stakeswarm command), else None."""
    if argv[0] != "printf" or "|" not in argv:
        return None
    bar = argv.index("|")
    rest = argv[bar + 1 :]
    if not rest or rest[0] not in ("stakeswarm", ".venv/bin/stakeswarm") or "|" in rest:
        return None
    return argv[:bar], ("stakeswarm", *rest[1:])


def normalized(command: Command) -> tuple[str, ...]:
    """The command's words, `.venv/bin/stakeswarm` as `stakeswarm`."""
    argv = command.argv
    if argv[0] == ".venv/bin/stakeswarm":
        return ("stakeswarm", *argv[1:])
    return argv


def _starts_with(argv: tuple[str, ...], prefix: str) -> bool:
    """Whether the command, its words joined by spaces, starts with `prefix` (whole words, or
    any path under a prefix that ends with `/`)."""
    text = " ".join(argv)
    if not text.startswith(prefix):
        return False
    return len(text) == len(prefix) or prefix.endswith("/") or text[len(prefix)] == " "


@dataclass
class DocRun:
    """One page's run: its folders, what its commands printed, the processes it started."""

    page: str
    plan: Plan
    deployment: Deployment
    home: Path  # stands for ~/.stakeswarm
    cwd: Path  # stands for ~ and the working directory
    workdir: Path  # logs of started processes
    model: Path  # the demo-named tiny model in the home
    variables: dict[str, str] = field(default_factory=dict)
    last_output: str = ""
    started: list[tuple[Command, ChildProcess]] = field(default_factory=list)
    swarm: NodeProcess | None = None
    log: list[str] = field(default_factory=list)  # "page:line  command  -> outcome"

    @classmethod
    def prepare(
        cls, page: str, plan: Plan, deployment: Deployment, devnet_home: Home, root: Path
    ) -> DocRun:
        home, cwd, workdir = root / "home", root / "cwd", root / "processes"
        for folder in (home, cwd, workdir):
            folder.mkdir(parents=True)
        deployment.save(Home(home).devnet_deployment)
        Home(home).devnet_state.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(devnet_home.devnet_state, Home(home).devnet_state)
        deployment.save(cwd / "deployment.json")
        model = make_tiny_model(home / "models", "llama", 6, name=DEMO_MODEL)
        tokenizer = AutoTokenizer.from_pretrained(model)
        tokenizer.chat_template = CHAT_TEMPLATE  # as the instruct model it stands for has
        tokenizer.save_pretrained(model)
        shutil.copytree(model, cwd / "my-llama")
        return cls(page, plan, deployment, home, cwd, workdir, model)

    # --- what substitutions read -------------------------------------------------------------

    def address(self, account: str) -> str:
        return self.deployment.account(account).address

    @property
    def peer(self) -> str:
        """The join multiaddr of the page's swarm node (waiting until it is ready)."""
        assert self.swarm, f"{self.page}: the plan names no swarm_node"
        self.swarm.wait_ready()
        return self.swarm.maddrs[0]

    def node(self, prefix: str) -> NodeProcess:
        """The node the last `node serve` command starting with `prefix` started."""
        process = self._started(prefix)
        assert isinstance(process, NodeProcess), prefix
        return process

    def verifier(self, prefix: str) -> VerifierProcess:
        """The verifier the last `verifier run` command starting with `prefix` started."""
        process = self._started(prefix)
        assert isinstance(process, VerifierProcess), prefix
        return process

    def _started(self, prefix: str) -> ChildProcess:
        found = [p for c, p in self.started if _starts_with(normalized(c), prefix)]
        assert found, f"{self.page}: no command `{prefix}` was started before this one"
        return found[-1]

    # --- running -----------------------------------------------------------------------------

    def start_swarm(self) -> None:
        if self.plan.swarm_node:
            self.swarm = start_node(
                NodeSpec(self.plan.swarm_node, "0:6"), self.deployment, self.workdir, self.model
            )

    def run(self, command: Command) -> None:
        argv = normalized(command)
        action, why = self.plan.rule(argv)
        if action == "unknown":
            raise AssertionError(
                f"{command.where}: `{command.text}` is not a stakeswarm command and the test "
                f"neither runs nor skips it: add it to the page's plan in test_docs.py"
            )
        if action == "skip":
            check_skipped(command, why, self._substituted(command.text))
            self.log.append(f"{command.where}  {command.text}  -> skipped: {why}")
            return
        if len(argv) == 1 and "=" in argv[0]:
            self._assign(command, argv[0])
            return
        argv = tuple(shlex.split(self._substituted(command.text)))
        argv = ("stakeswarm", *argv[1:]) if argv[0] == ".venv/bin/stakeswarm" else argv
        pipe = piped(argv)
        if pipe is not None:  # what printf writes is the command's standard input
            source, argv = pipe
            typed = subprocess.run(
                ["bash", "-c", shlex.join(source)], capture_output=True, text=True, check=True
            )
            self._invoke(command, argv, stdin=typed.stdout)
            return
        if action == "background":
            process = self._spawn(command, argv)
            self.started.append((command, process))
            try:
                process.wait_ready()  # as a reader waits for `ready` before the next command
            except SwarmError as exc:
                raise AssertionError(
                    f"{command.where}: `{command.text}` did not start\n{exc}"
                ) from exc
            self.log.append(f"{command.where}  {command.text}  -> running in the background")
        elif action == "shell":
            self._shell(command, argv)
        else:
            self._invoke(command, argv)

    def finish(self) -> None:
        """Every background process still runs; then the page's own check."""
        for _, process in self.started:
            assert process.alive(), f"{process.name} exited\n{process.logs()}"
        if self.plan.check:
            self.plan.check(self)

    def stop(self) -> dict[str, int]:
        processes = [process for _, process in self.started] + ([self.swarm] if self.swarm else [])
        return stop_all(processes)

    def _assign(self, command: Command, assignment: str) -> None:
        """`WALLET=0x...  # the address it printed`."""
        name = assignment.split("=", 1)[0]
        printed = re.search(_ADDRESS, self.last_output)
        assert printed, f"{command.where}: {command.text}: no address printed before it"
        self.variables[name] = printed.group(0)
        self.log.append(f"{command.where}  {command.text}  -> {printed.group(0)}")

    def _substituted(self, text: str) -> str:
        for placeholder in sorted(self.plan.substitute, key=len, reverse=True):
            if placeholder in text:
                text = text.replace(placeholder, self.plan.substitute[placeholder](self))
        for name, value in self.variables.items():
            text = text.replace(f"${name}", value)
        text = text.replace("~/.stakeswarm", str(self.home))
        return text.replace("~/", f"{self.cwd}/")

    def _invoke(self, command: Command, argv: tuple[str, ...], stdin: str | None = None) -> None:
        assert argv[0] == "stakeswarm", f"{command.where}: {command.text}"
        env = {"COLUMNS": "200", **self._password_env(argv)}
        saved = getpass.getpass
        getpass.getpass = lambda prompt="", stream=None: PASSWORD  # type: ignore[assignment]
        old_cwd = Path.cwd()
        os.chdir(self.cwd)
        try:
            result = CliRunner().invoke(
                app, [*argv[1:], "--home", str(self.home)], env=env, input=stdin
            )
        finally:
            os.chdir(old_cwd)
            getpass.getpass = saved
        output = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            output += "".join(traceback.format_exception(result.exception))
        self._outcome(command, argv, result.exit_code, output)

    def _shell(self, command: Command, argv: tuple[str, ...]) -> None:
        done = subprocess.run(
            shlex.join(argv), shell=True, cwd=self.cwd, capture_output=True, text=True, timeout=60
        )
        self._outcome(command, argv, done.returncode, done.stdout + done.stderr)

    def _outcome(self, command: Command, argv: tuple[str, ...], status: int, output: str) -> None:
        self.last_output = output
        if status != 0:
            tail = "\n".join(output.splitlines()[-_TAIL:])
            ran = "\n".join(self.log[-8:])
            raise AssertionError(
                f"{command.where}: `{command.text}` exited with {status}\n"
                f"ran as: {shlex.join(argv)}\n--- its output (tail)\n{tail}\n"
                f"--- the page's commands before it\n{ran}"
            )
        self.log.append(f"{command.where}  {command.text}  -> ok")

    def _password_env(self, argv: tuple[str, ...]) -> dict[str, str]:
        return {
            argv[i + 1]: PASSWORD for i, word in enumerate(argv[:-1]) if word == "--password-env"
        }

    def _spawn(self, command: Command, argv: tuple[str, ...]) -> ChildProcess:
        name = "-".join(argv[1:3])
        logs = self.workdir / f"{name}-{command.line}"
        logs.mkdir(parents=True)
        stdout, stderr = logs / "stdout.log", logs / "stderr.log"
        env = {
            **os.environ,
            **self._password_env(argv),
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "stakeswarm", *argv[1:], "--home", str(self.home)],
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        kind = {"node serve": NodeProcess, "verifier run": VerifierProcess}.get(
            " ".join(argv[1:3]), ChildProcess
        )
        return kind(f"{command.where} {name}", process, self.home, stdout, stderr)


def check_skipped(command: Command, why: str, text: str | None = None) -> None:
    """What can be checked of a command that does not run (`text`: with its placeholders
    substituted): it has a reason, it parses, its make target or script exists."""
    assert why.strip(), f"{command.where}: skipped without a reason"
    argv = normalized(command)
    if argv[0] == "stakeswarm":
        _parse(command, tuple(shlex.split(text or command.text))[1:])
    elif argv[0] == "make":
        makefile = (REPO_ROOT / "Makefile").read_text()
        for target in argv[1:]:
            assert f"\n{target}:" in makefile, f"{command.where}: no make target {target}"
    elif argv[0].endswith("python") and len(argv) > 1:
        assert (REPO_ROOT / argv[1]).is_file(), f"{command.where}: no script {argv[1]}"


def _parse(command: Command, args: tuple[str, ...]) -> None:
    """Parse `stakeswarm ARGS` as the CLI would, without running it: with `--help` added, click
    parses every option (an unknown one or an unknown subcommand fails) and then only prints
    the help."""
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    if result.exit_code != 0:
        raise AssertionError(
            f"{command.where}: `{command.text}` (skipped) does not parse:\n{result.output}"
        )
