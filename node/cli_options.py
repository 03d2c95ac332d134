"""The command-line options several `stakeswarm` commands share, declared once: where to act and
as whom (`with_chain_options`: --devnet, --account, --home, --rpc, --deployment, --keystore,
--password-env), the ledger database of a command that keeps or reads one (--db), what every
long-running server takes (--model-name, --http-port, --threads, --log-level), and the checks of local inputs (--initial-peers, --model) that run
before any chain, ledger or network work.

They live here, under `node`, because `node serve` (`node.cli`) takes them and imports flow
`ledger` <- `node` <- `client`, `verifier` <- `stakeswarm`; the `chain`, `client` and
`verifier` commands import them from here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn, overload

import typer
from rich.console import Console
from rich.markup import escape

from ledger.types import parse_token_amount

# --- where to act and as whom -------------------------------------------------------------

DevnetOpt = Annotated[
    bool, typer.Option("--devnet", help="Use the running devnet's deployment and a dev key.")
]
AccountOpt = Annotated[
    str | None,
    typer.Option(
        "--account",
        help="With --devnet: a dev account by name (node-1), role (its first: client) or index.",
        show_default=False,
    ),
]
HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="State directory (default ~/.stakeswarm).", show_default=False),
]
RpcOpt = Annotated[
    str | None,
    typer.Option("--rpc", help="JSON-RPC URL (default: the deployment's).", show_default=False),
]
DeploymentOpt = Annotated[
    Path | None,
    typer.Option(
        "--deployment", help="Deployment JSON file (without --devnet).", show_default=False
    ),
]
KeystoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--keystore", help="Keystore of the signing key (without --devnet).", show_default=False
    ),
]
PasswordEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--password-env",
        help="Name of an environment variable holding the keystore password (else prompted).",
        show_default=False,
    ),
]


DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="The ledger database, as an SQLAlchemy URL: sqlite:///FILE or "
        "postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME (default: the SQLite file in --home).",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class ChainOptions:
    """Where to act and as whom, as the chain options say."""

    devnet: bool
    account: str | None
    home: Path | None
    rpc: str | None
    deployment: Path | None
    keystore: Path | None
    password_env: str | None

    def identity(self) -> dict[str, Any]:
        """The same settings under the names a server's config gives them (`NodeConfig`,
        `VerifierConfig`); `home` only when given, so the config's default stands."""
        settings: dict[str, Any] = {
            "devnet": self.devnet,
            "account": self.account,
            "rpc_url": self.rpc,
            "deployment_file": self.deployment,
            "keystore": self.keystore,
            "password_env": self.password_env,
        }
        if self.home is not None:
            settings["home"] = self.home
        return settings


# name, option (an `Annotated` alias a command may replace), default; in `ChainOptions` order
_CHAIN_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("devnet", DevnetOpt, False),
    ("account", AccountOpt, None),
    ("home", HomeOpt, None),
    ("rpc", RpcOpt, None),
    ("deployment", DeploymentOpt, None),
    ("keystore", KeystoreOpt, None),
    ("password_env", PasswordEnvOpt, None),
)

Command = Callable[..., None]


@overload
def with_chain_options(command: Command, /) -> Command: ...
@overload
def with_chain_options(**replaced: Any) -> Callable[[Command], Command]: ...
def with_chain_options(
    command: Command | None = None, /, **replaced: Any
) -> Command | Callable[[Command], Command]:
    """A command whose function takes `options: ChainOptions` gets the chain options instead
    (--devnet, --account, --home, --rpc, --deployment, --keystore, --password-env), after its
    own; apply it below `@app.command(...)`. `@with_chain_options(keystore=SomeOpt)` gives an
    option a help of the command's own (e.g. the client's default keystore); the name stays."""
    unknown = set(replaced) - {name for name, _, _ in _CHAIN_OPTIONS}
    if unknown:
        raise TypeError(f"with_chain_options: no chain option {', '.join(sorted(unknown))}")
    if command is None:
        return functools.partial(_with_chain_options, replaced=replaced)
    return _with_chain_options(command, replaced=replaced)


def _with_chain_options(command: Command, *, replaced: dict[str, Any]) -> Command:
    own = inspect.signature(command, eval_str=True)
    params = [p for name, p in own.parameters.items() if name != "options"]
    params += [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=replaced.get(name, option),
            default=default,
        )
        for name, option, default in _CHAIN_OPTIONS
    ]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        options = ChainOptions(*(kwargs.pop(name) for name, _, _ in _CHAIN_OPTIONS))
        command(*args, options=options, **kwargs)

    run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    return run


# --- what every long-running server (node serve, verifier run) takes --------------------------

ModelNameOpt = Annotated[
    str | None,
    typer.Option(
        help="The swarm's name of the model (default: the folder's name).", show_default=False
    ),
]
HttpPortOpt = Annotated[int | None, typer.Option(help="Status API port (0: any free port).")]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="Torch threads (default: torch's).", show_default=False)
]
LogLevelOpt = Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]


def parse_tokens(text: str, what: str) -> Decimal:
    """Whole tokens, decimals allowed ("100", "0.001"), for a config that keeps them whole
    (`NodeConfig`, `VerifierConfig`); the `chain` and `client` commands, which know the
    token's decimals, convert to base units with `chain_support.parse_tokens`."""
    try:
        return parse_token_amount(text, what)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


# --- local inputs, checked before any chain, ledger or network work ---------------------------

PEER_ADDRESS_FORM = "/ip4/HOST/tcp/PORT/p2p/PEER_ID"  # what a node prints after "join with"


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one `error:` line on stderr (exit status `code`)."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def peer_address_problem(text: str) -> str | None:
    """What is wrong with `text` as the multiaddr of a swarm member (None: nothing): it must
    parse and end in the member's peer id (`/p2p/...`), as the libp2p daemon needs it."""
    # hivemind (and with it torch) loads here, only in commands that join a swarm
    from hivemind.utils.multiaddr import Multiaddr
    from hivemind.utils.multiaddr.exceptions import Error as MultiaddrError

    try:
        address = Multiaddr(text)
    except (MultiaddrError, ValueError, TypeError) as exc:
        reason = str(exc).removeprefix(f"Invalid MultiAddr {text!r}").lstrip(" :")
        return f"not a multiaddr ({reason or exc})"
    if "p2p" not in {protocol.name for protocol in address.protocols()}:
        return "no peer id (/p2p/PEER_ID)"
    return None


def check_initial_peers(values: Sequence[str] | None) -> tuple[str, ...]:
    """--initial-peers as given, every one checked (`peer_address_problem`); a malformed one
    ends the command with one `error:` line naming it and the form expected."""
    peers = tuple(values or ())
    for peer in peers:
        problem = peer_address_problem(peer)
        if problem is not None:
            fail(
                f"--initial-peers {peer!r}: {problem}; expected {PEER_ADDRESS_FORM}, "
                "as a node prints after `join with`"
            )
    return peers


def check_model_folder(path: Path) -> Path:
    """--model as given, checked to be a folder (what it holds is the loader's to check)."""
    if not path.is_dir():
        fail(f"--model {str(path)!r}: no such folder (give a local Hugging Face model folder)")
    return path
