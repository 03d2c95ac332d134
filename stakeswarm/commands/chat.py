"""`stakeswarm client chat`: a conversation with the model in the terminal, paid per token.

    stakeswarm client chat --model ./SmolLM2 --initial-peers /ip4/.../p2p/Qm... --devnet \\
        [--system "You are brief."] [--max-new-tokens 128] [--max-length 2048]
    you: hello
    assistant: Hello! How can I help you today?
    turn 1 (session 1): 9 new tokens, paid for 31 tokens: 0.093 SWARM; chat total 0.093 SWARM
    you: /reset          # history cleared; the next message starts a new session
    you: /exit           # (or end of input, or Ctrl-C): the summary of the whole chat

Lines come from stdin, typed or piped. The whole conversation goes through the model's chat
template, but the servers see each token once: one inference session holds the conversation
(its KV cache lives on the servers), and each turn sends only the template's text between the
last answer and the new answer (the end of the answer's turn, the user's message, the
assistant's header) plus the answer's tokens as they are generated. A session has a fixed
length (--max-length, reserved on the servers when it opens): a message that would not fit
is refused with the way out (/reset), and an answer that would run past it is cut shorter,
with a note. A template that rewrites earlier turns (so the conversation's text no longer
begins with what the session holds) sends the whole conversation to a new session, with a
note: it is paid again. A pause longer than the servers' idle timeout makes the client replay
the session to new server sessions (`client.session`), which is paid again too.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from client.errors import BudgetExceededError, ClientError
from node.cli_options import ChainOptions, with_chain_options
from node.logs import setup_logging
from stakeswarm.commands.chain_support import Connected, reporting
from stakeswarm.commands.client_support import (
    CtrlC,
    GenerationOptions,
    KeystoreOpt,
    Printer,
    check_system,
    connect_client,
    encode,
    load_local_tokenizer,
    open_model,
    render_chat,
    summary,
    with_generation_options,
)

if TYPE_CHECKING:
    from client.model import DistributedModelForCausalLM
    from client.session import InferenceSession, Served
    from node.routing import RouteHop

DEFAULT_MAX_LENGTH = 2048  # positions of a session, when the model allows that many
COMMANDS = "/reset starts over, /exit ends the chat"

MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        help="Positions one conversation may hold (reserved on the servers; default: the "
        f"model's maximum, at most {DEFAULT_MAX_LENGTH}).",
        show_default=False,
    ),
]


@dataclass
class Ask:
    """The token ids that carry a user's message into the session."""

    message: str  # what the user typed
    rendered: str  # the whole conversation through the template, up to the answer's start
    ids: Any  # [1, tokens]: what the session has not seen yet
    whole: bool  # `ids` is the whole conversation (a new session), not a continuation


@dataclass
class Conversation:
    """The messages of one conversation and the text its session's tokens stand for: the
    template's text up to the last answer and the answer as generated (special tokens kept)."""

    tokenizer: Any
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    held: str = ""  # the text of every token in the session ("" : no session yet)
    length: int = 0  # tokens in the session (the last one generated is not sent yet)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every turn (the system message stays)."""
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.held, self.length = "", 0

    def ask(self, message: str) -> Ask:
        """The ids to send for `message`: what the template adds after the session's text, or
        the whole conversation for a new session (or when the template rewrote earlier turns)."""
        messages = [*self.messages, {"role": "user", "content": message}]
        rendered = render_chat(self.tokenizer, messages, add_generation_prompt=True, what="chat")
        if self.held and rendered.startswith(self.held):
            return Ask(message, rendered, encode(self.tokenizer, rendered[len(self.held) :]), False)
        return Ask(message, rendered, encode(self.tokenizer, rendered), True)

    def answered(self, ask: Ask, answer: Any, length: int) -> None:
        """Record the answer's token ids [tokens]; the session now holds `length` tokens."""
        decode = self.tokenizer.decode
        self.messages += [
            {"role": "user", "content": ask.message},
            {"role": "assistant", "content": decode(answer, skip_special_tokens=True)},
        ]
        self.held = ask.rendered + decode(answer, skip_special_tokens=False)
        self.length = length


def default_max_length(model_config: Any) -> int:
    limit = getattr(model_config, "max_position_embeddings", None)
    return min(DEFAULT_MAX_LENGTH, int(limit)) if limit else DEFAULT_MAX_LENGTH


class _Interrupted(Exception):
    """Ctrl-C during an answer (the chat ends with status 130)."""


