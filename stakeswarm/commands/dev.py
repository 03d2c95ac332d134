"""`stakeswarm dev`: a local chain with every contract deployed, for development; a local swarm
of nodes on it.

    stakeswarm dev up [--chain anvil|hardhat] [--accounts N] [--port P] [--home DIR]
    stakeswarm dev swarm --model PATH|smollm2 [--nodes N] [--faulty INDEX:MODE]
                         [--dashboard-port P] [--home DIR]
    stakeswarm dev down [--home DIR]
    stakeswarm dev fund ADDRESS [--tokens N] [--eth N] [--home DIR]
    stakeswarm dev advance-time DURATION [--home DIR]

`dev up` and `dev swarm` stay in the foreground until Ctrl-C (or `dev down` from another
terminal), then stop everything they started. The deployment file they write,
`<home>/devnet/deployment.json`, is what every `--devnet` command reads. `dev swarm` also starts
N nodes (dev accounts node-0, node-1, ...) splitting the model's blocks evenly, each with its
home and logs in `<home>/swarm/<account>/` (cleared at every start: the chain is new), and
prints the multiaddrs to join with and a `stakeswarm client generate` command to try, and the
URL of a live dashboard of the swarm (`dashboard`, on port 8080 unless taken).

`dev fund` and `dev advance-time` act on the devnet running in the home and refuse anything
else (`stakeswarm.devchain`): `fund` sends stake tokens from the deployer and adds ETH for gas
(e.g. to a keystore from `stakeswarm client wallet create`), `advance-time` moves the chain's
clock (e.g. "2d" to the end of an unbonding delay) and mines a block.
"""

from __future__ import annotations

import enum
import json
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ledger.deployment import TOKEN, Deployment
from ledger.errors import LedgerError
from ledger.units import TokenUnits
from node.cli_options import HomeOpt
from node.fault_modes import FAULT_MODES
from stakeswarm.commands.chain_support import (
    CliInputError,
    format_duration,
    format_tokens,
    parse_address,
    parse_duration,
    parse_tokens,
    print_tx,
    reporting,
    reporting_in,
    when,
)
from stakeswarm.devnet import Devnet, DevnetConfig, stop_devnet
from stakeswarm.home import Home
from stakeswarm.swarm import LocalSwarm, SwarmConfig, SwarmError, resolve_model

if TYPE_CHECKING:  # hivemind and web3 load only once a swarm runs
    from dashboard.service import Dashboard

app = typer.Typer(
    help="A local chain with every contract deployed and funded dev accounts.",
    no_args_is_help=True,
)


class ChainChoice(enum.StrEnum):
    anvil = "anvil"
    hardhat = "hardhat"


# the configs' default chains, as choices
_UP_CHAIN = ChainChoice(DevnetConfig.chain)
_SWARM_CHAIN = ChainChoice(SwarmConfig.chain)


class _Stop(Exception):
    """SIGTERM (e.g. from `stakeswarm dev down`) asks `dev up` to stop."""


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


@app.command()
def up(
    chain: Annotated[ChainChoice, typer.Option(help="Which local chain to run.")] = _UP_CHAIN,
    accounts: Annotated[
        int, typer.Option(help="Dev accounts: a deployer, then nodes, clients and verifiers.")
    ] = DevnetConfig.accounts,
    port: Annotated[
        int, typer.Option(help="RPC port on 127.0.0.1 (0: any free port).")
    ] = DevnetConfig.port,
    home: HomeOpt = None,
) -> None:
    """Start a local chain, deploy every contract, fund the dev accounts, and run until Ctrl-C."""
    console = Console(soft_wrap=True)
    errors = Console(stderr=True, soft_wrap=True)
    resolved = Home.resolve(home)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        config = DevnetConfig(home=resolved, chain=chain.value, accounts=accounts, port=port)
        with Devnet.start(config) as deployment:
            _print_summary(console, deployment, resolved)
            console.print("[bold]devnet running[/]: Ctrl-C or `stakeswarm dev down` stops it")
            while True:
                signal.pause()
    except (KeyboardInterrupt, _Stop):
        console.print("devnet stopped")
    except LedgerError as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_faulty(values: list[str] | None) -> dict[int, str]:
    """ "INDEX:MODE" options (e.g. "1:noise") to {node index: cheat mode}."""
    faulty: dict[int, str] = {}
    for value in values or ():
        index, sep, mode = value.partition(":")
        if not sep or not index.strip().isdigit() or not mode.strip():
            raise typer.BadParameter(
                f"takes INDEX:MODE, e.g. 1:noise, got {value!r}", param_hint="--faulty"
            )
        faulty[int(index)] = mode.strip()
    return faulty


