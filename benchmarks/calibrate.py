"""Calibration of the verifier's thresholds (not a test): false positives and detection.

Simulated nodes (`verifier.calibration`) serve random sessions — a prefill, then one token
per step through a KV cache — honestly in several ways, or with each compute cheat of
`node.faults`; the verifier audits every leaf in one float32 pass on the CPU over the session's
inputs up to the leaf, judged on the committed sketch with `verifier/thresholds.py` for the
dtype the node declared (as `stakeswarm verifier run` audits a float32 node; it audits a 16-bit
node block by block, which `--matched` calibrates). Printed per variation: leaves audited,
cheated leaves, the false-positive rate over honest leaves, the detection rate over cheated
leaves, and the extremes of what was measured; then how much noise each declared dtype lets
through.

Honest variations: node threads (2) against the verifier's (1), cached steps against one
pass, the session computed in a batch with other sessions, float16 / bfloat16 nodes that
declare it, and (with --device cuda) another machine's arithmetic.

    .venv/bin/python benchmarks/calibrate.py                       # tiny random Llama, fast
    .venv/bin/python benchmarks/calibrate.py --model smollm2 --blocks 0:10 --sessions 20
    .venv/bin/python benchmarks/calibrate.py --model PATH --device cuda   # nodes on a GPU

With `--matched` it calibrates the 16-bit audit instead: nodes that declare bfloat16 / float16
(`--declared`), every honest 16-bit variation and every cheat; each session is served once and
each of its leaves audited both ways: one float32 pass judged on the sketch (`FLOAT32_WAY`, for
comparison), and block by block from the block states the node commits (`BLOCKWISE_WAY`:
`verifier.blockwise`, as `stakeswarm verifier run` audits 16-bit nodes, under
`BLOCK_TOLERANCES`). Blockwise rows give the range over leaves of each measure of
`verifier.blockwise` (the largest share of components off by more than one unit in the last
place, block error and error of one position over the blocks; the step's precision ratio; a
cheat's rows: over its cheated leaves only):

    .venv/bin/python benchmarks/calibrate.py --model smollm2 --blocks 0:10 --matched \\
        --sessions 24

With `--json PATH` the matrix is also written as data (`benchmarks/run_all.py` collects it).

Nodes on another machine (a GPU machine without the verifier's chain dependencies): serve
there with `--dump DIR` (saves every variation's sessions, inputs, outputs and, for 16-bit
nodes, block states in one safetensors file, and prints a checksum of the model's weights), then
audit here with `--from FILE` (the same --model, rebuilt from its seed: the checksums must
agree); 16-bit sessions are audited both ways, so a GPU run measures what another machine's
arithmetic does to the block tolerances.

    python3 benchmarks/calibrate.py --model random576 --device cuda --dump out/   # there
    .venv/bin/python benchmarks/calibrate.py --model random576 \\
        --from out/sessions-random576.safetensors                                 # here
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from common import (
    MODEL_HELP,
    TINY,
    BenchmarkError,
    Provenance,
    Stopwatch,
    model_layers,
    option,
    parse_main,
    parse_span,
    resolve_model,
    save_result,
)
from safetensors.torch import load_file, save_file

from node.blocks import ClientHead, Span, load_client_head, load_span
from node.faults import FaultMode
from node.precisions import QUANTIZATIONS, precision_name, split_precision
from node.states import commits_states
from verifier.calibration import (
    DTYPES,
    HONEST,
    Rates,
    Served,
    SimulatedNode,
    SpanCheat,
    Variation,
    audit_leaf,
    block_audit,
    cheats,
    honest_16bit,
    leaves_from,
    run_variation,
    session_inputs,
    step_bounds,
)
from verifier.thresholds import BLOCK_TOLERANCES, TOLERANCES

if TYPE_CHECKING:
    from verifier.blockwise import BlockAudit

SCRIPT = "calibrate.py"
NOISE_SCALES = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
NOISE_DTYPES = ("float32", "float16", "bfloat16")
MATCHED_DTYPES = ("bfloat16", "float16")
# 16-bit precisions `--matched --declared` takes: the dtypes, and each with quantized weights
MATCHED_PRECISIONS = (
    *MATCHED_DTYPES,
    *(precision_name(d, q) for d in MATCHED_DTYPES for q in QUANTIZATIONS),
)
FLOAT32_WAY = "float32 recompute"  # how the verifier audited a row (`Row.variation` suffix):
BLOCKWISE_WAY = "block by block"  # one float32 pass on the sketch, or `verifier.blockwise`


# What a GPU machine serves in --dump mode: the honest variations that matter across hardware,
# TF32 matmuls (lower precision than float32: PyTorch leaves them off by default), two cheats.
DUMPED: tuple[Variation, ...] = (
    Variation("float32"),
    Variation("float32, batched with 2 other sessions", strangers=2),
    Variation("float32, TF32 matmuls"),
    Variation("float16 declared", declared="float16"),
    Variation("bfloat16 declared", declared="bfloat16"),
    Variation("bfloat16, batched with 2 other sessions", declared="bfloat16", strangers=2),
    Variation("bfloat16, eager attention", declared="bfloat16", attention="eager"),
    Variation("float16, batched with 2 other sessions", declared="float16", strangers=2),
    Variation("noise (float32 declared)", fault=FaultMode.NOISE),
    Variation("low-precision (float32 declared)", fault=FaultMode.LOW_PRECISION),
    Variation("noise (bfloat16 declared)", declared="bfloat16", fault=FaultMode.NOISE),
    Variation("skip-block (bfloat16 declared)", declared="bfloat16", fault=FaultMode.SKIP_BLOCK),
    Variation(
        "int8-weights (bfloat16 declared)", declared="bfloat16", fault=SpanCheat.INT8_WEIGHTS
    ),
    Variation(
        "float16-compute (bfloat16 declared)",
        declared="bfloat16",
        fault=SpanCheat.FLOAT16_COMPUTE,
    ),
    Variation("noise (float16 declared)", declared="float16", fault=FaultMode.NOISE),
    # quantized weights: on a GPU, bitsandbytes' CUDA kernels against the verifier's CPU ones
    Variation("bfloat16+int8 declared", declared="bfloat16", quantization="int8"),
    Variation("bfloat16+nf4 declared", declared="bfloat16", quantization="nf4"),
    Variation(
        "bfloat16+nf4, batched with 2 other sessions",
        declared="bfloat16",
        quantization="nf4",
        strangers=2,
    ),
    Variation(
        "noise (bfloat16+int8 declared)",
        declared="bfloat16",
        quantization="int8",
        fault=FaultMode.NOISE,
    ),
)


@dataclass(frozen=True)
class Options:
    """Which model and span to calibrate on, how many sessions, and where nodes compute."""

    model: str = option(TINY, MODEL_HELP + ", or random576 (SmolLM2's width, random)")
    blocks: str = option("", "START:END of the span (default: the first half)")
    sessions: int = option(20, "sessions per variation")
    new_tokens: int = option(6, "decode steps per session")
    noise_sessions: int = option(0, "sessions per cell of the noise table (0: sessions / 4, >= 4)")
    device: str = option("cpu", "where the simulated nodes compute")
    seed: int = option(0, "seed of the sessions")
    matched: bool = option(
        False,
        "calibrate the 16-bit audit instead: nodes that declare bfloat16 / float16, each leaf "
        "audited in one float32 pass and block by block (verifier.blockwise)",
    )
    declared: tuple[str, ...] = option(MATCHED_DTYPES, "with --matched: the declared dtypes")
    sketch_k: int = option(
        0, "with --matched: sketch this many components (0: the node's k; float32 way only)"
    )
    stem: bool = option(
        False,
        "sessions enter the span as a real model's hidden states there: the embeddings run "
        "through the blocks before it (float32), not the embeddings themselves",
    )
    dump: str = option("", "serve only, saving the sessions in this folder")
    source: str = option("", "audit the sessions a --dump saved in this file", flag="--from")

    def __post_init__(self) -> None:
        for name in ("sessions", "new_tokens"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name.replace('_', '-')} must be at least 1")
        if self.noise_sessions < 0:
            raise BenchmarkError("--noise-sessions must not be negative")
        if unknown := set(self.declared) - set(MATCHED_PRECISIONS):
            raise BenchmarkError(f"--declared takes {', '.join(MATCHED_PRECISIONS)}, not {unknown}")
        if self.dump and self.source:
            raise BenchmarkError("give --dump (serve here) or --from (audit here), not both")

    @property
    def cells(self) -> int:
        """Sessions per cell of the noise table."""
        return self.noise_sessions or max(4, self.sessions // 4)


QUICK = Options(sessions=2, noise_sessions=1)


@dataclass(frozen=True)
class Row:
    """One variation's audits, judged on the sketch (float32 pass: the overlap and relative
    errors) or block by block (`verifier.blockwise`: the block error and precision ratio); the
    other kind's fields are None. Ranges are over the leaves audited (a cheat's: over its
    cheated leaves only) and None when there were none."""

    variation: str
    declared: str  # the dtype the node declared
    leaves: int  # audited
    cheated: int  # of which cheated
    false_positive_rate: float  # failed audits of honest leaves / honest leaves
    detection_rate: float | None  # failed audits of cheated leaves / cheated leaves
    min_overlap: float | None = None  # lowest share of top-k positions the recomputation kept
    mean_rel_error: tuple[float, float] | None = None  # range of the mean relative error
    worst_rel_error: tuple[float, float] | None = None  # range of the worst relative error
    ulp_share: tuple[float, float] | None = None  # range of a leaf's largest share of a row's
    # components more than one unit in the last place off (blockwise)
    block_error: tuple[float, float] | None = None  # range of a leaf's largest block error
    position_error: tuple[float, float] | None = None  # range of a leaf's largest error of one
    # position (in any block)
    precision_ratio: tuple[float, float] | None = None  # range of a leaf's precision ratio

    @property
    def blockwise(self) -> bool:
        """Whether the leaves were audited block by block."""
        return self.block_error is not None or self.ulp_share is not None

    @property
    def honest_failed(self) -> int:
        """Failed audits of honest leaves."""
        return round(self.false_positive_rate * (self.leaves - self.cheated))

    @classmethod
    def of(cls, rates: Rates) -> Row:
        w = rates.worst

        def span(name: str) -> tuple[float, float] | None:
            low, high = w.get(f"min_{name}"), w.get(f"max_{name}")
            return None if low is None or high is None else (low, high)

        return cls(
            variation=rates.variation.name,
            declared=rates.variation.precision,
            leaves=rates.leaves,
            cheated=rates.cheated,
            false_positive_rate=rates.false_positive_rate,
            detection_rate=rates.detection_rate if rates.cheated else None,
            min_overlap=w.get("min_min_overlap"),
            mean_rel_error=span("mean_rel_error"),
            worst_rel_error=span("worst_rel_error"),
            ulp_share=span("ulp_share"),
            block_error=span("block_error"),
            position_error=span("position_error"),
            precision_ratio=span("precision_ratio"),
        )


@dataclass(frozen=True)
class NoiseRow:
    """Detection per noised leaf at each of `NOISE_SCALES`, for one declared dtype."""

    declared: str
    detection: tuple[float, ...]


@dataclass(frozen=True)
class CalibrationResult:
    """False positives of honest variations, detection of every cheat, noise let through."""

    options: Options
    model: str
    layers: int
    span: tuple[int, int]
    hidden_size: int
    tolerances: dict[
        str, str
    ]  # declared dtype -> its thresholds, as `verifier.thresholds` has them
    rows: tuple[Row, ...]
    noise_scales: tuple[float, ...]  # noise std over the output's std
    noise: tuple[NoiseRow, ...]
    provenance: Provenance


def checksum(span: Span) -> str:
    """A short digest of the span's weights (both machines must build the same model)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(span.layers.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")[:60]


