"""Auditing a backward (`node.training`): the verifier recomputes the gradient a node sent
from the forward's input and the output gradient, and judges the node's committed backward
sketch against `BACKWARD_TOLERANCE`. Honest nodes pass whatever their thread count; a node that
adds noise to the gradient or skips a block fails on every leaf. With deep prompts (protocol
9) the same holds, the prompts' gradient is judged against `PROMPTS_GRAD_TOLERANCE`, and a
forward that ignores the prompts fails its audit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from node.blocks import Span, load_span
from node.sketch import backward_sketch, mask_hash, sketch
from node.tensors import tensor_hash
from stakeswarm.tiny_models import make_tiny_model
from verifier.audit import AuditSpans, CheckedInputs

TRIALS = 100  # leaves per cheat: every one must be caught (>= 99% detection per leaf)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("backward-audit"), "llama", 6)


@pytest.fixture(scope="module")
def verifier(model_path: Path) -> AuditSpans:
    return AuditSpans(load_span(model_path, 0, 3))


def inputs(seed: int, blocks: int = 3) -> tuple[torch.Tensor, ...]:
    """A training batch: hidden states, mask, output gradient and deep prompts."""
    generator = torch.Generator().manual_seed(seed)
    batch, tokens = 1 + seed % 2, 3 + seed % 5
    hidden = torch.randn(batch, tokens, 64, generator=generator)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    if batch == 2:
        mask[1, : tokens // 2] = 0  # a left-padded row
    # the gradient of a loss: small, as real ones are
    grad_output = torch.randn(batch, tokens, 64, generator=generator) * 1e-4
    prompts = torch.randn(blocks, 1 + seed % 3, 64, generator=generator) * 0.5
    return hidden, mask, grad_output, prompts


def noise(tensor: torch.Tensor, seed: int) -> torch.Tensor:
    """`tensor` with noise of 1% of its spread everywhere."""
    generator = torch.Generator().manual_seed(seed + 1000)
    return tensor + 0.01 * tensor.std() * torch.randn(tensor.shape, generator=generator)


def leaf(span: Span, seed: int, cheat: str | None = None, deep: bool = False) -> CheckedInputs:
    """What a node serving `span` commits for one backward (cheating as told), with deep
    prompts or not, as a verifier holds it once the reveal is checked."""
    hidden, mask, grad_output, prompts = inputs(seed)
    tokens = hidden.shape[1]
    used = prompts[: span.num_blocks] if deep and cheat != "ignored prompts" else None
    grad_input, grad_prompts = span.backward(hidden, mask, grad_output, used)
    if cheat == "noise":
        grad_input = noise(grad_input, seed)
    if deep and grad_prompts is None:  # it sends something of the right shape
        grad_prompts = torch.zeros_like(prompts)
    elif deep and grad_prompts is not None and grad_prompts.shape != prompts.shape:
        grad_prompts = torch.cat([grad_prompts, torch.zeros_like(prompts[grad_prompts.shape[0] :])])
    if cheat == "prompts noise":
        assert grad_prompts is not None
        grad_prompts = noise(grad_prompts, seed)
    committed = backward_sketch(
        grad_input,
        mask_hash=mask_hash(mask, tokens),
        prompts_hash=tensor_hash(prompts) if deep else None,
        prompts_grad_hash=tensor_hash(grad_prompts) if grad_prompts is not None else None,
    )
    return CheckedInputs(
        hidden=torch.cat([hidden, grad_output], dim=1),
        mask=torch.cat([mask, mask], dim=1),
        last_tokens=tokens,
        step_tokens=(tokens, tokens),
        dtype="float32",
        sketch=committed,
        hiddens=(hidden, grad_output),
        exponent=committed.exponent,
        prompts=prompts if deep else None,
        prompts_grad=grad_prompts if deep else None,
    )


def forward_leaf(span: Span, seed: int, cheat: str | None = None) -> CheckedInputs:
    """What a node serving `span` commits for one training forward with deep prompts."""
    hidden, mask, _, prompts = inputs(seed)
    tokens = hidden.shape[1]
    output = span.forward(hidden, mask, prompts=None if cheat == "ignored prompts" else prompts)
    committed = sketch(output, mask_hash=mask_hash(mask, tokens), prompts_hash=tensor_hash(prompts))
    return CheckedInputs(
        hidden=hidden,
        mask=mask,
        last_tokens=tokens,
        step_tokens=(tokens,),
        dtype="float32",
        sketch=committed,
        hiddens=(hidden,),
        prompts=prompts,
    )


@pytest.mark.parametrize("deep", [False, True], ids=["plain", "deep prompts"])
def test_honest_backwards_pass_whatever_the_node_s_thread_count(
    model_path: Path, verifier: AuditSpans, deep: bool
) -> None:
    node = load_span(model_path, 0, 3)
    threads = torch.get_num_threads()
    worst = worst_prompts = 0.0
    try:
        for seed in range(TRIALS):
            torch.set_num_threads(1 + seed % 2)
            judgement = verifier.audit(leaf(node, seed, deep=deep))
            torch.set_num_threads(threads)
            assert judgement.passed, judgement.failures
            worst = max(worst, judgement.measured["worst_rel_error"])
            worst_prompts = max(worst_prompts, judgement.measured.get("prompts_grad_error", 0))
    finally:
        torch.set_num_threads(threads)
    assert worst <= 2**-11  # the sketch's own float16 rounding, no more
    assert worst_prompts < 1e-5  # float32 rounding only, far under the tolerance


@pytest.mark.parametrize(
    ("cheat", "deep"),
    [
        ("noise", False),
        ("skipped block", False),
        ("noise", True),
        ("skipped block", True),
        ("prompts noise", True),
        ("ignored prompts", True),
    ],
)
def test_a_cheating_backward_fails_its_audit(
    model_path: Path, verifier: AuditSpans, cheat: str, deep: bool
) -> None:
    # skipping block 2: the node runs blocks 0 and 1 only and sends that gradient
    node = load_span(model_path, 0, 2) if cheat == "skipped block" else load_span(model_path, 0, 3)
    caught = sum(
        not verifier.audit(
            leaf(node, seed, None if cheat == "skipped block" else cheat, deep)
        ).passed
        for seed in range(TRIALS)
    )
    assert caught == TRIALS


def test_a_training_forward_with_deep_prompts_is_audited_with_them(
    model_path: Path, verifier: AuditSpans
) -> None:
    node = load_span(model_path, 0, 3)
    for seed in range(TRIALS // 4):
        honest = verifier.audit(forward_leaf(node, seed))
        assert honest.passed, honest.failures
        assert not verifier.audit(forward_leaf(node, seed, "ignored prompts")).passed
