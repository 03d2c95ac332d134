"""Calibration of the verifier's thresholds (not a test): false positives and detection.

Simulated nodes (`verifier.calibration`) serve random sessions — a prefill, then one token
per step through a KV cache — honestly in several ways, or with each compute cheat of
`node.faults`; the verifier audits every leaf exactly as `stakeswarm verifier run` does (one
float32 pass on the CPU over the session's inputs up to the leaf, judged with
`verifier/thresholds.py` for the dtype the node declared). Printed per variation: leaves
audited, cheated leaves, the false-positive rate over honest leaves, the detection rate over
cheated leaves, and the extremes of what was measured; then how much noise each declared dtype
lets through.

Honest variations: node threads (2) against the verifier's (1), cached steps against one
pass, the session computed in a batch with other sessions, float16 / bfloat16 nodes that
declare it, and (with --device cuda) another machine's arithmetic.

    .venv/bin/python benchmarks/calibrate.py                       # tiny random Llama, fast
    .venv/bin/python benchmarks/calibrate.py --model smollm2 --blocks 0:10 --sessions 20
    .venv/bin/python benchmarks/calibrate.py --model PATH --device cuda   # nodes on a GPU

Nodes on another machine (a GPU machine without the verifier's chain dependencies): serve
there with `--dump DIR` (saves every variation's sessions, inputs and outputs, in one
safetensors file, and prints a checksum of the model's weights), then audit here with
`--from FILE` (the same --model, rebuilt from its seed: the checksums must agree).

    python3 benchmarks/calibrate.py --model random576 --device cuda --dump out/   # there
    .venv/bin/python benchmarks/calibrate.py --model random576 \\
        --from out/sessions-random576.safetensors                                 # here
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from safetensors.torch import load_file, save_file  # noqa: E402

from node.blocks import ClientHead, Span, load_client_head, load_span  # noqa: E402
from node.faults import FaultMode  # noqa: E402
from verifier.calibration import (  # noqa: E402
    HONEST,
    Rates,
    SimulatedNode,
    Variation,
    audit_leaf,
    cheats,
    leaves_from,
    run_variation,
    session_inputs,
    step_bounds,
)
from verifier.thresholds import TOLERANCES  # noqa: E402

NOISE_SCALES = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


# What a GPU machine serves in --dump mode: the honest variations that matter across hardware,
# TF32 matmuls (lower precision than float32: PyTorch leaves them off by default), two cheats.
DUMPED: tuple[Variation, ...] = (
    Variation("float32"),
    Variation("float32, batched with 2 other sessions", strangers=2),
    Variation("float32, TF32 matmuls"),
    Variation("float16 declared", declared="float16"),
    Variation("bfloat16 declared", declared="bfloat16"),
    Variation("noise (float32 declared)", fault=FaultMode.NOISE),
    Variation("low-precision (float32 declared)", fault=FaultMode.LOW_PRECISION),
)


def model_folder(choice: str, workdir: Path) -> Path:
    if choice == "tiny":
        from tests.models import make_tiny_model

        return make_tiny_model(workdir, "llama", 6, with_tokenizer=False)
    if choice == "random576":  # SmolLM2-135M's width and heads, 10 blocks, HF's init
        from tests.models import make_tiny_model

        return make_tiny_model(
            workdir, "llama", 10, hidden_size=576, intermediate_size=1536, num_heads=9,
            num_kv_heads=3, vocab_size=4096, initializer_range=0.02, with_tokenizer=False,
        )  # fmt: skip
    if choice == "smollm2":
        from stakeswarm.home import Home
        from stakeswarm.models import prepare_smollm2

        return prepare_smollm2(Home.resolve().root / "models", lambda m: print(f"# {m}"))
    return Path(choice)


def row(rates: Rates) -> str:
    w = rates.worst
    detection = "-" if rates.cheated == 0 else f"{rates.detection_rate:.1%}"
    return (
        f"| {rates.variation.name} | {rates.leaves} | {rates.cheated} | "
        f"{rates.false_positive_rate:.1%} | {detection} | {w['min_overlap']:.3f} | "
        f"{w['min_mean_rel_error']:.2e} .. {w['max_mean_rel_error']:.2e} | "
        f"{w['min_worst_rel_error']:.2e} .. {w['max_worst_rel_error']:.2e} |"
    )


def checksum(span: Span) -> str:
    """A short digest of the span's weights (both machines must build the same model)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(span.layers.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")[:60]


