"""A node process that serves a third of a model holds about a third of its weights in memory,
not the whole model: `load_span` reads only its blocks from disk."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from stakeswarm.tiny_models import make_tiny_model

HIDDEN = 1024
LAYERS = 12

# Runs in a fresh interpreter, like `stakeswarm node serve`: import the node's code, note the
# resident memory, load the span, serve one forward, and report.
NODE_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import psutil, torch
    from node.blocks import load_span

    path, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    process = psutil.Process()
    baseline = process.memory_info().rss
    span = load_span(path, start, end)
    hidden = span.forward(torch.randn(1, 8, span.hidden_size))
    gc.collect()
    print(json.dumps({
        "baseline": baseline,
        "rss": process.memory_info().rss,
        "span_bytes": sum(p.numel() * p.element_size() for p in span.parameters()),
        "output_shape": list(hidden.shape),
        "finite": bool(torch.isfinite(hidden).all()),
    }))
    """
)


def test_a_node_serving_a_third_of_the_model_holds_a_third_of_it(tmp_path: Path) -> None:
    path = make_tiny_model(
        tmp_path,
        "llama",
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        intermediate_size=2816,
        num_heads=16,
        num_kv_heads=8,
        vocab_size=1024,
        shards=4,
        with_tokenizer=False,
        name="larger-llama",
    )
    model_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    assert model_bytes > 500 * 2**20

    start, end = LAYERS // 3, 2 * LAYERS // 3
    result = subprocess.run(
        [sys.executable, "-c", NODE_SCRIPT, str(path), str(start), str(end)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["output_shape"] == [1, 8, HIDDEN] and report["finite"]

    grown = report["rss"] - report["baseline"]
    # the span's weights really are resident (this measures the right thing) ...
    assert report["span_bytes"] > 0.3 * model_bytes
    assert grown > 0.9 * report["span_bytes"]
    # ... and the rest of the model is not
    assert grown < 0.5 * model_bytes, (
        f"node grew by {grown / 2**20:.0f} MiB serving blocks [{start}, {end}) "
        f"of a {model_bytes / 2**20:.0f} MiB model"
    )