def dump(span: Span, head: ClientHead, options: Options) -> None:
    """Serve every `DUMPED` variation on --device; save the sessions in one file under --dump
    (keys `<variation>.<session>.<what>`: the session's hidden states, mask, prompt length and
    cheated steps, each step's output `out<step>` and, for a 16-bit node, its block states
    `states<step>`, [blocks, batch, tokens, hidden])."""
    out = Path(options.dump)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# weights {checksum(span)}; device {options.device}")
    tensors: dict[str, torch.Tensor] = {}
    for index, variation in enumerate(DUMPED):
        torch.backends.cuda.matmul.allow_tf32 = "TF32" in variation.name
        generator = torch.Generator().manual_seed(options.seed + index)
        node = SimulatedNode(span, variation, seed=options.seed + index, device=options.device)
        for i in range(options.sessions):
            hidden, mask, prompt = session_inputs(head, generator, new_tokens=options.new_tokens)
            served = node.serve(hidden, mask, prompt)
            key = f"{index}.{i}"
            tensors[f"{key}.hidden"] = torch.cat([h for h, _ in served.inputs], dim=1)
            tensors[f"{key}.mask"] = served.inputs[-1][1]
            tensors[f"{key}.prompt"] = torch.tensor([prompt])
            tensors[f"{key}.cheated"] = torch.tensor(served.cheated)
            for step, output in enumerate(served.outputs):
                tensors[f"{key}.out{step}"] = output.contiguous()
            for step, states in enumerate(served.states or []):
                tensors[f"{key}.states{step}"] = states.contiguous()
        print(f"# served {variation.name}: {options.sessions} sessions", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    metadata = {
        "device": options.device,
        "variations": json.dumps([[v.name, v.declared, v.quantization] for v in DUMPED]),
    }
    label = slug(Path(options.model).name)
    save_file(tensors, str(out / f"sessions-{label}.safetensors"), metadata)


def audit_dumped(span: Span, path: Path) -> list[Row]:
    """Audit the sessions a --dump saved, on this machine's CPU: a float32 node's in one float32
    pass, a 16-bit node's both ways (block by block only if the dump holds its block states)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    rows = []
    for index, (name, declared, *quantized) in enumerate(json.loads(metadata["variations"])):
        quantization = quantized[0] if quantized else None  # dumps before protocol 6 lack it
        ways: list[tuple[str, BlockAudit | None]] = [("", None)]
        if commits_states(DTYPES[declared]):
            ways = [(f", {FLOAT32_WAY}", None)]
            if any(k.startswith(f"{index}.") and ".states" in k for k in tensors):
                audit = block_audit(span, DTYPES[declared], quantization)
                ways.append((f", {BLOCKWISE_WAY}", audit))
        for suffix, blockwise in ways:
            variation = Variation(
                f"{name}, on {metadata['device']}{suffix}",
                declared=declared,
                quantization=quantization,
            )
            rates = audit_dumped_variation(tensors, index, variation, span, blockwise)
            rows.append(Row.of(rates))
            print(f"{variation.name}: {rates.leaves} leaves", flush=True)
    return rows


def audit_dumped_variation(
    tensors: dict[str, torch.Tensor],
    index: int,
    variation: Variation,
    span: Span,
    blockwise: BlockAudit | None,
) -> Rates:
    """Audit the sessions a --dump saved for its `index`-th variation (block by block with
    `blockwise`, else in one float32 pass)."""
    rates = Rates(variation)
    sessions = sorted({int(k.split(".")[1]) for k in tensors if k.startswith(f"{index}.")})
    for i in sessions:
        key = f"{index}.{i}"
        hidden, mask = tensors[f"{key}.hidden"], tensors[f"{key}.mask"]
        bounds = step_bounds(int(tensors[f"{key}.prompt"][0]), hidden.shape[1])
        inputs = [(hidden[:, a:b].contiguous(), mask[:, :b].contiguous()) for a, b in bounds]
        outputs = [tensors[f"{key}.out{step}"] for step in range(len(bounds))]
        cheated = [bool(c) for c in tensors[f"{key}.cheated"]]
        states = None
        if f"{key}.states0" in tensors:
            states = [tensors[f"{key}.states{step}"] for step in range(len(bounds))]
        for leaf in leaves_from(Served(inputs, outputs, cheated, states)):
            rates.add(leaf, audit_leaf(span, leaf, variation.declared, blockwise))
    return rates


@contextmanager
def loaded(options: Options) -> Iterator[tuple[Path, int, Span, ClientHead]]:
    """The model folder, its block count, the span to calibrate on and the client head."""
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        path = resolve_model(options.model, Path(tmp))
        layers = model_layers(path)
        start, end = (
            parse_span(options.blocks, layers) if options.blocks else (0, max(1, layers // 2))
        )
        head = load_client_head(path)
        if options.stem and start > 0:
            head = StemmedHead(head, load_span(path, 0, start))
        yield path, layers, load_span(path, start, end), head


class StemmedHead(ClientHead):
    """A client head whose `embed` also runs the blocks before the calibrated span (`stem`),
    so a span that starts deep in the model gets the hidden states it would really see."""

    def __init__(self, head: ClientHead, stem: Span) -> None:
        super().__init__(head.embed_tokens, head.norm, head.lm_head,
                         embed_scale=head.embed_scale, logit_softcap=head.logit_softcap)  # fmt: skip
        self.stem = stem

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, tokens] -> the stem's output [batch, tokens, hidden_size]."""
        return self.stem.forward(super().embed(input_ids), None)


def run(options: Options) -> CalibrationResult:
    """The calibration matrix: every honest variation and every cheat (declared float32 and
    bfloat16), then the noise each declared dtype lets through."""
    clock = Stopwatch(SCRIPT, options)
    torch.set_num_threads(2)
    with loaded(options) as (path, layers, span, head):
        variations: list[Variation] = [*HONEST, *cheats("float32"), *cheats("bfloat16")]
        if options.device != "cpu":
            variations = [replace(v, name=f"{v.name}, on {options.device}") for v in variations]
        rows = []
        for index, variation in enumerate(variations):
            rates = run_variation(
                span, head, variation, sessions=options.sessions, seed=options.seed + index,
                new_tokens=options.new_tokens, device=options.device,
            )  # fmt: skip
            rows.append(Row.of(rates))
            print(f"{variation.name}: {rates.leaves} leaves", flush=True)
        noise = []
        for dtype in NOISE_DTYPES:
            cells = []
            for scale in NOISE_SCALES:
                variation = Variation(f"noise {scale:g}", dtype, FaultMode.NOISE, noise_scale=scale)
                rates = run_variation(
                    span, head, variation, sessions=options.cells, seed=options.seed,
                    new_tokens=options.new_tokens, device=options.device,
                )  # fmt: skip
                cells.append(rates.detection_rate)
            noise.append(NoiseRow(dtype, tuple(cells)))
            print(f"noise table, {dtype} declared", flush=True)
        return CalibrationResult(
            options=options,
            model=path.name,
            layers=layers,
            span=(span.start, span.end),
            hidden_size=span.hidden_size,
            tolerances={dtype: str(tolerance) for dtype, tolerance in TOLERANCES.items()},
            rows=tuple(rows),
            noise_scales=NOISE_SCALES,
            noise=tuple(noise),
            provenance=clock.provenance(),
        )


@dataclass(frozen=True)
class MatchedResult:
    """The 16-bit audit: every honest variation and cheat of a node that declares bfloat16 or
    float16, each leaf audited both ways (`FLOAT32_WAY`, `BLOCKWISE_WAY`: a row per variation
    and way, in that order), and the noise each way lets through."""

    options: Options
    model: str
    span: tuple[int, int]
    hidden_size: int
    tolerances: dict[str, str]  # "<dtype>, <way>" -> its thresholds
    rows: tuple[Row, ...]
    noise_scales: tuple[float, ...]
    noise: tuple[NoiseRow, ...]  # declared is "<dtype>, <way>"
    provenance: Provenance


def audit_both_ways(
    span: Span,
    head: ClientHead,
    variation: Variation,
    options: Options,
    *,
    seed: int,
    sessions: int,
) -> tuple[Rates, Rates]:
    """Serve `sessions` random sessions as `variation` (a 16-bit declared dtype) and audit every
    leaf in one float32 pass on its sketch and block by block: the rates of either way."""
    generator = torch.Generator().manual_seed(seed)
    node = SimulatedNode(span, variation, seed=seed, device=options.device)
    blockwise = block_audit(span, DTYPES[variation.declared], variation.quantization)
    by_float32 = Rates(replace(variation, name=f"{variation.name}, {FLOAT32_WAY}"))
    by_block = Rates(replace(variation, name=f"{variation.name}, {BLOCKWISE_WAY}"))
    for _ in range(sessions):
        hidden, mask, prompt = session_inputs(head, generator, new_tokens=options.new_tokens)
        served = node.serve(hidden, mask, prompt)
        for leaf in leaves_from(served, sketch_k=options.sketch_k or None):
            by_float32.add(leaf, audit_leaf(span, leaf, variation.declared))
            by_block.add(leaf, audit_leaf(span, leaf, variation.declared, blockwise))
    return by_float32, by_block


def run_matched(options: Options) -> MatchedResult:
    """Nodes that declare a 16-bit dtype (`--declared`): every honest variation of
    `honest_16bit` and every cheat, each leaf audited in one float32 pass and block by block;
    then the noise either way lets through."""
    clock = Stopwatch(SCRIPT, options)
    torch.set_num_threads(2)
    with loaded(options) as (path, _, span, head):
        rows, noise = [], []
        for precision in options.declared:
            declared, quantization = split_precision(precision)
            variations = [*honest_16bit(declared, quantization), *cheats(declared, quantization)]
            for index, variation in enumerate(variations):
                began = time.perf_counter()
                both = audit_both_ways(
                    span, head, variation, options, seed=options.seed + index,
                    sessions=options.sessions,
                )  # fmt: skip
                rows += [Row.of(rates) for rates in both]
                print(
                    f"{variation.name}: {both[0].leaves} leaves "
                    f"({time.perf_counter() - began:.0f} s)",
                    flush=True,
                )
            cells: tuple[list[float], list[float]] = ([], [])
            for scale in NOISE_SCALES:
                variation = Variation(
                    f"noise {scale:g}",
                    declared,
                    FaultMode.NOISE,
                    noise_scale=scale,
                    quantization=quantization,
                )
                both = audit_both_ways(
                    span, head, variation, options, seed=options.seed, sessions=options.cells
                )
                for way_cells, rates in zip(cells, both, strict=True):
                    way_cells.append(rates.detection_rate)
            for way, way_cells in zip((FLOAT32_WAY, BLOCKWISE_WAY), cells, strict=True):
                noise.append(NoiseRow(f"{precision}, {way}", tuple(way_cells)))
            print(f"noise table, {precision} declared", flush=True)
        tolerances = {
            f"{p}, {FLOAT32_WAY}": str(TOLERANCES[split_precision(p)[0]]) for p in options.declared
        }
        tolerances |= {f"{d}, {BLOCKWISE_WAY}": str(BLOCK_TOLERANCES[d]) for d in options.declared}
        return MatchedResult(
            options=options,
            model=path.name,
            span=(span.start, span.end),
            hidden_size=span.hidden_size,
            tolerances=tolerances,
            rows=tuple(rows),
            noise_scales=NOISE_SCALES,
            noise=tuple(noise),
            provenance=clock.provenance(),
        )


def matched_tables(result: MatchedResult) -> str:
    """The 16-bit matrix (a line per variation: both ways side by side), its rows in `report`'s
    format (a table per way) and the noise table, as markdown."""
    from report import calibration_tables_of, sixteen_bit_table

    pairs = list(zip(result.rows[::2], result.rows[1::2], strict=True))
    lines = [f"- {way}: `{t}`" for way, t in result.tolerances.items()]
    lines += ["", sixteen_bit_table(pairs, FLOAT32_WAY, BLOCKWISE_WAY), ""]
    lines += [calibration_tables_of(result.rows), ""]
    lines.append(
        "| declared, audit | " + " | ".join(f"noise {s:g}" for s in result.noise_scales) + " |"
    )
    lines.append("|---" * (len(result.noise_scales) + 1) + "|")
    for row in result.noise:
        lines.append(f"| {row.declared} | " + " | ".join(f"{d:.0%}" for d in row.detection) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options, json_path = parse_main(Options, __doc__.splitlines()[0], argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    if options.dump:
        with loaded(options) as (_, _, span, head):
            dump(span, head, options)
        return
    from report import calibration_tables, calibration_tables_of

    if options.source:
        with loaded(options) as (_, _, span, _):
            print(f"# weights {checksum(span)}")
            rows = audit_dumped(span, Path(options.source))
            print()
            print(calibration_tables_of(rows))
        return
    if options.matched:
        matched = run_matched(options)
        print()
        print(matched_tables(matched))
        if json_path is not None:
            save_result(matched, json_path)
        return
    result = run(options)
    print()
    print(calibration_tables(result))
    if json_path is not None:
        save_result(result, json_path)


if __name__ == "__main__":
    main()
