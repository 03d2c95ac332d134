"""What the `client` commands share: the client's keystore, the options of `client generate`
and `client chat` (declared once: `with_generation_options`), joining the swarm with them, the
streamer that prints text as it arrives (never a stop string), the chat template, and the
tables of a run's summary.

Nothing here loads torch, transformers, hivemind or web3 at import time (`import stakeswarm.cli`
stays light); the functions that need them import them.
"""

from __future__ import annotations

import functools
import inspect
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from client.config import ClientConfig
from client.errors import ClientError
from node.cli_options import (
    ChainOptions,
    DbOpt,
    LogLevelOpt,
    check_initial_peers,
    check_model_folder,
)
from node.errors import NodeError
from stakeswarm.commands.chain_support import CliInputError, Connected, connect, when
from stakeswarm.home import Home

if TYPE_CHECKING:
    from client.model import DistributedModelForCausalLM
    from client.session import Served
    from node.routing import RouteHop

# --- the client's keystore ------------------------------------------------------------------

KEYSTORE_NAME = "keystore.json"  # the default keystore: <home>/client/keystore.json

KeystoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--keystore",
        help="The client's keystore (default <home>/client/keystore.json; not with --devnet).",
        show_default=False,
    ),
]


def default_keystore(home: Path | None) -> Path:
    return Home.resolve(home).root / "client" / KEYSTORE_NAME


def with_keystore(options: ChainOptions) -> ChainOptions:
    """`options`, without --devnet and --keystore: with the default keystore."""
    if options.devnet or options.keystore is not None:
        return options
    keystore = default_keystore(options.home)
    if not keystore.is_file():
        raise CliInputError(
            f"no keystore at {keystore}: create one with `stakeswarm client wallet create`, "
            "give --keystore FILE, or use --devnet"
        )
    return replace(options, keystore=keystore)


# --- the options of `generate` and `chat` ---------------------------------------------------------


@dataclass(frozen=True)
class GenerationOptions:
    """What to run, where, and how to decode, as `client generate` and `client chat` take it."""

    model: Path  # local model folder: config, tokenizer, embeddings and head
    initial_peers: tuple[str, ...]  # multiaddrs of swarm members
    max_new_tokens: int  # tokens to generate at most (per answer)
    model_name: str | None  # the swarm's name of the model (default: the folder's name)
    max_price: str | None  # whole tokens per generated token through the route, at most
    budget: str | None  # whole tokens the run may spend at most
    temperature: float  # 0 decodes greedily
    top_p: float | None  # nucleus sampling mass
    top_k: int | None  # sample among the k likeliest
    seed: int | None  # torch's seed for sampling
    repetition_penalty: float | None  # transformers' repetition penalty (1: none)
    stop: tuple[str, ...]  # generation stops once the text ends with one of these
    system: str | None  # a system message (chat template)
    dtype: str  # hidden states on the wire
    weights: str  # whose weights: full, int8, nf4 or any
    device: str  # where the local ends compute: auto, cpu, cuda, cuda:N
    db_url: str | None  # the client's ledger database (--db); None: its SQLite file in --home
    log_level: str  # logs on stderr

    def check(self) -> tuple[str, ...]:
        """Refuse malformed local inputs, before any chain, ledger or network work; the peers,
        parsed."""
        peers = check_initial_peers(list(self.initial_peers))
        check_model_folder(self.model)
        if self.max_new_tokens < 1:
            raise typer.BadParameter("must be >= 1", param_hint="--max-new-tokens")
        if self.temperature < 0:
            raise typer.BadParameter("must be >= 0", param_hint="--temperature")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise typer.BadParameter(
                "must be > 0 (1 changes nothing)", param_hint="--repetition-penalty"
            )
        if any(not stop for stop in self.stop):
            raise typer.BadParameter("must not be empty", param_hint="--stop")
        check_db_url(self.db_url)
        from node.device import DeviceError, local_device  # torch loads only here

        try:
            local_device(self.device)
        except DeviceError as exc:
            raise typer.BadParameter(str(exc), param_hint="--device") from None
        return tuple(peers)

    def decoding(self, tokenizer: Any) -> dict[str, Any]:
        """transformers' `generate` arguments for these options: greedy or sampling, the
        repetition penalty (its logits processor), the stop strings (its stopping criterion,
        which needs the tokenizer). Seeds torch when a seed is given: call it once per run."""
        kwargs: dict[str, Any] = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
            if self.seed is not None:
                import torch

                torch.manual_seed(self.seed)
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.stop:
            kwargs.update(stop_strings=list(self.stop), tokenizer=tokenizer)
        return kwargs


