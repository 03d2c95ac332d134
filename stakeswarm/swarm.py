"""A local swarm's processes: nodes (`python -m node serve`) and verifiers (`stakeswarm verifier
run`) started as child processes, waited for until they print `ready`, and always stopped by PID.

    with running_nodes(deployment, workdir, model_path,
                       [NodeSpec("node-0", "0:2"), NodeSpec("node-1", "2:4")]) as nodes:
        nodes[0].peer_id, nodes[0].maddrs, nodes[0].address, nodes[0].http_url, nodes[0].status()

    swarm = LocalSwarm.launch(SwarmConfig(model_path, nodes=3), home)   # a devnet and 3 nodes
    try:
        swarm.initial_peers, swarm.deployment, swarm.nodes
    finally:
        swarm.stop()

Each process runs with `--devnet --account NAME` in a home of its own
(`<workdir>/<account>/home`, holding a copy of the deployment file, so no ledger, libp2p
identity or throughput cache is shared between processes or left from an earlier chain), in
its own session and process group, so a terminal's Ctrl-C reaches only the parent, which stops
them. Output goes to `<workdir>/<account>/stdout.log` and `stderr.log`; their tails are in the
error when a process fails to start. `stop()` sends SIGTERM (a node's clean shutdown: OFFLINE,
commit, redeem), waits, then SIGKILLs the process group, where hivemind's DHT process and the
libp2p daemon live. `stakeswarm dev swarm`, the demo (`stakeswarm.story`), the integration
tests and the benchmarks all start processes through here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ledger.compile import PROJECT_ROOT
from ledger.deployment import Deployment
from node.fault_modes import FAULT_MODES
from stakeswarm.devnet import ChainKind, Devnet, DevnetConfig, dev_roles
from stakeswarm.home import Home

logger = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # seconds for a process to load, register and announce on 2 busy cores
STOP_TIMEOUT = 30.0  # seconds for a clean shutdown before SIGKILL

_READY = re.compile(r"^ready$", re.MULTILINE)
_NODE_ADDRESS = re.compile(r"^stakeswarm node (0x[0-9a-fA-F]{40}) serving", re.MULTILINE)
_VERIFIER_ADDRESS = re.compile(r"^stakeswarm verifier (0x[0-9a-fA-F]{40}) auditing", re.MULTILINE)
_PEER = re.compile(r"^\s+peer id\s+(\S+)", re.MULTILINE)
_JOIN = re.compile(r"^\s+join with\s+--initial-peers (\S+)", re.MULTILINE)
_HTTP = re.compile(r"^\s+status api\s+(\S+)", re.MULTILINE)
_BLOCKS = re.compile(r"^\s+blocks\s+(\d+):(\d+)", re.MULTILINE)


class SwarmError(Exception):
    """A swarm process could not be started (or said something unexpected)."""


@dataclass
class ChildProcess:
    """A started process in its own process group, its output in two files."""

    name: str  # what messages call it, e.g. the dev account "node-1"
    process: subprocess.Popen[bytes]
    home: Path  # its state directory (`--home`)
    stdout: Path
    stderr: Path
    _terminated: bool = field(default=False, init=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """Everything it printed to stdout so far."""
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""

    def logs(self, lines: int = 40) -> str:
        """The tails of its stdout and stderr, for error messages."""
        out, err = _tail(self.stdout, lines), _tail(self.stderr, lines)
        return f"--- {self.name} stdout\n{out}\n--- {self.name} stderr\n{err}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until it prints `ready`, then read what it said about itself; `SwarmError`
        (with its logs) if it exits first or is not ready within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            if _READY.search(text):
                self._parse(text)
                return
            if not self.alive():
                raise SwarmError(
                    f"{self.name} exited with {self.process.returncode} before it was ready\n"
                    f"{self.logs()}"
                )
            if time.monotonic() > deadline:
                raise SwarmError(f"{self.name} not ready after {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.2)  # polling a file another process writes: nothing to block on

    def _parse(self, text: str) -> None:
        """Read the ready banner (subclasses)."""

    def terminate(self) -> None:
        """Ask it to shut down cleanly (SIGTERM), once: a second signal could cut a node's
        shutdown (its last commit and redemption) short."""
        if self.alive() and not self._terminated:
            self._terminated = True
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL the process group; returns the
        exit status (negative: the signal that ended it)."""
        self.terminate()
        try:
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
            if self.alive():
                logger.warning(
                    "%s (pid %d) ignored SIGTERM for %.0f s", self.name, self.pid, timeout
                )
        finally:
            # children (hivemind's DHT process, the libp2p daemon) live in its process group;
            # an interrupted wait (a second Ctrl-C) kills at once
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout)


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _spawn(command: list[str], logs: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start `command` in a new session with stdout/stderr in `logs`; plain, wide output."""
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / "stdout.log", logs / "stderr.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    logger.info("started %s (pid %d)", " ".join(command[1:4]), process.pid)
    return process, stdout, stderr


def process_home(deployment: Deployment, root: Path) -> Path:
    """A home at `root` whose devnet deployment is `deployment` (what `--devnet` reads)."""
    root.mkdir(parents=True, exist_ok=True)
    deployment.save(Home(root).devnet_deployment)
    return root


# --- nodes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: a dev account and either fixed blocks ("0:2") or a count."""

    account: str  # dev account name, e.g. "node-0"
    blocks: str | None = None  # START:END; None: choose `num_blocks` from the swarm
    num_blocks: int | None = None
    args: tuple[str, ...] = ()  # extra `node serve` options, e.g. ("--faulty", "noise")
    # what runs `node serve` after the Python interpreter: the node's module, or a benchmark's
    # script that builds the node with other parts (benchmarks/uncommitted_node.py)
    program: tuple[str, ...] = ("-m", "node")


@dataclass
class NodeProcess(ChildProcess):
    """A started node and what it printed about itself once ready."""

    spec: NodeSpec = field(default_factory=lambda: NodeSpec(""))
    address: str = ""
    peer_id: str = ""
    maddrs: list[str] = field(default_factory=list)
    http_url: str = ""
    span: tuple[int, int] = (0, 0)

    def status(self) -> dict[str, Any]:
        """The node's `/status` document."""
        response = httpx.get(f"{self.http_url}/status", timeout=10)
        response.raise_for_status()
        return response.json()

    def metrics(self) -> str:
        """The node's Prometheus `/metrics` text."""
        return httpx.get(f"{self.http_url}/metrics", timeout=10).text

    def _parse(self, text: str) -> None:
        address, peer, http, blocks = (
            _NODE_ADDRESS.search(text),
            _PEER.search(text),
            _HTTP.search(text),
            _BLOCKS.search(text),
        )
        if not (address and peer and http and blocks):
            raise SwarmError(f"unexpected output of {self.name}:\n{text}")
        self.address = address.group(1)
        self.peer_id = peer.group(1)
        self.http_url = http.group(1)
        self.maddrs = _JOIN.findall(text)
        self.span = (int(blocks.group(1)), int(blocks.group(2)))


def start_node(
    spec: NodeSpec,
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    *,
    initial_peers: Sequence[str] = (),
    model_name: str | None = None,
    threads: int = 1,
) -> NodeProcess:
    """Start one node process in `<workdir>/<account>/` (not waiting for it to be ready)."""
    home = process_home(deployment, workdir / spec.account / "home")
    command = [
        sys.executable, *spec.program, "serve",
        "--model", str(model_path),
        "--devnet", "--home", str(home), "--account", spec.account,
        "--http-port", "0",
        "--threads", str(threads),
    ]  # fmt: skip
    if model_name:
        command += ["--model-name", model_name]
    if spec.blocks:
        command += ["--blocks", spec.blocks]
    if spec.num_blocks:
        command += ["--num-blocks", str(spec.num_blocks)]
    for peer in initial_peers:
        command += ["--initial-peers", peer]
    command += list(spec.args)
    process, stdout, stderr = _spawn(command, workdir / spec.account)
    return NodeProcess(spec.account, process, home, stdout, stderr, spec=spec)


def start_nodes(
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    specs: Sequence[NodeSpec],
    *,
    initial_peers: Sequence[str] = (),
    model_name: str | None = None,
    sequential: bool = False,
    threads: int = 1,
) -> list[NodeProcess]:
    """Start `specs` and return them once all are ready: the first alone unless
    `initial_peers` (it starts the swarm), then the rest together, or one after another with
    `sequential` (e.g. when each chooses its span from the swarm). If any fails to start,
    every one started is stopped and the `SwarmError` raised. The caller stops the nodes."""
    nodes: list[NodeProcess] = []
    try:
        peers = list(initial_peers)
        pending = list(specs)
        if not peers and pending:
            first = start_node(
                pending.pop(0), deployment, workdir, model_path,
                model_name=model_name, threads=threads,
            )  # fmt: skip
            nodes.append(first)
            first.wait_ready()
            peers = first.maddrs
        batch: list[NodeProcess] = []
        for spec in pending:
            node = start_node(
                spec, deployment, workdir, model_path,
                initial_peers=peers, model_name=model_name, threads=threads,
            )  # fmt: skip
            nodes.append(node)
            batch.append(node)
            if sequential:
                node.wait_ready()
        for node in batch:
            node.wait_ready()
        return nodes
    except BaseException:
        stop_all(nodes)
        raise


@contextmanager
def running_nodes(
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    specs: Sequence[NodeSpec],
    **options: Any,
) -> Iterator[list[NodeProcess]]:
    """`start_nodes(...)` for the duration of the block; all stopped however it ends."""
    nodes = start_nodes(deployment, workdir, model_path, specs, **options)
    try:
        yield nodes
    finally:
        stop_all(nodes)


def stop_all(processes: Sequence[ChildProcess], timeout: float = STOP_TIMEOUT) -> dict[str, int]:
    """Stop every process: SIGTERM to all at once (they shut down in parallel), then each is
    waited for and its group killed. One that fails to stop (or a Ctrl-C meanwhile) does not
    keep the others running: the first error is raised once all were dealt with. Returns each
    process's exit status by name."""
    for process in processes:
        process.terminate()
    statuses: dict[str, int] = {}
    error: BaseException | None = None
    for process in processes:
        try:
            statuses[process.name] = process.stop(timeout)
        except BaseException as exc:  # noqa: BLE001 (re-raised below, after the others)
            error = error or exc
    if error is not None:
        raise error
    return statuses


# --- verifiers ------------------------------------------------------------------------------


@dataclass
class VerifierProcess(ChildProcess):
    """A started verifier and what it printed about itself once ready."""

    address: str = ""
    http_url: str = ""

    def status(self) -> dict[str, Any]:
        """The verifier's `/status` document (audits, slashes, bounties)."""
        response = httpx.get(f"{self.http_url}/status", timeout=10)
        response.raise_for_status()
        return response.json()

    def _parse(self, text: str) -> None:
        address, http = _VERIFIER_ADDRESS.search(text), _HTTP.search(text)
        if not (address and http):
            raise SwarmError(f"unexpected output of {self.name}:\n{text}")
        self.address, self.http_url = address.group(1), http.group(1)


def start_verifier(
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    account: str,
    initial_peers: Sequence[str],
    *,
    sample_rate: float = 1.0,
    model_name: str | None = None,
    threads: int = 1,
    args: Sequence[str] = (),
) -> VerifierProcess:
    """Start one `stakeswarm verifier run` process in `<workdir>/<account>/` (not waiting)."""
    home = process_home(deployment, workdir / account / "home")
    command = [
        sys.executable, "-m", "stakeswarm", "verifier", "run",
        "--model", str(model_path),
        "--devnet", "--home", str(home), "--account", account,
        "--sample-rate", str(sample_rate),
        "--http-port", "0", "--threads", str(threads),
        "--poll-interval", "1", "--retry-interval", "2",
    ]  # fmt: skip
    if model_name:
        command += ["--model-name", model_name]
    for peer in initial_peers:
        command += ["--initial-peers", peer]
    command += list(args)
    process, stdout, stderr = _spawn(command, workdir / account)
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
    """A ready verifier for the duration of the block, stopped however it ends; `options`
    are `start_verifier`'s."""
    verifier = start_verifier(deployment, workdir, model_path, account, initial_peers, **options)
    try:
        verifier.wait_ready()
        yield verifier
    finally:
        verifier.stop()


# --- a whole local swarm --------------------------------------------------------------------


def split_blocks(total: int, parts: int) -> list[tuple[int, int]]:
    """`total` blocks in `parts` contiguous spans as even as can be (the first spans take one
    more when it does not divide): split_blocks(30, 4) -> [(0, 8), (8, 16), (16, 23), (23, 30)]."""
    if parts < 1:
        raise SwarmError(f"need at least one node, got {parts}")
    if parts > total:
        raise SwarmError(f"{parts} nodes cannot split {total} blocks (at least one block each)")
    size, extra = divmod(total, parts)
    spans, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        spans.append((start, end))
        start = end
    return spans


def accounts_for(nodes: int, minimum: int = 10) -> int:
    """How many dev accounts a devnet needs for `nodes` node accounts (at least `minimum`)."""
    count = minimum
    while sum(1 for _, role in dev_roles(count) if role == "node") < nodes:
        count += 1
    return count


@dataclass(frozen=True)
class SwarmConfig:
    """A local swarm: which model, how many nodes, which of them cheat, how nodes run."""

    model_path: Path  # local model folder every node serves a span of
    nodes: int = 3  # node processes; they split the model's blocks evenly, in order
    faulty: Mapping[int, str] = field(default_factory=dict)  # node index -> cheat mode
    node_args: tuple[str, ...] = ()  # extra `node serve` options for every node
    model_name: str | None = None  # the swarm's name of the model; None: the folder's name
    threads: int = 1  # torch threads per node
    chain: ChainKind = "anvil"  # which local chain to run

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise SwarmError(f"need at least one node, got {self.nodes}")
        for index, mode in self.faulty.items():
            if not 0 <= index < self.nodes:
                raise SwarmError(f"faulty node {index} is not one of nodes 0..{self.nodes - 1}")
            if mode not in FAULT_MODES:
                raise SwarmError(
                    f"unknown cheat mode {mode!r} for node {index}; known: {', '.join(FAULT_MODES)}"
                )
        if self.threads < 1:
            raise SwarmError(f"threads must be >= 1, got {self.threads}")

    def specs(self, total_blocks: int) -> list[NodeSpec]:
        """One spec per node: node-i serves the i-th even span, with its cheat if any."""
        specs = []
        for index, (start, end) in enumerate(split_blocks(total_blocks, self.nodes)):
            args = list(self.node_args)
            if index in self.faulty:
                args += ["--faulty", self.faulty[index]]
            specs.append(NodeSpec(f"node-{index}", f"{start}:{end}", args=tuple(args)))
        return specs


SMOLLM2 = "smollm2"  # what `--model` may say for the prepared SmolLM2-135M-Instruct folder
MODELS_DIR = "models"  # <home>/models: prepared models (the demo's SmolLM2)


def resolve_model(
    model: str | Path, home: Home, report: Callable[[str], None] = logger.info
) -> Path:
    """The model folder `model` names: "smollm2" is SmolLM2-135M-Instruct in
    `<home>/models`, converted from its GGUF the first time (`report` hears each stage);
    anything else is a local folder that must hold a `config.json`. `SwarmError` otherwise."""
    from stakeswarm.models import ModelPreparationError, prepare_smollm2

    if str(model).lower() == SMOLLM2:
        try:
            return prepare_smollm2(home.root / MODELS_DIR, report)
        except ModelPreparationError as exc:
            raise SwarmError(str(exc)) from None
    path = Path(model).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise SwarmError(
            f"{path} is not a model folder (no config.json); give a Hugging Face folder with "
            f"safetensors weights, or {SMOLLM2!r} for SmolLM2-135M-Instruct"
        )
    return path


def model_blocks(model_path: Path) -> int:
    """How many transformer blocks the model in `model_path` has (its config's layer count)."""
    from node.families import load_config  # transformers: only once a swarm is wanted

    return int(load_config(model_path).num_hidden_layers)


class LocalSwarm:
    """A devnet and the nodes serving a model on it, started together, stopped together."""

    def __init__(self, devnet: Devnet, nodes: list[NodeProcess], workdir: Path) -> None:
        self.devnet = devnet
        self.nodes = nodes
        self.workdir = workdir  # where each node's home and logs are

    @property
    def deployment(self) -> Deployment:
        return self.devnet.deployment

    @property
    def initial_peers(self) -> list[str]:
        """Every node's multiaddrs: what clients and verifiers join the swarm with."""
        return [maddr for node in self.nodes for maddr in node.maddrs]

    @classmethod
    def launch(cls, config: SwarmConfig, home: Home) -> LocalSwarm:
        """Start a devnet in `home` and the nodes (homes and logs under `<home>/swarm/`,
        cleared first: a fresh chain needs fresh node ledgers), wait until all serve;
        everything started is stopped again if any of it fails. The caller `stop()`s it."""
        total = model_blocks(config.model_path)
        specs = config.specs(total)
        devnet_config = DevnetConfig(
            home=home, chain=config.chain, accounts=accounts_for(config.nodes)
        )
        devnet = Devnet.launch(devnet_config)
        try:
            workdir = home.root / "swarm"
            shutil.rmtree(workdir, ignore_errors=True)
            nodes = start_nodes(
                devnet.deployment, workdir, config.model_path, specs,
                model_name=config.model_name, threads=config.threads,
            )  # fmt: skip
        except BaseException:
            devnet.stop()
            raise
        return cls(devnet, nodes, workdir)

    def stop(self) -> None:
        """Stop every node (clean shutdowns, in parallel), then the chain."""
        try:
            stop_all(self.nodes)
        finally:
            self.devnet.stop()
