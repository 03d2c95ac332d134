"""The whole story of stakeswarm on one machine: a staked, paid, verified swarm serves a model,
one node cheats and is slashed.

    result = run_story(StoryConfig(model_path=path, workdir=run_dir), narrator)

What happens, every part real (`stakeswarm demo` runs it on SmolLM2-135M-Instruct):

1. a local chain (Anvil) starts and every contract is deployed (`stakeswarm.devnet`);
2. `nodes` node processes split the model's blocks evenly (node-0 the first span, ...); node
   `faulty_node` runs with `--faulty MODE` (it computes wrongly on purpose); each stakes the
   registry's minimum for its span and commits its leaves every `commit_interval` seconds;
   a live dashboard of the swarm (`dashboard`) starts on 127.0.0.1:`dashboard_port`;
3. in this process, a client (client-0) loads the model's ends, joins the swarm and generates
   greedily, streaming the text, paying every node per token through payment channels;
4. a verifier process (verifier-0) registers with stake and audits the committed leaves at
   `sample_rate` (after the answer: a slash during it would leave the cheat's blocks, which
   no other node serves, without a server);
5. the story waits (up to `slash_timeout` seconds) until the faulty node's stake falls;
6. the verifier and the nodes are stopped (SIGTERM: each node commits what is left and
   redeems its vouchers on the way out), the final stakes and balances are read, and the
   chain is stopped.

Every process is stopped by PID however the story ends (an error, Ctrl-C); a Ctrl-C while
stopping is held back until everything is down. The run's files (chain log, node and
verifier homes with their logs, the client's ledger) stay in `workdir`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from eth_account import Account

from ledger.contracts import Contracts, LeafSlashed
from ledger.deployment import Deployment
from ledger.types import Wei
from stakeswarm.commands.chain_support import format_tokens
from stakeswarm.devnet import ChainKind, Devnet, DevnetConfig
from stakeswarm.home import Home
from stakeswarm.swarm import (
    ChildProcess,
    NodeProcess,
    NodeSpec,
    SwarmConfig,
    SwarmError,
    VerifierProcess,
    model_blocks,
    start_nodes,
    start_verifier,
    stop_all,
)

if TYPE_CHECKING:  # the dashboard loads when the story starts it
    from dashboard.service import Dashboard

logger = logging.getLogger(__name__)

DEMO_PROMPT = "I ate dosa today. What should I cook for dinner?"
DEMO_FAULT = "low-precision"  # bfloat16 compute declared as float32: the answer stays readable,
# the sketches drift past the float32 tolerance, so audits fail
DEMO_FAULT_16BIT = "noise"  # with --dtype bfloat16/float16: 1% output noise, which only the
# blockwise audit of 16-bit nodes sees (verifier.blockwise); the answer stays readable
DEMO_DTYPES = ("float32", "bfloat16", "float16")


def default_fault(dtype: str) -> str:
    """The demo's cheat for a swarm serving in `dtype`."""
    return DEMO_FAULT if dtype == "float32" else DEMO_FAULT_16BIT


CLIENT = "client-0"
VERIFIER = "verifier-0"


class StoryError(Exception):
    """The story could not be played to its end (a process failed, no slash in time)."""


