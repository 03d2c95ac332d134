"""The demo's story (`stakeswarm.story`, what `stakeswarm demo` runs on SmolLM2) on a tiny model:
its own Anvil, three real node processes splitting the blocks, the middle one cheating
(`--faulty low-precision`), a real verifier process auditing every committed leaf, and a paying
client generating in this process. The cheat is slashed, the honest nodes keep their stake,
every node redeems what the client paid it, the answer is the one the model gives, and no
process is left running; `stakeswarm demo` stops everything on Ctrl-C too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoTokenizer

from ledger.deployment import DeploymentParams
from ledger.types import Reason
from stakeswarm.story import StoryConfig, StoryError, StoryResult, default_fault, run_story
from stakeswarm.tiny_models import load_reference_model
from tests.integration.interrupt import sigint_reaches_it
from tests.integration.nodes import REPO_ROOT

pytestmark = pytest.mark.timeout(600)

PROMPT = "Hello swarm! A swarm of servers runs a tiny model."
NEW_TOKENS = 8
PRICE = "0.001"  # tokens per token per block


@dataclass
class Recorder:
    """A narrator that keeps what the story told."""

    stages: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    streamed: list[str] = field(default_factory=list)

    @contextmanager
    def stage(self, title: str) -> Iterator[Callable[[str], None]]:
        self.stages.append(title)
        yield lambda note: None

    def say(self, text: str) -> None:
        self.lines.append(text)

    def stream(self, text: str) -> None:
        self.streamed.append(text)


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if _running(p)}


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _left_running(workdir: Path, pids: dict[str, int]) -> list[str]:
    """Processes still running that the story started: in the process group of one it started,
    or with the run's directory on their command line."""
    groups = set(pids.values())
    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            in_group = os.getpgid(process.pid) in groups
        except (ProcessLookupError, PermissionError):
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        if (in_group or str(workdir) in cmdline) and _running(process):
            left.append(f"{process.pid}: {cmdline[:200]}")
    return left


@pytest.fixture(scope="module")
def played(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StoryResult, Recorder, set[int], Path]:
    workdir = tmp_path_factory.mktemp("story")
    recorder = Recorder()
    before = _descendants()
    config = StoryConfig(
        model_path=model_path,
        workdir=workdir,
        prompt=PROMPT,
        chat=False,  # the tiny tokenizer has no chat template
        max_new_tokens=NEW_TOKENS,
        sample_rate=1.0,
        commit_interval=1.0,
        price=PRICE,
    )
    result = run_story(config, recorder)
    return result, recorder, before, workdir


def test_the_cheat_is_slashed_and_the_honest_nodes_keep_their_stake(
    played: tuple[StoryResult, Recorder, set[int], Path],
) -> None:
    result, recorder, _, _ = played
    assert [n.span for n in result.nodes] == [(0, 2), (2, 4), (4, 6)]
    assert [n.cheat for n in result.nodes] == [None, "low-precision", None]
    cheat, honest = result.nodes[1], (result.nodes[0], result.nodes[2])
    # every node staked the minimum for its span
    for node in result.nodes:
        assert node.stake_before == DeploymentParams().min_stake_per_block * 2
    assert cheat.stake_after < cheat.stake_before
    assert cheat.slashed == sum(s.amount for s in result.slashes)
    assert result.slashes and {s.node for s in result.slashes} == {cheat.address}
    assert {s.reason for s in result.slashes} == {Reason.MISMATCH}
    for node in honest:
        assert node.stake_after == node.stake_before and node.slashed == 0
    assert result.verifier_bounty == sum(s.bounty_per_verifier for s in result.slashes) > 0
    # the user is told which node cheats and how
    assert any(
        "node-1" in line and "CHEATS: --faulty low-precision" in line for line in recorder.lines
    )


def test_every_node_is_paid_per_token_and_redeems_it(
    played: tuple[StoryResult, Recorder, set[int], Path],
) -> None:
    result, _, _, _ = played
    price_per_block = 10**15  # PRICE in base units
    for node in result.nodes:
        # the prompt, then one position per generated token but the last (never sent back)
        assert node.tokens == len(result.prompt_ids) + len(result.new_ids) - 1
        span = node.span[1] - node.span[0]
        assert node.paid == node.tokens * price_per_block * span
        assert node.earned == node.paid  # redeemed on-chain when the node shut down