def dump(span: Span, head: ClientHead, args: argparse.Namespace) -> None:
    """Serve every `DUMPED` variation on --device; save the sessions in one file under --dump
    (keys `<variation>.<session>.<what>`)."""
    out = Path(args.dump)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# weights {checksum(span)}; device {args.device}")
    tensors: dict[str, torch.Tensor] = {}
    for index, variation in enumerate(DUMPED):
        torch.backends.cuda.matmul.allow_tf32 = "TF32" in variation.name
        generator = torch.Generator().manual_seed(args.seed + index)
        node = SimulatedNode(span, variation, seed=args.seed + index, device=args.device)
        for i in range(args.sessions):
            hidden, mask, prompt = session_inputs(head, generator, new_tokens=args.new_tokens)
            inputs, outputs, cheated = node.serve(hidden, mask, prompt)
            key = f"{index}.{i}"
            tensors[f"{key}.hidden"] = torch.cat([h for h, _ in inputs], dim=1)
            tensors[f"{key}.mask"] = inputs[-1][1]
            tensors[f"{key}.prompt"] = torch.tensor([prompt])
            tensors[f"{key}.cheated"] = torch.tensor(cheated)
            for step, output in enumerate(outputs):
                tensors[f"{key}.out{step}"] = output.contiguous()
        print(f"# served {variation.name}: {args.sessions} sessions", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    metadata = {
        "device": args.device,
        "variations": json.dumps([[v.name, v.declared] for v in DUMPED]),
    }
    save_file(tensors, str(out / f"sessions-{args.model_label}.safetensors"), metadata)


def audit_dumped(span: Span, path: Path) -> None:
    """Audit the sessions a --dump saved, on this machine's CPU."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    for index, (name, declared) in enumerate(json.loads(metadata["variations"])):
        variation = Variation(f"{name}, on {metadata['device']}", declared=declared)
        rates = Rates(variation)
        sessions = sorted({int(k.split(".")[1]) for k in tensors if k.startswith(f"{index}.")})
        for i in sessions:
            key = f"{index}.{i}"
            hidden, mask = tensors[f"{key}.hidden"], tensors[f"{key}.mask"]
            bounds = step_bounds(int(tensors[f"{key}.prompt"][0]), hidden.shape[1])
            inputs = [(hidden[:, a:b].contiguous(), mask[:, :b].contiguous()) for a, b in bounds]
            outputs = [tensors[f"{key}.out{step}"] for step in range(len(bounds))]
            cheated = [bool(c) for c in tensors[f"{key}.cheated"]]
            for leaf in leaves_from(inputs, outputs, cheated):
                rates.add(leaf, audit_leaf(span, leaf, declared))
        print(row(rates), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2 or a model folder")
    parser.add_argument("--blocks", default=None, help="START:END (default: the first half)")
    parser.add_argument("--sessions", type=int, default=20, help="sessions per variation")
    parser.add_argument("--new-tokens", type=int, default=6, help="decode steps per session")
    parser.add_argument("--device", default="cpu", help="where the simulated nodes compute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump", default=None, help="serve only, saving sessions here")
    parser.add_argument("--from", dest="source", default=None, help="audit a --dump")
    args = parser.parse_args()
    args.model_label = slug(Path(args.model).name)

    with tempfile.TemporaryDirectory() as tmp:
        path = model_folder(args.model, Path(tmp))
        from node.families import load_config

        total = int(load_config(path).num_hidden_layers)
        start, end = map(int, args.blocks.split(":")) if args.blocks else (0, max(1, total // 2))
        torch.set_num_threads(2)
        span, head = load_span(path, start, end), load_client_head(path)
        if args.dump:
            dump(span, head, args)
            return
        print(
            f"# model {path.name}, blocks [{start}, {end}) of {total}, hidden "
            f"{span.hidden_size}; nodes on {args.device}, verifier on cpu; "
            f"{args.sessions} sessions x (1 prefill + {args.new_tokens} decode steps), "
            f"batch 1-3, prompt 4-16 with left padding; torch {torch.__version__}"
        )
        for dtype, tolerance in TOLERANCES.items():
            print(f"# {dtype}: {tolerance}")
        print()
        print(
            "| variation | leaves | cheated | false positives | detection | min overlap | "
            "mean rel. error | worst rel. error |"
        )
        print("|---|---|---|---|---|---|---|---|")
        if args.source:
            print(f"# weights {checksum(span)}")
            audit_dumped(span, Path(args.source))
            return
        variations: list[Variation] = [*HONEST, *cheats("float32"), *cheats("bfloat16")]
        if args.device != "cpu":
            variations = [replace(v, name=f"{v.name}, on {args.device}") for v in variations]
        began = time.perf_counter()
        for index, variation in enumerate(variations):
            rates = run_variation(
                span,
                head,
                variation,
                sessions=args.sessions,
                seed=args.seed + index,
                new_tokens=args.new_tokens,
                device=args.device,
            )
            print(row(rates), flush=True)

        print()
        print("noise the audit lets through, by declared dtype (detection per noised leaf):")
        print()
        print("| declared | " + " | ".join(f"noise {s:g}" for s in NOISE_SCALES) + " |")
        print("|---|" + "---|" * len(NOISE_SCALES))
        for dtype in ("float32", "float16", "bfloat16"):
            cells = []
            for scale in NOISE_SCALES:
                variation = Variation(f"noise {scale:g}", dtype, FaultMode.NOISE, noise_scale=scale)
                rates = run_variation(
                    span,
                    head,
                    variation,
                    sessions=max(4, args.sessions // 4),
                    seed=args.seed,
                    new_tokens=args.new_tokens,
                    device=args.device,
                )
                cells.append(f"{rates.detection_rate:.0%}")
            print(f"| {dtype} | " + " | ".join(cells) + " |", flush=True)
        print(f"\n# {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