# name, option, default (`inspect.Parameter.empty`: required); in `GenerationOptions` order
_GENERATION_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    (
        "model",
        Annotated[
            Path, typer.Option(help="Local model folder (config, tokenizer, embeddings and head).")
        ],
        inspect.Parameter.empty,
    ),
    (
        "initial_peers",
        Annotated[
            list[str],
            typer.Option(help="Multiaddr of a swarm member (repeat).", show_default=False),
        ],
        inspect.Parameter.empty,
    ),
    ("max_new_tokens", Annotated[int, typer.Option(help="Tokens to generate at most.")], 32),
    (
        "model_name",
        Annotated[
            str | None,
            typer.Option(help="The swarm's name of the model (default: the folder's name)."),
        ],
        None,
    ),
    (
        "max_price",
        Annotated[
            str | None,
            typer.Option(help="Tokens per generated token, through the whole route, at most."),
        ],
        None,
    ),
    (
        "budget",
        Annotated[
            str | None,
            typer.Option(help="Tokens this run may spend at most.", show_default=False),
        ],
        None,
    ),
    (
        "temperature",
        Annotated[float, typer.Option(help="Sampling temperature; 0 decodes greedily.")],
        0.0,
    ),
    (
        "top_p",
        Annotated[float | None, typer.Option(help="Nucleus sampling mass.", show_default=False)],
        None,
    ),
    (
        "top_k",
        Annotated[
            int | None, typer.Option(help="Sample among the k likeliest.", show_default=False)
        ],
        None,
    ),
    (
        "seed",
        Annotated[int | None, typer.Option(help="Random seed for sampling.", show_default=False)],
        None,
    ),
    (
        "repetition_penalty",
        Annotated[
            float | None,
            typer.Option(
                help="Penalise tokens already in the text (transformers'; above 1 repeats less).",
                show_default=False,
            ),
        ],
        None,
    ),
    (
        "stop",
        Annotated[
            list[str] | None,
            typer.Option(
                help="Stop once the text ends with this (repeat); it is not printed.",
                show_default=False,
            ),
        ],
        None,
    ),
    (
        "system",
        Annotated[
            str | None,
            typer.Option(
                help="A system message for the chat template (with generate: implies --chat).",
                show_default=False,
            ),
        ],
        None,
    ),
    ("dtype", Annotated[str, typer.Option(help="Hidden states on the wire.")], ClientConfig.dtype),
    (
        "weights",
        Annotated[
            str,
            typer.Option(
                help="Use servers with these weights only: full, int8, nf4 (quantized, with a "
                "16-bit --dtype) or any."
            ),
        ],
        ClientConfig.weights,
    ),
    (
        "device",
        Annotated[
            str,
            typer.Option(
                help="Where the local ends (embeddings, final norm, LM head) compute: auto (the "
                "first CUDA device, else the CPU), cpu, cuda or cuda:N."
            ),
        ],
        ClientConfig.device,
    ),
    ("db_url", DbOpt, None),
    ("log_level", LogLevelOpt, "WARNING"),
)


def with_generation_options(command: Callable[..., None]) -> Callable[..., None]:
    """A command whose function takes `generation: GenerationOptions` gets the generation
    options instead (--model, --initial-peers, --max-new-tokens, ... --log-level), after its
    own; apply it below `@with_chain_options`."""
    own = inspect.signature(command, eval_str=True)
    params = [p for name, p in own.parameters.items() if name != "generation"]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=option, default=default)
        for name, option, default in _GENERATION_OPTIONS
    ]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        values = {name: kwargs.pop(name) for name, _, _ in _GENERATION_OPTIONS}
        values["initial_peers"] = tuple(values["initial_peers"])
        values["stop"] = tuple(values["stop"] or ())
        command(*args, generation=GenerationOptions(**values), **kwargs)

    run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    return run


# --- joining the swarm ----------------------------------------------------------------------------