@app.command()
def swarm(
    model: Annotated[
        str,
        typer.Option(
            help="Model folder (config.json + safetensors), or 'smollm2' for "
            "SmolLM2-135M-Instruct prepared in <home>/models.",
            show_default=False,
        ),
    ],
    nodes: Annotated[
        int, typer.Option(help="Nodes splitting the model's blocks evenly.")
    ] = SwarmConfig.nodes,
    faulty: Annotated[
        list[str] | None,
        typer.Option(
            help=f"INDEX:MODE: node INDEX cheats ({', '.join(FAULT_MODES)}); repeat for more.",
            show_default=False,
        ),
    ] = None,
    chain: Annotated[ChainChoice, typer.Option(help="Which local chain to run.")] = _SWARM_CHAIN,
    threads: Annotated[int, typer.Option(help="Torch threads per node.")] = SwarmConfig.threads,
    dashboard_port: Annotated[
        int,
        typer.Option(
            help="Port of the swarm's live dashboard on 127.0.0.1 (another free one if taken; "
            "-1: no dashboard)."
        ),
    ] = 8080,
    home: HomeOpt = None,
) -> None:
    """Start a local chain and a swarm of nodes serving a model, and run until Ctrl-C."""
    console = Console(soft_wrap=True, highlight=False)
    errors = Console(stderr=True, soft_wrap=True)
    resolved = Home.resolve(home)
    previous_int = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    running: LocalSwarm | None = None
    board: Dashboard | None = None
    try:
        with console.status("preparing the model") as status:
            path = resolve_model(model, resolved, lambda stage: status.update(escape(stage)))
        config = SwarmConfig(
            model_path=path,
            nodes=nodes,
            faulty=parse_faulty(faulty),
            threads=threads,
            chain=chain.value,
        )
        with console.status(
            f"starting {config.chain}, deploying, and starting {nodes} node(s) serving {path.name}"
        ):
            running = LocalSwarm.launch(config, resolved)
        _print_swarm(console, running, config, resolved)
        if dashboard_port >= 0:
            with console.status("starting the dashboard"):
                board = _start_dashboard(running, dashboard_port, errors)
            if board is not None:
                console.print(f"[bold]dashboard[/] (the swarm live in a browser): {board.url}")
        console.print("[bold]swarm running[/]: Ctrl-C or `stakeswarm dev down` stops it")
        _watch(console, running)
    except (KeyboardInterrupt, _Stop):
        pass
    except (SwarmError, LedgerError) as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        try:
            if running is not None:
                # held back meanwhile: a second Ctrl-C must not leave a node running
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                if board is not None:
                    board.stop()
                console.print("stopping the nodes and the chain")
                running.stop()
                console.print("swarm stopped")
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)


def _start_dashboard(running: LocalSwarm, port: int, errors: Console) -> Dashboard | None:
    """The swarm's dashboard on 127.0.0.1:`port` (another free port if taken); None, said on
    stderr, when it cannot start: the swarm serves without it."""
    from dashboard.config import DashboardConfig  # hivemind, web3: only once a swarm runs
    from dashboard.service import Dashboard, DashboardError

    config = DashboardConfig(
        initial_peers=tuple(running.initial_peers),
        deployment=running.deployment,
        port=port,
        any_port_if_taken=True,
    )
    try:
        return Dashboard.start(config)
    except (DashboardError, LedgerError, OSError) as exc:
        errors.print(f"[yellow]no dashboard:[/] {escape(str(exc))}")
        return None


