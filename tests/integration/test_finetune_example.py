"""examples/finetune_prompt.py as a reader runs it (docs/finetune.md), on the tiny model: it
starts its own devnet and two nodes, measures held-out accuracy, trains soft prompts and a
head through the swarm for a few steps, says what it paid, saves what it trained, and stops
everything it started. (The accuracy it reaches is SmolLM2's to show: docs/benchmarks.md.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.integration.nodes import REPO_ROOT

pytestmark = pytest.mark.timeout(600)


def test_the_example_trains_through_a_swarm_it_starts_and_saves_what_it_trained(
    tmp_path: Path,
) -> None:
    out = tmp_path / "prompt.safetensors"
    done = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "examples" / "finetune_prompt.py"),
            "--model", "tiny", "--steps", "2", "--quiet", "--out", str(out),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = " ".join(done.stdout.split())
    before = re.search(r"accuracy before training: ([\d.]+)%", text)
    after = re.search(r"accuracy after 2 steps: ([\d.]+)%", text)
    paid = re.search(r"training paid ([\d.]+) SWARM", text)
    assert before and after and paid, text
    assert float(paid.group(1)) > 0  # the servers were paid for the training steps
    saved = load_file(str(out))
    assert set(saved) == {"prompts.embeddings", "score.weight"}
    assert list(saved["prompts.embeddings"].shape) == [4, 64]
    assert list(saved["score.weight"].shape) == [2, 64]
