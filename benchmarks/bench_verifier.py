"""Benchmark (not a test): what auditing costs, and how fast cheating is caught.

1. Cost. For a decode step at context length L (prompt + tokens so far) through a span of a
   random Llama with SmolLM2-135M's shape, the node's cost to serve it — the span's cached
   decode step plus the leaf's hashes, sketch and EIP-712 receipt signature — against the
   verifier's cost to audit it — hashing every revealed input of the session (0..L), the
   Merkle checks, the span re-run in one float32 pass over all L positions, and the sketch
   comparison. The ratio grows with L (the verifier recomputes the whole prefix, once); at
   sample rate p the verifier spends p times that ratio per served step.
2. Detection. A node cheats on n leaves (1% output noise, float32 declared). Each leaf is
   sampled by the verifier's keyed hash (`verifier.sampling`, a fresh key and fresh batch
   roots per trial) and every sampled leaf's audit outcome is a real audit of a real cheated
   leaf (a pool served and audited in process, `verifier.calibration`). Measured: the share
   of trials in which at least one cheated leaf was caught, against 1 - (1 - p d)^n with d
   the measured per-leaf detection rate.

    .venv/bin/python benchmarks/bench_verifier.py [--blocks 10] [--threads 2] [--trials 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eth_account import Account  # noqa: E402

from ledger.contracts import Batch  # noqa: E402
from ledger.eip712 import Domain  # noqa: E402
from ledger.merkle import MerkleTree  # noqa: E402
from ledger.types import Address, BatchId, Leaf, ModelId, model_id  # noqa: E402
from node.blocks import Span, load_client_head, load_span  # noqa: E402
from node.cache import CacheManager  # noqa: E402
from node.commits import Receipts  # noqa: E402
from node.faults import FaultMode  # noqa: E402
from node.protocol import RevealedStep, RevealResponse  # noqa: E402
from node.sketch import sketch  # noqa: E402
from node.tensors import tensor_hash  # noqa: E402
from tests.models import make_tiny_model  # noqa: E402
from verifier.audit import Opening, check_opening, judge, prove_leaf, recompute  # noqa: E402
from verifier.calibration import Variation, run_variation  # noqa: E402
from verifier.sampling import AuditKey  # noqa: E402

CONTEXTS = (16, 64, 256)
RATES = (0.01, 0.05, 0.1)
CHEATED_LEAVES = (10, 50, 100, 500)
MODEL = ModelId(model_id("bench"))
NODE = Address("0x90F79bf6EB2c4F870365E785982E1f101E93b906")
COMMITMENTS = "0x1000000000000000000000000000000000000001"


def median_ms(run, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def cost_at(span: Span, receipts: Receipts, context: int, repeats: int) -> tuple[float, float]:
    """(node ms, verifier ms) for the decode step at position `context` of a session whose
    prompt is half the context and the rest decoded one token per step."""
    hidden_size = span.hidden_size
    generator = torch.Generator().manual_seed(context)
    hidden = torch.randn(1, context, hidden_size, generator=generator)
    mask = torch.ones(1, context, dtype=torch.long)
    prompt = context // 2
    bounds = [(0, prompt)] + [(t, t + 1) for t in range(prompt, context)]
    session = os.urandom(32)
    inputs, leaves = [], []
    with CacheManager(10 * context).open("s", span.kv_layout, batch=1, max_length=context) as c:
        for step, (a, b) in enumerate(bounds[:-1]):
            out = span.forward(hidden[:, a:b], mask[:, :b], c)
            inputs.append((hidden[:, a:b].contiguous(), mask[:, :b].contiguous()))
            leaves.append(_leaf(session, step, hidden[:, a:b], out))
        a, b = bounds[-1]
        last_in, last_mask = hidden[:, a:b].contiguous(), mask[:, :b].contiguous()
        length = c.length

        def serve() -> torch.Tensor:
            c._length = length  # noqa: SLF001 (re-run the same step: bench only)
            out = span.forward(last_in, last_mask, c)
            receipts.make_with_sketch(
                session_id=session, span=(span.start, span.end), step=len(bounds) - 1,
                tokens=1, hidden_in=last_in, hidden_out=out,
            )  # fmt: skip
            return out

        node_ms = median_ms(serve, repeats)
        out = serve()
    inputs.append((last_in, last_mask))
    leaves.append(_leaf(session, len(bounds) - 1, last_in, out))
    hashes = [leaf.hash() for leaf in leaves]
    tree = MerkleTree(hashes)
    batch = Batch(BatchId(1), NODE, MODEL, tree.root, len(hashes), context, 0)
    committed = sketch(out)
    opening = Opening(
        RevealResponse(
            [RevealedStep(leaf, 1, tree.proof(i)) for i, leaf in enumerate(leaves)],
            full=True,
            batch_leaves=hashes,
        ),
        inputs,
        committed.indices,
        committed.values,
    )

    def audit() -> bool:
        proven = prove_leaf(opening, batch=batch, leaf_index=len(leaves) - 1)
        checked = check_opening(opening, proven, batches=lambda _: batch, hidden_size=hidden_size)
        again = recompute(span, checked.hidden, checked.mask, checked.last_tokens)
        return judge(checked.sketch, again, checked.dtype).passed

    assert audit(), "an honest leaf must pass its audit"
    return node_ms, median_ms(audit, max(3, repeats // 4))


def _leaf(session: bytes, step: int, hidden: torch.Tensor, out: torch.Tensor) -> Leaf:
    tokens = hidden.shape[0] * hidden.shape[1]
    return Leaf(
        session, MODEL, 0, 1, step, tokens, tensor_hash(hidden), tensor_hash(out),
        sketch(out).hash(),
    )  # fmt: skip


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
            count = min(remaining, 64)  # leaves per committed batch
            for _ in key.sample(31337, COMMITMENTS, batch, os.urandom(32), count, rate):
                pick = int(torch.randint(len(per_leaf), (1,), generator=generator))
                if per_leaf[pick]:
                    hit = True
                    break
            remaining -= count
            batch += 1
        caught += hit
    return caught / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10, help="span length (of 30)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--pool-sessions", type=int, default=30, help="cheated leaves / 7")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model(
            Path(tmp), "llama", 30, hidden_size=576, intermediate_size=1536, num_heads=9,
            num_kv_heads=3, vocab_size=4096, initializer_range=0.02, with_tokenizer=False,
        )  # fmt: skip
        span = load_span(path, 0, args.blocks)
        receipts = Receipts(
            domain=Domain.slasher(31337, COMMITMENTS),
            account=Account.create(),
            model_id=MODEL,
        )
        print(
            f"# cost: random Llama, SmolLM2-135M shape, blocks [0, {args.blocks}), float32, "
            f"{args.threads} torch threads, batch 1, CPU; medians of {args.repeats} runs"
        )
        print()
        print("| context | node: serve one step | verifier: audit it | ratio | at p=0.05 |")
        print("|---|---|---|---|---|")
        for context in CONTEXTS:
            node_ms, audit_ms = cost_at(span, receipts, context, args.repeats)
            ratio = audit_ms / node_ms
            print(
                f"| {context} | {node_ms:.1f} ms | {audit_ms:.1f} ms | {ratio:.1f}x | "
                f"{0.05 * ratio:.2f}x |",
                flush=True,
            )

        tiny = make_tiny_model(Path(tmp) / "tiny", "llama", 6, with_tokenizer=False)
        pool_span, head = load_span(tiny, 0, 3), load_client_head(tiny)
        rates = run_variation(
            pool_span,
            head,
            Variation("noise", fault=FaultMode.NOISE),
            sessions=args.pool_sessions,
            seed=11,
        )
        per_leaf = rates.detection_rate
        # the pool: each cheated leaf's real audit outcome, in proportion
        failed, cheated = rates.failed_cheated, rates.cheated
        pool = [True] * failed + [False] * (cheated - failed)
        print()
        print(
            f"# detection: 1% output noise, float32 declared (tiny Llama, blocks [0, 3)); "
            f"per-leaf detection d = {per_leaf:.3f} over {cheated} audited cheated leaves; "
            f"{args.trials} trials per cell, keyed sampling with a fresh key per trial"
        )
        print()
        print("| p | n | measured | 1 - (1 - p d)^n |")
        print("|---|---|---|---|")
        for rate in RATES:
            for leaves in CHEATED_LEAVES:
                measured = detection(pool, rate, leaves, args.trials, seed=leaves)
                expected = 1 - (1 - rate * per_leaf) ** leaves
                print(f"| {rate:g} | {leaves} | {measured:.3f} | {expected:.3f} |", flush=True)


if __name__ == "__main__":
    main()