def _watch(console: Console, running: LocalSwarm) -> None:
    """Wait for Ctrl-C; say once about each node that stops on its own."""
    reported: set[str] = set()
    while True:
        for node in running.nodes:
            if node.name not in reported and not node.alive():
                reported.add(node.name)
                console.print(
                    f"[yellow]{node.name} exited[/] with status {node.process.returncode}; "
                    f"its log: {escape(str(node.stderr))}"
                )
        time.sleep(1.0)  # other processes' state: nothing to block on but polling


def _has_chat_template(model_path: Path) -> bool:
    if (model_path / "chat_template.jinja").is_file():
        return True
    config = model_path / "tokenizer_config.json"
    try:
        return "chat_template" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def runnable_cli(
    executable: Path | None = None, cwd: Path | None = None, on_path: str | None = None
) -> list[str]:
    """The words that run this `stakeswarm` in another terminal, as printed: a bare `stakeswarm`
    only when the one on PATH is this environment's (the venv is active); else the console
    script beside this interpreter (`.venv/bin/stakeswarm` when it is under the working
    directory, else its absolute path); else this interpreter with `-m stakeswarm`.
    The defaults are this process's interpreter, directory and PATH."""
    executable = Path(sys.executable) if executable is None else executable
    cwd = Path.cwd() if cwd is None else cwd
    script = executable.parent / "stakeswarm"  # not resolved: a venv's python is a symlink
    if on_path is None:
        on_path = shutil.which("stakeswarm")
    if not script.is_file():
        return [_shown(executable, cwd), "-m", "stakeswarm"]
    if on_path is not None and Path(on_path).absolute() == script.absolute():
        return ["stakeswarm"]
    return [_shown(script, cwd)]


def _shown(path: Path, cwd: Path) -> str:
    """`path` relative to `cwd` when it lies under it (`.venv/bin/stakeswarm`), else absolute."""
    path = path.absolute()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def _print_swarm(console: Console, running: LocalSwarm, config: SwarmConfig, home: Home) -> None:
    """What a user needs to try their own client: the peers, the deployment, a command."""
    deployment, model_path = running.deployment, config.model_path
    console.print(
        f"[bold green]swarm up[/]: {len(running.nodes)} node(s) serving {model_path.name} on "
        f"{deployment.rpc_url} (chain id {deployment.chain_id})"
    )
    for index, node in enumerate(running.nodes):
        mode = config.faulty.get(index)
        cheat = f"  [red]CHEATS: --faulty {mode}[/]" if mode else ""
        console.print(
            f"  {node.name:<7} {node.address}  blocks {node.span[0]}:{node.span[1]}  "
            f"status {node.http_url}{cheat}"
        )
    console.print(f"  node homes and logs under {running.workdir}")
    console.print("[bold]initial peers[/] (--initial-peers):")
    for maddr in running.initial_peers:
        console.print(f"  {maddr}")
    console.print(f"deployment file: {home.devnet_deployment}")
    command = [*runnable_cli(), "client", "generate", "Hello! Tell me about swarms.",
               "--model", str(model_path), "--max-new-tokens", "32"]  # fmt: skip
    if _has_chat_template(model_path):
        command.append("--chat")
    command += ["--devnet", "--home", str(home.root), "--account", "client-0"]
    command += ["--initial-peers", running.initial_peers[0]]
    relative = "/" in command[0] and not Path(command[0]).is_absolute()
    where = " from this directory" if relative else ""
    console.print(f"[bold]try it[/]{where} (dev accounts client-0..client-2 are funded):")
    console.print(f"  {escape(shlex.join(command))}")


