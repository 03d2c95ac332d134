"""`stakeswarm node serve` (also `python -m node serve`): parse -> config -> server -> run.

    stakeswarm node serve --model ./tiny-llama --blocks 0:3 --devnet --account node-0
    stakeswarm node serve --model ./SmolLM2 --num-blocks 10 --deployment d.json \\
        --keystore node.json --initial-peers /ip4/1.2.3.4/tcp/31337/p2p/Qm...

Amounts (--price, --stake, --credit) are whole stake tokens and may have decimals. Once the
node serves, it prints its address, peer id, the multiaddrs others join with, its span and
the status API's URL; SIGINT/SIGTERM shut it down cleanly (exit status 0).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger.errors import LedgerError
from node.cli_options import (
    ChainOptions,
    DbOpt,
    HttpPortOpt,
    LogLevelOpt,
    ModelNameOpt,
    ThreadsOpt,
    check_initial_peers,
    check_model_folder,
    parse_tokens,
    with_chain_options,
)
from node.config import DEFAULT_HOST_MADDRS, ConfigError, NodeConfig
from node.errors import NodeError
from node.fault_modes import FAULT_MODES
from node.logs import setup_logging

app = typer.Typer(
    help="Serve blocks of a model to the swarm.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def node() -> None:
    """Run a node of the swarm."""  # a callback keeps `serve` a sub-command


NodeAccountOpt = Annotated[
    str | None,
    typer.Option(
        "--account",
        help="With --devnet: dev account name, role or index (default: node).",
        show_default=False,
    ),
]


def parse_blocks(text: str) -> tuple[int, int]:
    """ "START:END" (END excluded) to a span."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise typer.BadParameter(f"takes START:END with START < END (END excluded), got {text!r}")
    return int(match.group(1)), int(match.group(2))