@dataclass(frozen=True)
class StoryConfig:
    """One run of the story: the model, the question, the swarm, the cheat, the patience."""

    model_path: Path  # local model folder (config, safetensors, tokenizer)
    workdir: Path  # the run's files: chain, node/verifier/client homes, logs (must be empty
    # of a running devnet)
    prompt: str = DEMO_PROMPT  # what the client asks
    chat: bool = True  # wrap the prompt in the tokenizer's chat template
    max_new_tokens: int = 96  # tokens generated at most (EOS may stop it earlier)
    nodes: int = 3  # node processes splitting the blocks evenly
    faulty_node: int = 1  # which node cheats (index into the nodes)
    fault: str = DEMO_FAULT  # its cheat mode (`node serve --faulty`; `default_fault(dtype)`)
    dtype: str = "float32"  # what every node computes in and the client sends (`--dtype`)
    sample_rate: float = 0.5  # share of committed leaves the verifier audits
    commit_interval: float = 2.0  # seconds between a node's commits (short: quick audits)
    price: str = "0.001"  # tokens per token per block each node charges
    slash_timeout: float = 180.0  # seconds to wait for the slash after the answer
    threads: int = 1  # torch threads per process (nodes, verifier, this client)
    chain: ChainKind = "anvil"  # which local chain to run
    dashboard_port: int | None = 8080  # the live dashboard on 127.0.0.1 (another free port if
    # taken; None: none)

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.faulty_node < self.nodes:
            problems.append(
                f"faulty_node must be one of the nodes 0..{self.nodes - 1}, got {self.faulty_node}"
            )
        if not 0 < self.sample_rate <= 1:
            problems.append(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        for name in ("commit_interval", "slash_timeout"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if not self.prompt.strip():
            problems.append("the prompt is empty")
        if self.dtype not in DEMO_DTYPES:
            problems.append(f"dtype must be one of {', '.join(DEMO_DTYPES)}, got {self.dtype!r}")
        elif self.fault == "low-precision" and self.dtype != "float32":
            problems.append(
                "the low-precision cheat computes in bfloat16 while declaring float32; a "
                f"{self.dtype} swarm's cheat is one of noise, skip-block, wrong-weights, stale"
            )
        if not problems:
            try:
                self.swarm()
            except SwarmError as exc:
                problems.append(str(exc))
        if problems:
            raise StoryError("invalid story: " + "; ".join(problems))

    def swarm(self) -> SwarmConfig:
        """The nodes: even spans, the cheat, frequent commits, redemption only at shutdown."""
        return SwarmConfig(
            model_path=self.model_path,
            nodes=self.nodes,
            faulty={self.faulty_node: self.fault},
            node_args=(
                "--price",
                self.price,
                "--commit-interval",
                str(self.commit_interval),
                "--redeem-interval",
                "3600",
                "--announce-interval",
                "5",
                "--dtype",
                self.dtype,
            ),  # fmt: skip
            threads=self.threads,
            chain=self.chain,
        )


@dataclass(frozen=True)
class NodeOutcome:
    """One node's part in the story."""

    account: str  # dev account, e.g. "node-1"
    address: str
    span: tuple[int, int]  # blocks [start, end)
    cheat: str | None  # its cheat mode; None: honest
    tokens: int  # token positions it computed for the client
    paid: Wei  # what the client's vouchers to it add up to
    earned: Wei  # what it redeemed on-chain (its balance's growth since it registered)
    stake_before: Wei  # active stake once it served
    stake_after: Wei  # active stake at the end

    @property
    def slashed(self) -> Wei:
        return Wei(max(0, self.stake_before - self.stake_after))


@dataclass(frozen=True)
class StoryResult:
    """What the story did, for the final table and for tests."""

    prompt_ids: list[int]  # the prompt as the client sent it (chat template applied)
    new_ids: list[int]  # the tokens generated
    answer: str  # their text
    generation_seconds: float
    nodes: list[NodeOutcome]
    verifier: str  # the verifier's address
    verifier_bounty: Wei  # bounties paid to it by the slashes
    slashes: list[LeafSlashed]
    token_symbol: str
    token_decimals: int
    exit_statuses: dict[str, int]  # process name -> exit status at shutdown
    pids: dict[str, int]  # process name ("chain", "node-0", ...) -> pid; each led its own
    # process group
    seconds: float  # the whole story, from the chain's start to the chain's stop
    workdir: Path
    dashboard_url: str | None = None  # where the live dashboard was (None: not started)


class Narrator(Protocol):
    """Who the story tells what it does (the CLI shows it; tests collect it)."""

    def stage(self, title: str) -> AbstractContextManager[Callable[[str], None]]:
        """A step that takes a while; the value entered is a callback for progress notes."""
        ...

    def say(self, text: str) -> None:
        """One line of the story."""
        ...

    def stream(self, text: str) -> None:
        """A piece of the answer, as it is generated."""
        ...


class LogNarrator:
    """A narrator that logs (the default)."""

    @contextmanager
    def stage(self, title: str) -> Iterator[Callable[[str], None]]:
        logger.info("%s", title)
        yield lambda note: logger.info("%s: %s", title, note)

    def say(self, text: str) -> None:
        logger.info("%s", text)

    def stream(self, text: str) -> None:
        logger.debug("answer: %r", text)


def prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> Any:
    """The prompt's token ids [1, length], in the chat template when `chat`."""
    if not chat:
        return tokenizer(prompt, return_tensors="pt")["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise StoryError("this model's tokenizer has no chat template (turn chat off)")
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
    )
    return encoded["input_ids"] if isinstance(encoded, Mapping) else encoded


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while the processes are being stopped (a second one must not
    leave any of them running); in the main thread only, where signals are delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_story(config: StoryConfig, narrator: Narrator | None = None) -> StoryResult:
    """Play the story (see the module doc) and return what happened; `StoryError` (or the
    component's own error) if a part fails. Nothing started is left running."""
    narrator = narrator or LogNarrator()
    began = time.monotonic()
    swarm = config.swarm()
    total_blocks = model_blocks(config.model_path)
    specs = swarm.specs(total_blocks)
    home = Home.resolve(config.workdir)
    with narrator.stage("starting a local chain (Anvil) and deploying the contracts"):
        devnet = Devnet.launch(DevnetConfig(home=home, chain=config.chain))
    try:
        deployment = devnet.deployment
        narrator.say(
            f"chain {deployment.chain_id} at {deployment.rpc_url}: stake token, node and "
            "verifier registries, commitments, payment channels and slasher deployed"
        )
        result = _play(config, narrator, deployment, specs, home.root / "swarm")
    finally:
        with _interrupts_held():
            devnet.stop()
        narrator.say("local chain stopped")
    pids = {"chain": devnet.chain.pid, **result.pids}
    return replace(result, pids=pids, seconds=time.monotonic() - began)


def _play(
    config: StoryConfig,
    narrator: Narrator,
    deployment: Deployment,
    specs: list[NodeSpec],
    workdir: Path,
) -> StoryResult:
    chain = deployment.connect()
    contracts = Contracts.from_deployment(chain, deployment)
    registry, token = contracts.node_registry, contracts.token
    symbol, decimals = token.symbol(), token.decimals()
    processes: list[ChildProcess] = []
    statuses: dict[str, int] = {}
    board: Dashboard | None = None
    try:
        with narrator.stage(
            f"starting {len(specs)} nodes: each loads its blocks, stakes and joins the swarm"
        ):
            nodes = start_nodes(
                deployment, workdir, config.model_path, specs, threads=config.threads
            )
        processes.extend(nodes)
        cheat_of = {
            node.name: config.fault if index == config.faulty_node else None
            for index, node in enumerate(nodes)
        }
        stake_before = {node.name: registry.get_node(node.address).stake for node in nodes}
        balance_before = {node.name: token.balance_of(node.address) for node in nodes}
        for node in nodes:
            start, end = node.span
            role = f"[CHEATS: --faulty {cheat_of[node.name]}]" if cheat_of[node.name] else "honest"
            narrator.say(
                f"{node.name} {node.address} serves blocks {start}:{end} in {config.dtype}, "
                f"staked {_show(stake_before[node.name], decimals, symbol)}, {role}"
            )
        cheat = nodes[config.faulty_node]
        narrator.say(
            f"{cheat.name} cheats on purpose: {_describe(config.fault)}; a verifier re-running "
            "its blocks will see it"
        )
        peers = [maddr for node in nodes for maddr in node.maddrs]
        if config.dashboard_port is not None:
            board = _start_dashboard(narrator, deployment, peers, config.dashboard_port)

        generation = _generate(config, narrator, deployment, peers, workdir)

        # The verifier comes after the answer: audits run after the fact anyway (on committed
        # leaves, within the challenge window), and a slash during the answer would take the
        # cheat, the only server of its blocks, out of the client's route mid-sentence.
        with narrator.stage(
            f"starting {VERIFIER}: it stakes and audits the leaves the nodes committed"
        ):
            verifier = start_verifier(
                deployment, workdir, config.model_path, VERIFIER, peers,
                sample_rate=config.sample_rate, threads=config.threads,
            )  # fmt: skip
            processes.append(verifier)
            verifier.wait_ready()
        narrator.say(
            f"{VERIFIER} {verifier.address} audits {config.sample_rate:.0%} of committed leaves"
        )
        if board is not None:
            board.watch_verifier(verifier.http_url)

        slashes = _await_slash(config, narrator, contracts, deployment, cheat, verifier)
    finally:
        with (
            _interrupts_held(),
            narrator.stage(
                "stopping the verifier and the nodes (each commits and redeems on its way out)"
            ),
        ):
            try:
                if board is not None:
                    board.stop()
            finally:
                statuses = stop_all(processes)
    stake_after = {node.name: registry.get_node(node.address).stake for node in nodes}
    slashes = contracts.slasher.leaves_slashed(from_block=deployment.deploy_block)
    bounty = sum(s.bounty_per_verifier for s in slashes)
    served = generation.served
    outcomes = [
        NodeOutcome(
            account=node.name,
            address=node.address,
            span=node.span,
            cheat=cheat_of[node.name],
            tokens=served.get(node.address, (0, 0))[0],
            paid=Wei(served.get(node.address, (0, 0))[1]),
            earned=Wei(token.balance_of(node.address) - balance_before[node.name]),
            stake_before=stake_before[node.name],
            stake_after=stake_after[node.name],
        )
        for node in nodes
    ]
    return StoryResult(
        prompt_ids=generation.prompt_ids,
        new_ids=generation.new_ids,
        answer=generation.answer,
        generation_seconds=generation.seconds,
        nodes=outcomes,
        verifier=verifier.address,
        verifier_bounty=Wei(bounty),
        slashes=slashes,
        token_symbol=symbol,
        token_decimals=decimals,
        exit_statuses=statuses,
        pids={process.name: process.pid for process in processes},
        seconds=0.0,
        workdir=workdir,
        dashboard_url=board.url if board is not None else None,
    )


def _start_dashboard(
    narrator: Narrator, deployment: Deployment, peers: list[str], port: int
) -> Dashboard | None:
    """The swarm's live dashboard (another free port if `port` is taken); None when it cannot
    start (the story goes on without it)."""
    from dashboard.config import DashboardConfig
    from dashboard.service import Dashboard, DashboardError

    config = DashboardConfig(
        initial_peers=tuple(peers), deployment=deployment, port=port, any_port_if_taken=True
    )
    try:
        with narrator.stage("starting the dashboard: the swarm live in a browser"):
            board = Dashboard.start(config)
    except DashboardError as exc:
        narrator.say(f"no dashboard: {exc}")
        return None
    narrator.say(
        f"dashboard: {board.url} (open it to watch the blocks, stakes, audits and the slash; "
        "it stops with the demo)"
    )
    return board


@dataclass(frozen=True)
class _Generation:
    prompt_ids: list[int]
    new_ids: list[int]
    answer: str
    seconds: float
    served: dict[str, tuple[int, int]]  # node address -> (tokens, Wei paid)


def _generate(
    config: StoryConfig,
    narrator: Narrator,
    deployment: Deployment,
    peers: list[str],
    workdir: Path,
) -> _Generation:
    """The client's part: join, ask, stream the answer, pay per token."""
    import torch
    from transformers import TextStreamer

    from client.model import DistributedModelForCausalLM

    torch.set_num_threads(config.threads)
    wallet = Account.from_key(deployment.account(CLIENT).private_key)
    with narrator.stage(f"{CLIENT} loads the model's ends and joins the swarm"):
        llm = DistributedModelForCausalLM.from_pretrained(
            config.model_path, initial_peers=peers, wallet=wallet, deployment=deployment,
            home=workdir / CLIENT, dtype=config.dtype,
        )  # fmt: skip
    try:
        if llm.tokenizer is None:
            raise StoryError(f"{config.model_path} has no tokenizer files")
        ids = prompt_ids(llm.tokenizer, config.prompt, config.chat)

        class _Stream(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                narrator.stream(text)

        narrator.say(
            f'{CLIENT} {wallet.address} asks: "{config.prompt}" '
            f"({ids.shape[1]} prompt tokens, greedy, at most {config.max_new_tokens} new)"
        )
        streamer = _Stream(llm.tokenizer, skip_prompt=True, skip_special_tokens=True)
        began = time.monotonic()
        with llm.inference_session(max_length=ids.shape[1] + config.max_new_tokens) as session:
            out = llm.generate(
                ids, session=session, max_new_tokens=config.max_new_tokens, do_sample=False,
                streamer=streamer,
            )  # fmt: skip
            seconds = time.monotonic() - began
            served = {s.address: (s.tokens, s.cost) for s in session.served.values()}
        new_ids = out[0, ids.shape[1] :].tolist()
        answer = str(llm.tokenizer.decode(new_ids, skip_special_tokens=True))
    finally:
        llm.close()
    narrator.say(
        f"{len(new_ids)} tokens in {seconds:.1f} s ({len(new_ids) / max(seconds, 1e-9):.1f} "
        "tokens/s), every step paid with a signed voucher to each node on the route"
    )
    return _Generation(ids[0].tolist(), new_ids, answer, seconds, served)


def _await_slash(
    config: StoryConfig,
    narrator: Narrator,
    contracts: Contracts,
    deployment: Deployment,
    cheat: NodeProcess,
    verifier: VerifierProcess,
) -> list[LeafSlashed]:
    """Wait until a slash of `cheat` lands on-chain; `StoryError` after `slash_timeout`."""
    deadline = time.monotonic() + config.slash_timeout
    with narrator.stage(
        f"waiting for {VERIFIER} to audit {cheat.name}'s committed leaves and slash it"
    ) as note:
        while True:
            slashes = [
                s
                for s in contracts.slasher.leaves_slashed(from_block=deployment.deploy_block)
                if s.node == cheat.address
            ]
            if slashes:
                return slashes
            for process in (verifier, cheat):
                if not process.alive():
                    raise StoryError(
                        f"{process.name} exited with {process.process.returncode} before the "
                        f"slash\n{process.logs()}"
                    )
            if time.monotonic() > deadline:
                raise StoryError(
                    f"no slash of {cheat.name} within {config.slash_timeout:.0f} s "
                    f"(verifier: {_audits(verifier)})\n{verifier.logs()}"
                )
            note(_audits(verifier))
            time.sleep(1.0)  # the chain and the verifier are polled: nothing to block on


def _audits(verifier: VerifierProcess) -> str:
    try:
        audits = verifier.status()["audits"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return f"status unavailable ({exc})"
    return f"{audits['done']} audits done, {audits['failed']} failed, {audits['pending']} pending"


_DESCRIPTIONS = {
    "noise": "it adds 1% Gaussian noise to every output",
    "skip-block": "it never computes the middle block of its span",
    "wrong-weights": "it serves slightly perturbed weights",
    "low-precision": "it computes in bfloat16 while declaring float32 (cheaper, not what it sells)",
    "stale": "it replays its previous output on decode steps",
    "equivocate": "it signs two different receipts for one step",
}


def _describe(fault: str) -> str:
    return _DESCRIPTIONS.get(fault, f"--faulty {fault}")


def _show(amount: int, decimals: int, symbol: str) -> str:
    return f"{format_tokens(amount, decimals)} {symbol}"


__all__ = [
    "DEMO_DTYPES",
    "DEMO_FAULT",
    "DEMO_FAULT_16BIT",
    "DEMO_PROMPT",
    "LogNarrator",
    "Narrator",
    "NodeOutcome",
    "StoryConfig",
    "StoryError",
    "default_fault",
    "StoryResult",
    "prompt_ids",
    "run_story",
]