def open_model(
    generation: GenerationOptions, peers: Sequence[str], conn: Connected, options: ChainOptions
) -> DistributedModelForCausalLM:
    """The model of `generation.model` on the swarm, paying from `conn`'s wallet; a swarm that
    cannot be joined is one `error:` line (exit status 1)."""
    from client.model import DistributedModelForCausalLM

    assert conn.signer is not None
    config = ClientConfig(
        model_path=generation.model,
        model_name=generation.model_name,
        dtype=generation.dtype,
        weights=generation.weights,
        device=generation.device,
        initial_peers=tuple(peers),
        rpc_url=options.rpc,
        home=Home.resolve(options.home).root,
        max_price=None
        if generation.max_price is None
        else conn.tokens(generation.max_price, "--max-price"),
        budget=None if generation.budget is None else conn.tokens(generation.budget, "--budget"),
        ledger_url=generation.db_url,
    )
    try:
        return DistributedModelForCausalLM.from_pretrained(
            generation.model, initial_peers=list(peers), wallet=conn.signer,
            deployment=conn.deployment, config=config,
        )  # fmt: skip
    except (ClientError, NodeError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None


def check_db_url(url: str | None) -> None:
    """Refuse a `--db` that is no SQLite or PostgreSQL URL, before any chain or ledger work."""
    if url is None:
        return
    from ledger.db.engine import ledger_url_problem  # SQLAlchemy: only when given

    problem = ledger_url_problem(url)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint="--db")


def connect_client(options: ChainOptions) -> Connected:
    """The chain connection of a paying client, its key unlocked."""
    return connect(with_keystore(options), role="client", sign=True)


def load_local_tokenizer(model: Path) -> Any:
    """The tokenizer of the model folder; a folder without one (or without a loadable config)
    is a `CliInputError`."""
    from client.model import load_tokenizer
    from node.families import load_config

    try:
        load_config(model)
    except NodeError as exc:
        raise CliInputError(str(exc)) from None
    tokenizer = load_tokenizer(model)
    if tokenizer is None:
        raise CliInputError(f"{model} has no tokenizer files")
    return tokenizer


# --- the chat template ----------------------------------------------------------------------------


def render_chat(
    tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool, what: str
) -> str:
    """`messages` through the tokenizer's chat template, as text; a tokenizer without a
    template, or a template that refuses the messages, is a `CliInputError` about `what` (the
    option or command that asked for the template)."""
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        raise CliInputError(f"{what}: this model's tokenizer has no chat template")
    try:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    except TemplateError as exc:
        raise CliInputError(
            f"{what}: the model's chat template refused the messages: {exc}"
        ) from None
    return str(text)


def check_system(tokenizer: Any, system: str, *, what: str) -> None:
    """Refuse a system message the chat template does not take: one it raises on (e.g. Gemma's
    'System role not supported') or one it silently leaves out."""
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        raise CliInputError(f"{what}: this model's tokenizer has no chat template")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as exc:
        raise CliInputError(
            f"--system: this model's chat template does not take a system message ({exc})"
        ) from None
    if system.strip() not in str(text):
        raise CliInputError(
            "--system: this model's chat template leaves a system message out; "
            "put what you meant to say in the prompt"
        )


def encode(tokenizer: Any, text: str) -> Any:
    """Token ids [1, tokens] of text the chat template rendered (its special tokens are in the
    text, so none is added), as `apply_chat_template(tokenize=True)` makes them."""
    encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    return encoded["input_ids"] if isinstance(encoded, Mapping) else encoded


# --- printing the text as it arrives --------------------------------------------------------------