class _Budget(Exception):
    """The budget stopped an answer (the chat ends with status 1)."""


class ChatRun:
    """One chat: its conversation, its current session and what every session cost."""

    def __init__(
        self,
        llm: DistributedModelForCausalLM,
        conn: Connected,
        console: Console,
        errors: Console,
        generation: GenerationOptions,
        max_length: int,
    ) -> None:
        self.llm = llm
        self.conn = conn
        self.console = console
        self.errors = errors
        self.generation = generation
        self.max_length = max_length
        self.decoding = generation.decoding(llm.tokenizer)
        self.conversation = Conversation(llm.tokenizer, generation.system)
        self.session: InferenceSession | None = None
        self.sessions = 0  # sessions opened so far
        self.turns = 0
        self.new_tokens = 0  # tokens generated over the whole chat
        self.elapsed = 0.0  # seconds spent answering
        self.failovers = 0  # of the sessions closed
        self.route: list[RouteHop] = []  # the last route used
        self.paid: dict[str, Served] = {}  # per server, over the sessions closed
        self.ctrl_c = CtrlC()  # Ctrl-C during the chat, even one Python dropped

    # --- the loop ---------------------------------------------------------------------------

    def run(self, lines: Iterator[str]) -> int:
        """Answer every line until /exit or the end of input; the exit status."""
        try:
            with self.ctrl_c:
                status = self._answer_lines(lines)
        except KeyboardInterrupt:  # Ctrl-C while waiting for a line
            self.console.file.write("\n")
            status = 130
        return self.finish(status)

    def _answer_lines(self, lines: Iterator[str]) -> int:
        try:
            for line in lines:
                message = line.strip()
                if not message:
                    continue
                if message in ("/exit", "/quit"):
                    break
                if message == "/reset":
                    self.reset()
                    continue
                if message.startswith("/") and " " not in message:
                    self.console.print(f"unknown command {escape(message)}: {COMMANDS}")
                    continue
                self.turn(message)
        except _Interrupted:
            return 130
        except _Budget:
            return 1
        except ClientError as exc:  # no route, a refused payment: say so, and what was paid
            self.errors.print(f"[red]error:[/] {escape(str(exc))}")
            return 1
        return 0

    def reset(self) -> None:
        self._close_session()
        self.conversation.reset()
        self.console.print("history cleared; the next message starts a new session")

    def turn(self, message: str) -> None:
        """Answer `message`, streaming the answer, then say what the turn cost."""
        ask = self.conversation.ask(message)
        if ask.whole and self.conversation.length:
            self.console.print(
                "[yellow]note:[/] the chat template rewrote earlier turns: the whole "
                "conversation goes to a new session (paid again)"
            )
            self._close_session()
            self.conversation.length = 0
        used = self.conversation.length
        room = self.max_length - used - ask.ids.shape[1]
        if room < 1:
            if used:
                self.console.print(
                    f"[yellow]the conversation is full:[/] it holds {used} of "
                    f"{self.max_length} tokens and this message needs {ask.ids.shape[1]} more "
                    "and room to answer; type /reset to start over (history cleared) or "
                    "send something shorter"
                )
            else:
                self.console.print(
                    f"[yellow]this message is too long:[/] {ask.ids.shape[1]} tokens with the "
                    f"chat template and room to answer do not fit in {self.max_length} "
                    "(--max-length)"
                )
            return
        max_new = min(self.generation.max_new_tokens, room)
        if self.session is None:
            self.session = self.llm.inference_session(max_length=self.max_length)
            self.sessions += 1
        session = self.session
        self.turns += 1
        cost_before, position_before = _cost(session), session.position
        printer = Printer(self.llm.tokenizer, self.console.file, self.generation.stop, self.ctrl_c)
        self.console.file.write("assistant: ")
        self.console.file.flush()
        began = time.perf_counter()
        try:
            out = self.llm.generate(
                ask.ids, session=session, max_new_tokens=max_new, streamer=printer,
                **self.decoding,
            )  # fmt: skip
        except BudgetExceededError as exc:
            printer.end()
            self._answered(printer.tokens, began)
            self.errors.print(f"[yellow]stopped:[/] {escape(str(exc))}")
            raise _Budget from None
        except KeyboardInterrupt:
            self.console.file.write("\n")
            self._answered(printer.tokens, began)
            self.errors.print(
                f"[yellow]interrupted[/] after {printer.tokens} tokens; paid "
                f"{self.conn.show(self._total())} this chat"
            )
            raise _Interrupted from None
        except ClientError:  # no route, a refused payment: the chat ends (`run` says why)
            self.console.file.write("\n")
            self._answered(printer.tokens, began)
            raise
        self._answered(printer.tokens, began)
        answer = out[0, used + ask.ids.shape[1] :]
        self.conversation.answered(ask, answer, int(out.shape[1]))
        self.console.print(
            f"[dim]turn {self.turns} (session {self.sessions}): {answer.shape[0]} new tokens, "
            f"paid for {session.position - position_before} tokens: "
            f"{self.conn.show(_cost(session) - cost_before)}; "
            f"chat total {self.conn.show(self._total())}[/]"
        )
        if max_new < self.generation.max_new_tokens and answer.shape[0] == max_new:
            self.console.print(
                f"[yellow]note:[/] the answer was cut at {max_new} tokens: the conversation "
                f"is nearly full ({self.max_length} tokens); /reset to start over"
            )

    def finish(self, status: int) -> int:
        """Close the session and print the summary of the whole chat; returns `status`."""
        self._close_session()
        self.console.print(
            f"chat: {self.turns} turn(s) in {self.sessions} session(s), "
            f"paid {self.conn.show(self._total())}"
        )
        summary(
            self.console, self.conn, self.llm, route=self.route, served=self.paid.values(),
            failovers=self.failovers, new_tokens=self.new_tokens, elapsed=self.elapsed,
        )  # fmt: skip
        return status

    # --- bookkeeping ------------------------------------------------------------------------

    def _answered(self, tokens: int, began: float) -> None:
        self.new_tokens += tokens
        self.elapsed += time.perf_counter() - began
        if self.session is not None and self.session.route:
            self.route = self.session.route

    def _total(self) -> int:
        paid = sum(served.cost for served in self.paid.values())
        return paid + (0 if self.session is None else _cost(self.session))

    def _close_session(self) -> None:
        from client.session import Served

        session, self.session = self.session, None
        if session is None:
            return
        session.close()
        self.failovers += session.failovers
        for served in session.served.values():
            total = self.paid.setdefault(served.address, Served(served.address, served.peer_id))
            total.tokens += served.tokens
            total.cost += served.cost