@app.command("serve")
@with_chain_options(account=NodeAccountOpt)
def serve(
    ctx: typer.Context,
    model: Annotated[
        Path,
        typer.Option(help="Local model folder (config.json + safetensors).", show_default=False),
    ],
    model_name: ModelNameOpt = None,
    blocks: Annotated[
        str | None,
        typer.Option(
            help="Serve exactly these blocks, START:END (END excluded).", show_default=False
        ),
    ] = None,
    num_blocks: Annotated[
        int | None,
        typer.Option(
            help="Serve this many blocks where the swarm needs them most.", show_default=False
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where the blocks compute: auto (the first CUDA device, else the CPU), cpu, "
            "cuda or cuda:N."
        ),
    ] = NodeConfig.device,
    dtype: Annotated[
        str,
        typer.Option(
            help="Precision served: float32, float16, bfloat16, or auto (bfloat16 on a CUDA "
            "device that has it, else float16; float32 on the CPU). Clients choose servers "
            "by it (their --dtype)."
        ),
    ] = NodeConfig.dtype,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="Quantize the blocks' linear weights: int8 or nf4 (bitsandbytes), computed in "
            "bfloat16 or float16 (auto: bfloat16 on the CPU). A precision of its own: clients "
            "choose servers by it (their --weights), verifiers audit it as such.",
            show_default=False,
        ),
    ] = None,
    new_ledger: Annotated[
        bool,
        typer.Option(
            help="Start on a new, empty ledger although the chain shows this node served (its "
            "ledger was lost or damaged: the vouchers and commitments it held are given up; a "
            "damaged ledger is moved aside)."
        ),
    ] = False,
    db_url: DbOpt = None,
    initial_peers: Annotated[
        list[str] | None,
        typer.Option(
            help="Multiaddr of a swarm member (repeat); none: start a new swarm.",
            show_default=False,
        ),
    ] = None,
    host_maddrs: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Where libp2p listens (repeat; default {DEFAULT_HOST_MADDRS[0]}).",
            show_default=False,
        ),
    ] = None,
    announce_maddrs: Annotated[
        list[str] | None,
        typer.Option(help="Public multiaddrs to announce (repeat).", show_default=False),
    ] = None,
    price: Annotated[str, typer.Option(help="Tokens per token per block.")] = str(NodeConfig.price),
    backward_price: Annotated[
        str | None,
        typer.Option(
            help="Tokens per token per block of a training backward (default: twice --price; "
            "float32 nodes only).",
            show_default=False,
        ),
    ] = None,
    stake: Annotated[
        str | None,
        typer.Option(
            help="Tokens to keep staked (default: the registry's minimum).", show_default=False
        ),
    ] = None,
    credit: Annotated[str, typer.Option(help="Tokens a client may owe beyond its vouchers.")] = str(
        NodeConfig.credit
    ),
    http_port: HttpPortOpt = NodeConfig.http_port,
    cache_tokens: Annotated[
        int, typer.Option(help="KV cache budget in tokens.")
    ] = NodeConfig.cache_tokens,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds before an idle session ends.")
    ] = NodeConfig.session_idle_timeout,
    open_timeout: Annotated[
        float, typer.Option(help="Seconds an open session may go without a paid step.")
    ] = NodeConfig.session_open_timeout,
    commit_interval: Annotated[
        float, typer.Option(help="Seconds between commits.")
    ] = NodeConfig.commit_interval,
    commit_leaves: Annotated[
        int, typer.Option(help="Commit once this many leaves wait.")
    ] = NodeConfig.commit_max_leaves,
    redeem_interval: Annotated[
        float, typer.Option(help="Seconds between redemptions.")
    ] = NodeConfig.redeem_interval,
    announce_interval: Annotated[
        float, typer.Option(help="Seconds between DHT refreshes.")
    ] = NodeConfig.announce_interval,
    challenge_interval: Annotated[
        float, typer.Option(help="Seconds between looks for receipt challenges to answer.")
    ] = NodeConfig.challenge_poll_interval,
    rebalance_interval: Annotated[
        float, typer.Option(help="Seconds between checks whether to move the span.")
    ] = NodeConfig.rebalance_interval,
    max_frame_mb: Annotated[
        float, typer.Option(help="Largest tensor payload accepted per message frame, in MiB.")
    ] = NodeConfig.max_frame_bytes / 2**20,
    max_forward_tokens: Annotated[
        int, typer.Option(help="Most tokens (batch x length) one stateless forward may carry.")
    ] = NodeConfig.max_forward_tokens,
    backward_ttl: Annotated[
        float, typer.Option(help="Seconds a training forward waits for its backward.")
    ] = NodeConfig.backward_ttl,
    max_incoming_mb: Annotated[
        float,
        typer.Option(
            help="Tensor MiB that all incoming frames together may hold; beyond it a frame is "
            "refused as busy."
        ),
    ] = NodeConfig.max_incoming_bytes / 2**20,
    threads: ThreadsOpt = None,
    faulty: Annotated[
        str | None,
        typer.Option(
            help="CHEAT (or fail) on purpose, for tests and demos only (this node will be "
            f"slashed): {', '.join(FAULT_MODES)}.",
            show_default=False,
        ),
    ] = None,
    log_level: LogLevelOpt = "INFO",
    *,
    options: ChainOptions,
) -> None:
    """Serve blocks of a model: stake for them, announce them, answer inference, get paid."""
    # local inputs first: a typo ends here, before any chain, ledger or network work
    peers = check_initial_peers(initial_peers)
    check_model_folder(model)
    from node import faults  # heavy imports only when serving
    from node.build import HONEST, Wrapping, plan_serving
    from node.families import load_config
    from node.server import Ready, Server

    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True)
    setup_logging(log_level)
    try:
        config = NodeConfig(
            model_path=model,
            model_name=model_name,
            blocks=parse_blocks(blocks) if blocks else None,
            num_blocks=num_blocks,
            dtype=dtype,
            quantize=quantize,
            device=device,
            torch_threads=threads,
            **options.identity(),
            new_ledger=new_ledger,
            ledger_url=db_url,
            initial_peers=peers,
            host_maddrs=tuple(host_maddrs or DEFAULT_HOST_MADDRS),
            announce_maddrs=tuple(announce_maddrs or ()),
            announce_interval=announce_interval,
            announce_ttl=max(3 * announce_interval, announce_interval + 10),
            rebalance_interval=rebalance_interval,
            price=parse_tokens(price, "--price"),
            backward_price=(
                None if backward_price is None else parse_tokens(backward_price, "--backward-price")
            ),
            stake=None if stake is None else parse_tokens(stake, "--stake"),
            credit=parse_tokens(credit, "--credit"),
            cache_tokens=cache_tokens,
            session_idle_timeout=idle_timeout,
            session_open_timeout=open_timeout,
            commit_interval=commit_interval,
            commit_max_leaves=commit_leaves,
            redeem_interval=redeem_interval,
            challenge_poll_interval=challenge_interval,
            faulty=faulty,
            http_port=http_port,
            max_frame_bytes=int(max_frame_mb * 2**20),
            max_incoming_bytes=int(max_incoming_mb * 2**20),
            max_forward_tokens=max_forward_tokens,
            backward_ttl=backward_ttl,
        )
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    try:
        # config.json and a supported architecture, then the device, the dtype and whether
        # the span with its cache fits the device's free memory: all before the ledger opens
        plan_serving(config, load_config(model))
    except NodeError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    progress = Progress(
        TextColumn("loading blocks"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task("load", total=None)

    def on_progress(done: int, total: int) -> None:
        if done == 1:
            progress.start()
        progress.update(task, completed=done, total=total)
        if done == total:
            progress.stop()

    def on_ready(ready: Ready) -> None:
        out.print(f"stakeswarm node {ready.address} serving {ready.model}")
        out.print(f"  blocks      {ready.span[0]}:{ready.span[1]}")
        out.print(f"  device      {ready.device} ({ready.dtype})")
        out.print(f"  throughput  {ready.throughput:.1f} tokens/s")
        out.print(f"  peer id     {ready.peer_id}")
        for maddr in ready.maddrs:
            out.print(f"  join with   --initial-peers {maddr}")
        if ready.http_url:
            out.print(f"  status api  {ready.http_url}")
        out.print("ready", style="bold green")

    # a cheat mode wraps the honest parts (node.faults); an honest node is built unchanged
    # a program that runs this command with other parts passes them as the context's object
    # (benchmarks/uncommitted_node.py); `node serve` itself builds an honest node
    built = ctx.obj if isinstance(ctx.obj, Wrapping) else HONEST
    wrapping = faults.wrapping(config.faulty) if config.faulty else built
    server = Server(config, wrapping=wrapping, progress=on_progress, on_ready=on_ready)
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # stopped before it served: nothing to announce
    except (ConfigError, NodeError, LedgerError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        progress.stop()
    out.print("stopped")