def test_the_answer_is_the_models_and_was_streamed(
    played: tuple[StoryResult, Recorder, set[int], Path], model_path: Path
) -> None:
    result, recorder, _, _ = played
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert result.prompt_ids == prompt[0].tolist()
    assert "".join(recorder.streamed) == result.answer
    assert result.answer == tokenizer.decode(result.new_ids, skip_special_tokens=True)
    cheat = result.nodes[1]
    if cheat.tokens == 0:  # the route avoided the cheat: exactly the model's greedy answer
        reference = load_reference_model(model_path)
        with torch.no_grad():
            local = reference.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert result.new_ids == local[0, prompt.shape[1] :].tolist()
    else:  # through the cheat (bfloat16 compute): the generation still completes
        eos = tokenizer.eos_token_id
        assert len(result.new_ids) == NEW_TOKENS or result.new_ids[-1] == eos


def test_everything_is_stopped(played: tuple[StoryResult, Recorder, set[int], Path]) -> None:
    result, _, before, workdir = played
    assert set(result.pids) == {"chain", "node-0", "node-1", "node-2", "verifier-0"}
    assert set(result.exit_statuses) == {"node-0", "node-1", "node-2", "verifier-0"}
    # the honest nodes and the verifier shut down cleanly on SIGTERM
    for name in ("node-0", "node-2", "verifier-0"):
        assert result.exit_statuses[name] == 0, name
    assert _left_running(workdir, result.pids) == []
    assert _descendants() <= before  # the client's DHT and daemon are gone too
    assert not (workdir / "devnet" / "devnet.json").exists()


def test_a_bad_story_is_refused_before_anything_starts(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(StoryError, match="unknown cheat mode 'lazy'"):
        StoryConfig(model_path=model_path, workdir=tmp_path, fault="lazy")
    with pytest.raises(StoryError, match="faulty_node must be one of the nodes 0..2"):
        StoryConfig(model_path=model_path, workdir=tmp_path, faulty_node=3)
    with pytest.raises(StoryError, match="dtype must be one of float32, bfloat16, float16"):
        StoryConfig(model_path=model_path, workdir=tmp_path, dtype="int8")
    with pytest.raises(StoryError, match="a bfloat16 swarm's cheat is one of noise"):
        StoryConfig(model_path=model_path, workdir=tmp_path, dtype="bfloat16")  # low-precision


def test_a_bfloat16_story_slashes_the_node_adding_1_percent_noise(
    model_path: Path, tmp_path: Path
) -> None:
    """`stakeswarm demo --dtype bfloat16`: the swarm serves in bfloat16, the cheat is the noise
    a float32 pass over a bfloat16 node cannot see, and the blockwise audit slashes it."""
    recorder = Recorder()
    config = StoryConfig(
        model_path=model_path, workdir=tmp_path / "story", prompt=PROMPT, chat=False,
        max_new_tokens=NEW_TOKENS, sample_rate=1.0, commit_interval=1.0, price=PRICE,
        dtype="bfloat16", fault=default_fault("bfloat16"),
    )  # fmt: skip
    result = run_story(config, recorder)
    assert [n.cheat for n in result.nodes] == [None, "noise", None]
    assert result.slashes and {s.node for s in result.slashes} == {result.nodes[1].address}
    assert {s.reason for s in result.slashes} == {Reason.MISMATCH}
    for node in (result.nodes[0], result.nodes[2]):
        assert node.stake_after == node.stake_before and node.slashed == 0
    assert sum(line.count("in bfloat16") for line in recorder.lines) == 3  # one per node


def test_demo_command_stops_everything_on_ctrl_c(model_path: Path, tmp_path: Path) -> None:
    """`stakeswarm demo` on the tiny model, interrupted once its nodes serve: every process it
    started is stopped, the chain too, and it says so."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    output = tmp_path / "demo.log"
    with output.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "stakeswarm", "demo", "--model", str(model_path),
             "--home", str(tmp_path / "home"), "--no-chat", "--prompt", PROMPT,
             "--max-new-tokens", "400"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=sigint_reaches_it,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "asks:" not in output.read_text(errors="replace"):
            assert demo.poll() is None, output.read_text(errors="replace")
            assert time.monotonic() < deadline, output.read_text(errors="replace")
            time.sleep(0.5)
        workdir = tmp_path / "home" / "demo"
        assert _left_running(workdir, {}) != []  # the chain and the nodes are running
        demo.send_signal(signal.SIGINT)
        status = demo.wait(120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = output.read_text(errors="replace")
    assert status == 130, text
    assert "interrupted" in text and "local chain stopped" in text
    assert _left_running(workdir, {}) == []