@app.command()
def down(home: HomeOpt = None) -> None:
    """Stop the devnet running in this home (started by `stakeswarm dev up`)."""
    console = Console(soft_wrap=True)
    resolved = Home.resolve(home)
    try:
        stopped = stop_devnet(resolved)
    except LedgerError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if stopped is None:
        console.print(f"no devnet running in {resolved.root}")
    else:
        console.print(f"stopped the {stopped.chain} devnet at {stopped.rpc_url}")


@app.command()
def fund(
    address: Annotated[str, typer.Argument(help="Address to fund (e.g. a `wallet create` one).")],
    tokens: Annotated[
        str, typer.Option(help="Stake tokens to send from the deployer (0: none).")
    ] = "1000",
    eth: Annotated[str, typer.Option(help="ETH (gas) to add to its balance (0: none).")] = "10",
    home: HomeOpt = None,
) -> None:
    """On a devnet only: give an address stake tokens (from the deployer) and ETH for gas."""
    with reporting() as console:
        to = parse_address(address, "ADDRESS")
        eth_wei = parse_tokens(eth, 18, "--eth")
        from stakeswarm.devchain import DevChain  # web3: only in commands that reach a chain

        devnet = DevChain.open(Home.resolve(home))
        token = devnet.token()
        units = TokenUnits.of(token)
        reporting_in(units)
        amount = parse_tokens(tokens, units.decimals, "--tokens")
        if amount:
            sent = devnet.send_tokens(to, amount)
            print_tx(console, f"sent {units.show(amount)} from the deployer", sent)
        if eth_wei:
            devnet.add_eth(to, eth_wei)
            console.print(
                f"[green]✓[/] added {format_tokens(eth_wei, 18)} ETH "
                f"({devnet.state.chain}_setBalance, no transaction)"
            )
        console.print(
            f"{to}: {units.show(token.balance_of(to))}, "
            f"{format_tokens(devnet.chain.eth_balance(to), 18)} ETH"
        )


@app.command("advance-time")
def advance_time(
    duration: Annotated[
        str, typer.Argument(help="How far: seconds, or a number with s, m, h or d (2d, 3h, 90s).")
    ],
    home: HomeOpt = None,
) -> None:
    """On a devnet only: move the chain's clock forward and mine a block (e.g. to end unbonding)."""
    with reporting() as console:
        seconds = parse_duration(duration, "DURATION")
        if seconds <= 0:
            raise CliInputError("DURATION must be more than 0 seconds")
        from stakeswarm.devchain import DevChain  # web3: only in commands that reach a chain

        devnet = DevChain.open(Home.resolve(home))
        before = devnet.chain.timestamp()
        now = devnet.advance_time(seconds)
        console.print(
            f"[green]✓[/] chain time {when(now)} (was {when(before)}; "
            f"+{format_duration(seconds)}), block {devnet.chain.block_number()}"
        )


def _print_summary(console: Console, deployment: Deployment, home: Home) -> None:
    """Addresses and keys in full, one per line (they get copied; tables would truncate them)."""
    params = deployment.params
    symbol = params.token_symbol
    console.print(
        f"[bold green]devnet up[/] at {deployment.rpc_url} (chain id {deployment.chain_id})"
    )
    console.print("[bold]Contracts[/]")
    for name, address in deployment.to_json()["contracts"].items():
        console.print(f"  {name:<17} {address}")
    console.print("[bold]Dev accounts[/] (public test keys: never use them anywhere else)")
    for index, account in enumerate(deployment.accounts):
        console.print(f"  {index:>2} {account.name:<11} {account.address}  {account.private_key}")
    console.print(
        f"[bold]Parameters[/]: stake per block {params.min_stake_per_block / TOKEN:g} {symbol}, "
        f"verifier stake {params.min_verifier_stake / TOKEN:g} {symbol}, "
        f"quorum {params.quorum}, slash {params.slash_bps / 100:g}%, "
        f"bounty {params.bounty_bps / 100:g}% of a slash, "
        f"challenge window {params.challenge_window} s, unbonding {params.unbonding_delay} s"
    )
    console.print(f"deployment file: {home.devnet_deployment}")
