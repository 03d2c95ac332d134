"""`stakeswarm demo`: the story of stakeswarm on one machine, in one command.

    stakeswarm demo                       # SmolLM2-135M-Instruct, 3 nodes, one cheating
    stakeswarm demo --dtype bfloat16      # the same swarm in bfloat16, its cheat 1% noise
    stakeswarm demo --model ./tiny --no-chat --prompt "Hello" --max-new-tokens 8
    stakeswarm demo --ledger-only         # the money flows alone, scripted, no model

The default story (`stakeswarm.story`): prepare the model (SmolLM2's GGUF converted once into
`<home>/models`), start a local chain and deploy, start the nodes (one visibly cheating), stream a
client's paid answer, start a verifier and wait for its slash, stop everything and show per node
what it served, earned and lost. The run's files (logs, ledgers) are kept in `<home>/demo`,
cleared at the next run. Ctrl-C (or SIGTERM) stops every process it started.

`--ledger-only` plays every money flow with real transactions but scripted serving
(`stakeswarm.ledger_story`), on a chain in `--home` (default: a temporary directory).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ledger.deployment import TOKEN
from ledger.errors import LedgerError
from node.logs import setup_logging
from stakeswarm.commands.chain_support import format_tokens
from stakeswarm.devnet import Devnet, DevnetConfig, running_devnet
from stakeswarm.home import Home

if TYPE_CHECKING:
    from stakeswarm.ledger_story import Snapshot

console = Console(soft_wrap=True, highlight=False)

DEMO_DIR = "demo"  # <home>/demo: the last run's chain, node and verifier homes, logs


class _Terminated(Exception):
    """SIGTERM asks the demo to stop (handled like Ctrl-C)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def demo(
    model: Annotated[
        str,
        typer.Option(help="'smollm2' (SmolLM2-135M-Instruct, prepared once) or a model folder."),
    ] = "smollm2",
    prompt: Annotated[str | None, typer.Option(help="What the client asks.")] = None,
    chat: Annotated[bool, typer.Option(help="Use the tokenizer's chat template.")] = True,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 96,
    nodes: Annotated[int, typer.Option(help="Nodes splitting the model's blocks.")] = 3,
    faulty_node: Annotated[int, typer.Option(help="Which node cheats (0-based).")] = 1,
    fault: Annotated[
        str | None,
        typer.Option(
            help="Its cheat: noise, skip-block, wrong-weights, low-precision (float32 only), "
            "stale. Default: low-precision in float32, noise in 16 bits.",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            help="What every node computes in and the client sends: float32, bfloat16 or "
            "float16 (16-bit nodes are audited block by block)."
        ),
    ] = "float32",
    sample_rate: Annotated[
        float, typer.Option(help="Share of committed leaves the verifier audits.")
    ] = 0.5,
    slash_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the slash after the answer.")
    ] = 180.0,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="State directory (default ~/.stakeswarm; with --ledger-only a temporary one).",
            show_default=False,
        ),
    ] = None,
    ledger_only: Annotated[
        bool,
        typer.Option(
            "--ledger-only", help="Only the money flows, scripted, on a chain (no model, fast)."
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
) -> None:
    """The whole story: a staked, paid, verified swarm serves a model; a cheat is slashed."""
    setup_logging(log_level)
    if ledger_only:
        _ledger_story(home)
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _swarm_story(
            model=model, prompt=prompt, chat=chat, max_new_tokens=max_new_tokens,
            nodes=nodes, faulty_node=faulty_node, fault=fault, dtype=dtype,
            sample_rate=sample_rate, slash_timeout=slash_timeout, home=Home.resolve(home),
        )  # fmt: skip
    except (KeyboardInterrupt, _Terminated):
        console.print("[yellow]interrupted[/]: every process the demo started was stopped")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the swarm story ------------------------------------------------------------------------


class RichNarrator:
    """Shows the story on the terminal: a spinner per stage, then a tick and its time; the
    answer streamed as it comes."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self._streaming = False

    def _end_stream(self) -> None:
        if self._streaming:
            self.out.file.write("\n")
            self.out.file.flush()
            self._streaming = False

    @contextmanager
    def stage(self, title: str) -> Iterator[Callable[[str], None]]:
        self._end_stream()
        began = time.monotonic()
        with self.out.status(escape(title)) as status:
            try:
                yield lambda note: status.update(f"{escape(title)}: {escape(note)}")
            except BaseException:
                self.out.print(f"[red]✗[/] {escape(title)}")
                raise
        self.out.print(f"[green]✓[/] {escape(title)} [dim]({time.monotonic() - began:.1f} s)[/]")

    def say(self, text: str) -> None:
        self._end_stream()
        self.out.print(f"  {escape(text)}")

    def stream(self, text: str) -> None:
        if not self._streaming:
            self.out.print("[bold]answer[/]: ", end="")
            self._streaming = True
        self.out.file.write(text)
        self.out.file.flush()


def _swarm_story(
    *,
    model: str,
    prompt: str | None,
    chat: bool,
    max_new_tokens: int,
    nodes: int,
    faulty_node: int,
    fault: str | None,
    dtype: str,
    sample_rate: float,
    slash_timeout: float,
    home: Home,
) -> None:
    from client.errors import ClientError
    from node.errors import NodeError
    from stakeswarm.story import DEMO_PROMPT, StoryConfig, StoryError, default_fault, run_story
    from stakeswarm.swarm import SwarmError, resolve_model

    began = time.monotonic()
    workdir = home.root / DEMO_DIR
    console.print("[bold]stakeswarm demo[/]: a language model on a staked, paid, verified swarm")
    try:
        with console.status("preparing the model") as status:
            path = resolve_model(model, home, lambda stage: status.update(escape(stage)))
        console.print(
            f"[green]✓[/] model {path.name} ready in {escape(str(path))} "
            f"[dim]({time.monotonic() - began:.1f} s)[/]"
        )
        config = StoryConfig(
            model_path=path, workdir=workdir, prompt=prompt or DEMO_PROMPT, chat=chat,
            max_new_tokens=max_new_tokens, nodes=nodes, faulty_node=faulty_node,
            fault=fault or default_fault(dtype), dtype=dtype, sample_rate=sample_rate,
            slash_timeout=slash_timeout,
        )  # fmt: skip
        if running_devnet(Home(workdir)) is not None:
            raise StoryError(f"another demo is running in {workdir}")
        shutil.rmtree(workdir, ignore_errors=True)  # the last run's files
        result = run_story(config, RichNarrator(console))
    except (StoryError, SwarmError, ClientError, NodeError, LedgerError) as exc:
        console.print(f"[red]demo failed:[/] {escape(str(exc))}")
        console.print(f"the run's logs are in {escape(str(workdir))}")
        raise typer.Exit(1) from None

    def show(amount: int) -> str:
        # at most 4 decimals on screen; exact amounts are in the logs and on-chain
        return format_tokens(round(amount, 4 - result.token_decimals), result.token_decimals)

    symbol = result.token_symbol
    table = Table(
        title=f"The swarm after the story (amounts in {symbol})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("", "blocks", "role", "tokens served", "earned", "stake before", "stake after"):
        names = column in ("", "role")  # never cut short: "verifier-0", "verifier"
        table.add_column(
            column,
            justify="left" if names else "right",
            no_wrap=names,
            min_width=10 if names else None,
        )
    table.add_column("slashed", justify="right", min_width=7)
    for node in result.nodes:
        table.add_row(
            node.account,
            f"{node.span[0]}:{node.span[1]}",
            "[red]cheat[/]" if node.cheat else "honest",
            str(node.tokens),
            show(node.earned),
            show(node.stake_before),
            show(node.stake_after),
            f"[red]-{show(node.slashed)}[/]" if node.slashed else "[green]no[/]",
        )
    table.add_row("verifier-0", "", "verifier", "", show(result.verifier_bounty), "", "", "")
    console.print(table)
    cheats = [node for node in result.nodes if node.cheat]
    taken = sum(s.amount for s in result.slashes)
    for node in cheats:
        console.print(
            f"{node.account} cheated (--faulty {node.cheat}) and lost {show(taken)} {symbol} in "
            f"{len(result.slashes)} slash(es), each backed by a Merkle proof of a leaf it "
            f"committed itself; verifier-0 earned {show(result.verifier_bounty)} {symbol} of it, "
            "the rest went to the reward pool."
        )
    console.print(
        "tokens served: positions each node computed for the client (prompt and answer); "
        "earned: the client's signed vouchers, redeemed on-chain when the node stopped."
    )
    console.print(
        f"[bold]done in {time.monotonic() - began:.1f} s[/] (the story itself "
        f"{result.seconds:.1f} s, generation {result.generation_seconds:.1f} s); "
        f"logs in {escape(str(workdir))}"
    )


# --- the ledger-only story ------------------------------------------------------------------


def _tokens(amount: int) -> str:
    return f"{amount / TOKEN:,.4f}".rstrip("0").rstrip(".")


def _balances_table(before: Snapshot, after: Snapshot) -> Table:
    table = Table(title="Balances and stakes after the story (stake tokens)")
    for column in ("party", "balance", "change", "staked", "change"):
        table.add_column(column, justify="left" if column == "party" else "right")

    def change(delta: int) -> str:
        return ("+" if delta > 0 else "") + _tokens(delta) if delta else "0"

    for name in before.balances:
        staked_after = after.stakes.get(name)
        staked_before = before.stakes.get(name, 0)
        table.add_row(
            name,
            _tokens(after.balances[name]),
            change(after.balances[name] - before.balances[name]),
            _tokens(staked_after) if staked_after is not None else "",
            change(staked_after - staked_before) if staked_after is not None else "",
        )
    return table


def _ledger_story(home: Path | None) -> None:
    """Start a local chain, play every money flow (stake, pay, commit, redeem, slash), stop."""
    from stakeswarm.ledger_story import StoryLog, run_ledger_story  # web3: only when it plays

    with tempfile.TemporaryDirectory(prefix="stakeswarm-demo-") as scratch:
        config = DevnetConfig(home=Home.resolve(home or scratch))
        try:
            with console.status("starting a local chain and deploying the contracts"):
                devnet = Devnet.launch(config)
            try:
                deployment = devnet.deployment
                console.print(
                    f"chain {deployment.chain_id} at {deployment.rpc_url}, contracts deployed"
                )
                log = StoryLog()
                chain = deployment.connect()
                before, after = run_ledger_story(deployment, chain, log, lambda when, snap: None)
                steps = Table(title="What happened (every line a transaction unless noted)")
                steps.add_column("step")
                steps.add_column("tx")
                steps.add_column("gas", justify="right")
                for what, tx in log.steps:
                    steps.add_row(
                        what,
                        tx.tx_hash[:18] + "…" if tx else "(off-chain)",
                        f"{tx.gas_used:,}" if tx else "",
                    )
                console.print(steps)
                console.print(_balances_table(before, after))
                console.print(
                    "Nodes staked and were paid per token; node-1 lost half its stake to a verdict,"
                    " node-2 half of its to an equivocation proof; bounties went to the verifier and"
                    " to the reporter, the rest of the slashed stake to the treasury (deployer)."
                    " The client's unspent escrow comes back after the channels expire."
                )
            finally:
                devnet.stop()
                console.print("local chain stopped")
        except LedgerError as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            raise typer.Exit(1) from None