class CtrlC:
    """Ctrl-C while text streams: SIGINT raises KeyboardInterrupt as usual and is remembered.
    Python drops an exception raised in a finalizer or a callback ("Exception ignored in ..."),
    so a Ctrl-C landing there would let the text run to its end; the printer asks `check` at
    every token, which raises it again. The previous handler is put back on exit."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt


class Printer:
    """A streamer for transformers' `generate` (a batch of one) that writes the new text to
    `out` as tokens arrive, counts the new tokens, and never writes a stop string or what
    follows it: text that may be the beginning of one (or half a character) is held back until
    the next token shows it is not."""

    def __init__(
        self,
        tokenizer: Any,
        out: IO[str],
        stops: Sequence[str] = (),
        ctrl_c: CtrlC | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.out = out
        self.stops = tuple(stops)
        self.ctrl_c = ctrl_c  # a Ctrl-C it stops at, even one Python dropped
        self.ids: list[int] = []  # the new tokens
        self.written = 0  # characters of the text written so far
        self.stopped = False  # the text reached a stop string
        self._prompt = True  # `generate` puts the prompt first

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def text(self) -> str:
        """The new text as shown: up to the first stop string."""
        return self._cut(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def put(self, value: Any) -> None:
        if self.ctrl_c is not None:
            self.ctrl_c.check()
        if self._prompt:
            self._prompt = False
            return
        self.ids.extend(int(token) for token in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        shown = self._cut(text)
        if shown == text:
            shown = shown[: len(shown) - self._held_back(shown)]
        else:
            self.stopped = True
        self._write(shown)

    def end(self) -> None:
        if self.ctrl_c is not None:
            self.ctrl_c.check()
        self._write(self.text)
        self.out.write("\n")
        self.out.flush()

    def _cut(self, text: str) -> str:
        cuts = [text.find(stop) for stop in self.stops if stop in text]
        return text[: min(cuts)] if cuts else text

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that may begin a stop string or a character."""
        held = len(text) - len(text.rstrip("\ufffd"))  # an incomplete UTF-8 sequence so far
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

    def _write(self, shown: str) -> None:
        if len(shown) > self.written:
            self.out.write(shown[self.written :])
            self.out.flush()
            self.written = len(shown)


# --- the summary ----------------------------------------------------------------------------------


def _column(name: str) -> dict[str, Any]:
    # addresses are copied from here: never cut them short
    return {"min_width": 42, "no_wrap": True} if name == "server" else {}


def print_rows(
    console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    """`rows` under `title`: a table where it fits the console's width, else one block of
    `column  value` lines per row, so that no figure is ever cut short (a pipe is 80 columns
    wide). Nothing at all for no rows."""
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, **_column(column))
    for row in rows:
        table.add_row(*row)
    unbounded = console.options.update(max_width=2**16)  # the width it needs to cut nothing
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
        return
    console.print(f"[italic]{title}[/]")
    width = max(len(column) for column in columns)
    for index, row in enumerate(rows):
        if index:
            console.print()
        for column, value in zip(columns, row, strict=True):
            console.print(f"  {column:<{width}}  {value}", soft_wrap=True)


def _short(peer_id: str) -> str:
    return f"…{peer_id[-10:]}"


def summary(
    console: Console,
    conn: Connected,
    llm: Any,
    *,
    route: Sequence[RouteHop],
    served: Iterable[Served],
    failovers: int,
    new_tokens: int,
    elapsed: float,
) -> None:
    """The route last used, the speed, what each server was paid (`served`, one per server)
    and the channels' balances."""
    hops = [
        (f"{hop.start}:{hop.end}", hop.address, _short(hop.peer_id), conn.show(hop.price_per_token))
        for hop in route
    ]
    print_rows(console, "Route", ("blocks", "server", "peer", "price per token"), hops)
    rate = new_tokens / elapsed if elapsed > 0 else 0.0
    console.print(
        f"{new_tokens} tokens in {elapsed:.2f} s: [bold]{rate:.2f} tokens/s[/]"
        + (f"  ({failovers} failover(s))" if failovers else "")
    )
    paid_servers = list(served)
    if not paid_servers:
        console.print("nothing paid this run")
        return
    paid = [(s.address, str(s.tokens), conn.show(s.cost)) for s in paid_servers]
    paid.append(("total", "", conn.show(sum(s.cost for s in paid_servers))))
    print_rows(console, "Paid this run", ("server", "tokens", "paid"), paid)
    channels_table(console, conn, llm.client.payments.known_channels(), title="Channels")


def channels_table(console: Console, conn: Connected, channels: list[Any], *, title: str) -> None:
    now = conn.chain.timestamp()
    rows = [
        (
            str(channel.channel_id),
            channel.server,
            conn.show(channel.deposit),
            conn.show(channel.signed),
            conn.show(channel.deposit - channel.signed),
            when(channel.expiry, now=now),
        )
        for channel in channels
    ]
    columns = ("channel", "server", "deposit", "paid", "left", "expiry")
    print_rows(console, title, columns, rows)