def _cost(session: InferenceSession) -> int:
    return sum(served.cost for served in session.served.values())


def _lines(console: Console, stdin: TextIO) -> Iterator[str]:
    """The user's lines: prompted on a terminal, echoed when piped (so the output reads as
    the conversation)."""
    interactive = stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):  # not on every platform
            import readline  # noqa: F401  (line editing and history at the prompt)
    while True:
        if interactive:
            try:
                line = console.input("[bold]you:[/] ")
            except EOFError:
                console.file.write("\n")
                return
        else:
            line = stdin.readline()
            if not line:
                return
            console.print(f"[bold]you:[/] {escape(line.rstrip())}")
        yield line


@with_chain_options(keystore=KeystoreOpt)
@with_generation_options
def chat(
    max_length: MaxLengthOpt = None,
    *,
    generation: GenerationOptions,
    options: ChainOptions,
) -> None:
    """Chat with the model through the swarm, line by line (typed or piped), paying per token;
    /reset starts over, /exit (or the end of input) ends with what the chat cost."""
    peers = generation.check()
    if max_length is not None and max_length < 2:
        raise typer.BadParameter("must be >= 2", param_hint="--max-length")
    from node.families import load_config

    setup_logging(generation.log_level)
    errors = Console(stderr=True, soft_wrap=True)
    with reporting() as console:
        tokenizer = load_local_tokenizer(generation.model)
        render_chat(tokenizer, [{"role": "user", "content": "hi"}], add_generation_prompt=True,
                    what="chat")  # fmt: skip
        if generation.system is not None:
            check_system(tokenizer, generation.system, what="--system")
        limit = max_length or default_max_length(load_config(generation.model))
        conn = connect_client(options)
        llm = open_model(generation, peers, conn, options)
        try:
            console.print(f"[dim]chatting with {escape(generation.model.name)}: {COMMANDS}[/]")
            status = ChatRun(llm, conn, console, errors, generation, limit).run(
                _lines(console, sys.stdin)
            )
        except ClientError as exc:  # the summary itself failed (the chain is gone)
            errors.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
        finally:
            llm.close()
        if status:
            raise typer.Exit(status)
