"""Benchmark (not a test): what auditing costs, and how fast cheating is caught.

1. Cost. For a decode step at context length L (prompt + tokens so far) through a span of
   `--model` (default: blocks 0-10 of the real SmolLM2-135M-Instruct), the node's cost to serve
   it — the span's cached decode step plus the leaf's hashes, sketch and EIP-712 receipt
   signature — against the verifier's cost to audit it — hashing every revealed input of the
   session (0..L), the Merkle checks, the span re-run in one float32 pass over all L
   positions, and the sketch comparison. The ratio grows with L (the verifier recomputes the
   whole prefix, once); at sample rate p the verifier spends p times that ratio per served step.
2. Detection. A node cheats on n leaves (1% output noise, float32 declared). Each leaf is
   sampled by the verifier's keyed hash (`verifier.sampling`, a fresh key and fresh batch
   roots per trial) and every sampled leaf's audit outcome is a real audit of a real cheated
   leaf of the same span (a pool served and audited in process, `verifier.calibration`).
   Measured: the share of trials in which at least one cheated leaf was caught, against
   1 - (1 - p d)^n with d the measured per-leaf detection rate.

    .venv/bin/python benchmarks/bench_verifier.py [--model smollm2] [--blocks 0:10] [--trials 2000]
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    MODEL_HELP,
    SMOLLM2,
    BenchmarkError,
    Provenance,
    Spread,
    Stopwatch,
    bench_main,
    first_third,
    model_layers,
    option,
    parse_span,
    resolve_model,
)
from eth_account import Account

from ledger.contracts import Batch
from ledger.eip712 import Domain
from ledger.merkle import MerkleTree
from ledger.types import Address, BatchId, Leaf, ModelId, model_id
from node.blocks import Span, load_client_head, load_span
from node.cache import CacheManager
from node.commits import Receipts
from node.faults import FaultMode
from node.protocol import RevealedStep, RevealResponse
from node.sketch import Sketch, mask_hash, sketch
from node.tensors import tensor_hash
from verifier.audit import Opening, check_opening, judge, prove_leaf, recompute
from verifier.calibration import Variation, run_variation
from verifier.sampling import AuditKey

SCRIPT = "bench_verifier.py"
MODEL = ModelId(model_id("bench"))
NODE = Address("0x90F79bf6EB2c4F870365E785982E1f101E93b906")
COMMITMENTS = "0x1000000000000000000000000000000000000001"
LEAVES_PER_BATCH = 64


@dataclass(frozen=True)
class Options:
    """What `bench_verifier.py` measures and how often."""

    model: str = option(SMOLLM2, MODEL_HELP)
    blocks: str = option("", "START:END of the span served and audited (default: the first third)")
    threads: int = option(2, "torch threads of node and verifier")
    repeats: int = option(20, "timed runs of each step and each audit")
    contexts: tuple[int, ...] = option((16, 64, 256), "context lengths of the audited step")
    trials: int = option(2000, "simulated cheating nodes per detection cell")
    pool_sessions: int = option(30, "sessions of real cheated leaves audited (7 leaves each)")
    rates: tuple[float, ...] = option((0.01, 0.05, 0.1), "sample rates p")
    cheated_leaves: tuple[int, ...] = option((10, 50, 100, 500), "cheated leaves n")

    def __post_init__(self) -> None:
        for name in ("threads", "repeats", "trials", "pool_sessions"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.contexts or min(self.contexts) < 2:
            raise BenchmarkError(f"--contexts must be at least 2 tokens each, got {self.contexts}")
        if not self.rates or not all(0 < p <= 1 for p in self.rates):
            raise BenchmarkError(f"--rates must be in (0, 1], got {self.rates}")
        if not self.cheated_leaves or min(self.cheated_leaves) < 1:
            raise BenchmarkError(f"--cheated-leaves must be at least 1, got {self.cheated_leaves}")


QUICK = Options(repeats=3, contexts=(16, 32), trials=100, pool_sessions=3)


@dataclass(frozen=True)
class Cost:
    """Serving one decode step against auditing it, at one context length."""

    context: int  # tokens in the session up to and including the audited step
    node_ms: Spread  # over repeats
    audit_ms: Spread  # over repeats

    @property
    def ratio(self) -> float:
        return self.audit_ms.median / self.node_ms.median


@dataclass(frozen=True)
class Detection:
    """How often a node cheating on `leaves` leaves is caught at sample rate `rate`."""

    rate: float  # p
    leaves: int  # n
    measured: float  # share of trials with at least one cheated leaf caught
    expected: float  # 1 - (1 - p d)^n
    trials: int


@dataclass(frozen=True)
class VerifierBenchResult:
    """Audit cost against serving cost, and measured detection against the formula."""

    options: Options
    model: str
    layers: int
    span: tuple[int, int]
    hidden_size: int
    costs: tuple[Cost, ...]
    per_leaf_detection: float  # d: failed audits over cheated leaves in the pool
    pool_cheated: int  # cheated leaves audited for the pool
    detections: tuple[Detection, ...]
    provenance: Provenance


def times_ms(run: Callable[[], object], repeats: int) -> Spread:
    """Milliseconds of `repeats` calls of `run`, after one untimed call (lazy initialisation)."""
    run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1e3)
    return Spread.of(times)


def cost_at(span: Span, receipts: Receipts, context: int, repeats: int) -> Cost:
    """Node and verifier times for the decode step at position `context` of a session whose
    prompt is half the context and the rest decoded one token per step."""
    hidden_size = span.hidden_size
    generator = torch.Generator().manual_seed(context)
    hidden = torch.randn(1, context, hidden_size, generator=generator)
    mask = torch.ones(1, context, dtype=torch.long)
    prompt = context // 2
    bounds = [(0, prompt)] + [(t, t + 1) for t in range(prompt, context)]
    session = os.urandom(32)
    inputs, leaves, sketches = [], [], []
    with CacheManager(10 * context).open("s", span.kv_layout, batch=1, max_length=context) as c:
        for step, (a, b) in enumerate(bounds[:-1]):
            out = span.forward(hidden[:, a:b], mask[:, :b], c)
            inputs.append((hidden[:, a:b].contiguous(), mask[:, :b].contiguous()))
            leaf, committed = _leaf(session, step, hidden[:, a:b], out, mask[:, :b])
            leaves.append(leaf)
            sketches.append(committed)
        a, b = bounds[-1]
        last_in, last_mask = hidden[:, a:b].contiguous(), mask[:, :b].contiguous()
        length = c.length

        def serve() -> torch.Tensor:
            c._length = length  # noqa: SLF001 (re-run the same step: bench only)
            out = span.forward(last_in, last_mask, c)
            receipts.make_with_sketch(
                session_id=session, span=(span.start, span.end), step=len(bounds) - 1,
                tokens=1, hidden_in=last_in, hidden_out=out, mask=last_mask,
            )  # fmt: skip
            return out

        node_ms = times_ms(serve, repeats)
        out = serve()
    inputs.append((last_in, last_mask))
    leaf, committed = _leaf(session, len(bounds) - 1, last_in, out, last_mask)
    leaves.append(leaf)
    sketches.append(committed)
    hashes = [leaf.hash() for leaf in leaves]
    tree = MerkleTree(hashes)
    batch = Batch(BatchId(1), NODE, MODEL, tree.root, len(hashes), 0)
    opening = Opening(
        RevealResponse(
            [RevealedStep(leaf, 1, i, tree.proof(i)) for i, leaf in enumerate(leaves)],
            full=True,
            batch_leaves=hashes,
        ),
        [step_hidden for step_hidden, _ in inputs],
        last_mask,
        torch.cat([s.indices for s in sketches], dim=1),  # every step's, as nodes reveal them
        torch.cat([s.values for s in sketches], dim=1),
    )

    def audit() -> bool:
        proven = prove_leaf(opening, batch=batch, leaf_index=len(leaves) - 1)
        checked = check_opening(opening, proven, batches=lambda _: batch, hidden_size=hidden_size)
        again = recompute(span, checked.hidden, checked.mask, checked.last_tokens)
        return judge(checked.sketch, again, checked.dtype).passed

    if not audit():
        raise BenchmarkError(f"an honest leaf failed its audit at context {context}")
    return Cost(context, node_ms, times_ms(audit, max(3, repeats // 4)))


def _leaf(
    session: bytes, step: int, hidden: torch.Tensor, out: torch.Tensor, mask: torch.Tensor
) -> tuple[Leaf, Sketch]:
    """A step's leaf as a node commits it, and its sketch (with the step's mask columns)."""
    tokens = hidden.shape[0] * hidden.shape[1]
    committed = sketch(out, mask_hash=mask_hash(mask, hidden.shape[1]))
    leaf = Leaf(
        session, MODEL, 0, 1, step, tokens, tensor_hash(hidden), tensor_hash(out),
        committed.hash(), int(time.time()),
    )  # fmt: skip
    return leaf, committed


def detection(per_leaf: list[bool], rate: float, leaves: int, trials: int, seed: int) -> float:
    """Share of trials where a node cheating on `leaves` leaves is caught at least once."""
    generator = torch.Generator().manual_seed(seed)
    caught = 0
    for _ in range(trials):
        key = AuditKey.generate()
        hit = False
        remaining = leaves
        batch = 1
        while remaining and not hit:
            count = min(remaining, LEAVES_PER_BATCH)
            for _ in key.sample(31337, COMMITMENTS, batch, os.urandom(32), count, rate):
                pick = int(torch.randint(len(per_leaf), (1,), generator=generator))
                if per_leaf[pick]:
                    hit = True
                    break
            remaining -= count
            batch += 1
        caught += hit
    return caught / trials


def run(options: Options) -> VerifierBenchResult:
    """Time serving against auditing at each context, then simulate detection."""
    clock = Stopwatch(SCRIPT, options)
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory(prefix="bench-verifier-") as tmp:
        path = resolve_model(options.model, Path(tmp))
        layers = model_layers(path)
        start, end = parse_span(options.blocks, layers) if options.blocks else first_third(layers)
        span, head = load_span(path, start, end), load_client_head(path)
        receipts = Receipts(
            domain=Domain.slasher(31337, COMMITMENTS, os.urandom(32)),
            account=Account.create(),
            model_id=MODEL,
        )
        costs = []
        for context in options.contexts:
            print(f"cost at context {context} ...", flush=True)
            costs.append(cost_at(span, receipts, context, options.repeats))
        print(f"auditing {options.pool_sessions} sessions of cheated leaves ...", flush=True)
        pool_rates = run_variation(
            span, head, Variation("noise", fault=FaultMode.NOISE),
            sessions=options.pool_sessions, seed=11,
        )  # fmt: skip
    per_leaf = pool_rates.detection_rate
    failed, cheated = pool_rates.failed_cheated, pool_rates.cheated
    pool = [True] * failed + [False] * (cheated - failed)  # each real audit's outcome
    detections = []
    for rate in options.rates:
        for leaves in options.cheated_leaves:
            measured = detection(pool, rate, leaves, options.trials, seed=leaves)
            expected = 1 - (1 - rate * per_leaf) ** leaves
            detections.append(Detection(rate, leaves, measured, expected, options.trials))
    return VerifierBenchResult(
        options=options,
        model=path.name,
        layers=layers,
        span=(start, end),
        hidden_size=span.hidden_size,
        costs=tuple(costs),
        per_leaf_detection=per_leaf,
        pool_cheated=cheated,
        detections=tuple(detections),
        provenance=clock.provenance(),
    )


def main(argv: Sequence[str] | None = None) -> None:
    bench_main(Options, __doc__.split("\n\n")[0], argv, run, "verifier_tables")


if __name__ == "__main__":
    main()
