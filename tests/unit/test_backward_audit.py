"""Auditing a backward (`node.training`): the verifier recomputes the gradient a node sent
from the forward's input and the output gradient, and judges the node's committed backward
sketch against `BACKWARD_TOLERANCE`. Honest nodes pass whatever their thread count; a node that
adds noise to the gradient or skips a block fails on every leaf."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from node.blocks import Span, load_span
from node.sketch import backward_sketch, mask_hash
from stakeswarm.tiny_models import make_tiny_model
from verifier.audit import AuditSpans, CheckedInputs

TRIALS = 100  # leaves per cheat: every one must be caught (>= 99% detection per leaf)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("backward-audit"), "llama", 6)


@pytest.fixture(scope="module")
def verifier(model_path: Path) -> AuditSpans:
    return AuditSpans(load_span(model_path, 0, 3))


def leaf(span: Span, seed: int, cheat: str | None = None) -> CheckedInputs:
    """What a node serving `span` commits for one backward (cheating as told), as a verifier
    holds it once the reveal is checked."""
    generator = torch.Generator().manual_seed(seed)
    batch, tokens = 1 + seed % 2, 3 + seed % 5
    hidden = torch.randn(batch, tokens, 64, generator=generator)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    if batch == 2:
        mask[1, : tokens // 2] = 0  # a left-padded row
    # the gradient of a loss: small, as real ones are
    grad_output = torch.randn(batch, tokens, 64, generator=generator) * 1e-4
    grad_input = span.backward(hidden, mask, grad_output)
    if cheat == "noise":  # 1% of the gradient's spread, everywhere
        grad_input = grad_input + 0.01 * grad_input.std() * torch.randn(
            grad_input.shape, generator=generator
        )
    committed = backward_sketch(grad_input, mask_hash=mask_hash(mask, tokens))
    return CheckedInputs(
        hidden=torch.cat([hidden, grad_output], dim=1),
        mask=torch.cat([mask, mask], dim=1),
        last_tokens=tokens,
        step_tokens=(tokens, tokens),
        dtype="float32",
        sketch=committed,
        hiddens=(hidden, grad_output),
        exponent=committed.exponent,
    )


def test_honest_backwards_pass_whatever_the_node_s_thread_count(
    model_path: Path, verifier: AuditSpans
) -> None:
    node = load_span(model_path, 0, 3)
    threads = torch.get_num_threads()
    worst = 0.0
    try:
        for seed in range(TRIALS):
            torch.set_num_threads(1 + seed % 2)
            judgement = verifier.audit(leaf(node, seed))
            torch.set_num_threads(threads)
            assert judgement.passed, judgement.failures
            worst = max(worst, judgement.measured["worst_rel_error"])
    finally:
        torch.set_num_threads(threads)
    assert worst <= 2**-11  # the sketch's own float16 rounding, no more


@pytest.mark.parametrize("cheat", ["noise", "skipped block"])
def test_a_cheating_backward_fails_its_audit(
    model_path: Path, verifier: AuditSpans, cheat: str
) -> None:
    # skipping block 2: the node runs blocks 0 and 1 only and sends that gradient
    node = load_span(model_path, 0, 2) if cheat == "skipped block" else load_span(model_path, 0, 3)
    caught = sum(
        not verifier.audit(leaf(node, seed, cheat if cheat == "noise" else None)).passed
        for seed in range(TRIALS)
    )
    assert caught == TRIALS
