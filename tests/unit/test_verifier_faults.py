"""The cheat modes of `node.faults`: each one really computes something else than an honest
node (or, for equivocate, serves a step twice; for withhold, refuses reveals), and an honest
node is untouched. Equivocation and withholding change the handler: real node processes show
them (tests/integration/test_verifier_misbehaviour.py, test_verifier_withheld.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account import Account

from ledger.eip712 import Domain, recover_receipt_signer
from ledger.types import model_id
from node.blocks import Span, load_span
from node.build import HONEST, Wrapping
from node.cache import CacheManager
from node.commits import Receipts
from node.config import ConfigError, NodeConfig
from node.faults import (
    FAULT_MODES,
    NOISE_SCALE,
    EquivocatingNode,
    FaultConfigError,
    WithholdingNode,
    perturb_weights,
    skipping_block,
    wrapping,
)
from node.handler import StakeswarmNode
from node.sessions import SpanViews
from node.sketch import mask_hash, sketch
from node.tensors import tensor_hash
from stakeswarm.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def span(tmp_path_factory: pytest.TempPathFactory) -> Span:
    path = make_tiny_model(tmp_path_factory.mktemp("faults"), "llama", 4, with_tokenizer=False)
    return load_span(path, 0, 4)


def inputs(seed: int = 0, tokens: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, tokens, 64, generator=generator), torch.ones(2, tokens, dtype=torch.long)


def test_modes_are_named_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    assert FAULT_MODES == (
        "noise", "skip-block", "wrong-weights", "low-precision", "stale", "equivocate",
        "withhold", "no-commit", "steer", "fail-after-payment",
    )  # fmt: skip
    with pytest.raises(FaultConfigError, match="unknown cheat mode 'lazy'"):
        wrapping("lazy")
    with pytest.raises(ConfigError, match="faulty must be one of"):
        NodeConfig(model_path=tmp_path, devnet=True, faulty="lazy")
    assert NodeConfig(model_path=tmp_path, devnet=True, faulty="noise").faulty == "noise"


def serving(span: Span, mode: str, seed: int = 0) -> tuple[Wrapping, Span]:
    """A node in `mode`: its wrapping and the whole span it computes with."""
    wrapped = wrapping(mode, seed=seed)
    views = wrapped.views(SpanViews(wrapped.span(span)))
    return wrapped, views.view(span.start, span.end)


def served(span: Span, mode: str, seed: int) -> tuple[Wrapping, torch.Tensor, torch.Tensor]:
    """A node in `mode` and, for the same stateless step, its output and the honest one."""
    hidden, mask = inputs()
    wrapped, faulty = serving(span, mode, seed)
    return wrapped, faulty.forward(hidden, mask), span.forward(hidden, mask)


def test_an_honest_node_is_built_from_its_parts_unchanged(span: Span) -> None:
    views = SpanViews(span)
    assert HONEST.span(span) is span and HONEST.views(views) is views
    assert HONEST.handler is StakeswarmNode


def test_noise_adds_noise_of_the_declared_scale(span: Span) -> None:
    _, noised, honest = served(span, "noise", seed=1)
    ratio = float((noised - honest).std() / honest.std())
    assert NOISE_SCALE * 0.8 < ratio < NOISE_SCALE * 1.2


def test_noise_reaches_every_sub_span_a_session_may_use(span: Span) -> None:
    hidden, mask = inputs()
    wrapped = wrapping("noise", seed=2)
    part = wrapped.views(SpanViews(span)).view(1, 3)
    honest = SpanViews(span).view(1, 3)
    assert (part.start, part.end) == (1, 3)
    assert not torch.allclose(part.forward(hidden, mask), honest.forward(hidden, mask))


def test_skip_block_is_the_span_without_its_middle_block(span: Span) -> None:
    hidden, mask = inputs()
    skipped = skipping_block(span)
    assert skipped.kv_layout == span.kv_layout  # sessions and caches work unchanged
    layers = span.layers
    three = Span(
        span.config, span.family, 0, 3, torch.nn.ModuleList([layers[0], layers[1], layers[3]]),
        span.rotary, span.dtype, span.device,
    )  # fmt: skip
    torch.testing.assert_close(skipped.forward(hidden, mask), three.forward(hidden, mask))
    assert not torch.allclose(skipped.forward(hidden, mask), span.forward(hidden, mask))
    _, served_skipped = serving(span, "skip-block")
    torch.testing.assert_close(served_skipped.forward(hidden, mask), three.forward(hidden, mask))


def test_wrong_weights_differ_a_little_and_leave_the_honest_span_alone(span: Span) -> None:
    before = [p.clone() for p in span.layers.parameters()]
    perturbed = perturb_weights(span, seed=3)
    for original, kept in zip(span.layers.parameters(), before, strict=True):
        assert torch.equal(original, kept)
    hidden, mask = inputs()
    honest, wrong = span.forward(hidden, mask), perturbed.forward(hidden, mask)
    relative = float((wrong - honest).abs().mean() / honest.abs().mean())
    assert 1e-3 < relative < 0.2


def test_low_precision_computes_in_bfloat16_and_answers_in_float32(span: Span) -> None:
    hidden, mask = inputs()
    _, faulty = serving(span, "low-precision")
    out = faulty.forward(hidden, mask)
    assert out.dtype == torch.float32
    honest = span.forward(hidden, mask)
    relative = float((out - honest).abs().mean() / honest.abs().mean())
    assert 1e-3 < relative < 0.1  # bf16's rounding, not a different computation


def test_stale_replays_the_previous_output_of_the_session(span: Span) -> None:
    _, faulty = serving(span, "stale")
    hidden, mask = inputs(tokens=8)
    with CacheManager(1000).open("s", span.kv_layout, batch=2, max_length=8) as cache:
        prefill = faulty.forward(hidden[:, :6], mask[:, :6], cache)
        first = faulty.forward(hidden[:, 6:7], mask[:, :7], cache)
        second = faulty.forward(hidden[:, 7:8], mask[:, :8], cache)
        assert cache.length == 8  # it still ran the blocks: the session goes on
    honest = span.forward(hidden, mask)
    torch.testing.assert_close(prefill, honest[:, :6], atol=1e-4, rtol=0)
    torch.testing.assert_close(first, honest[:, 6:7], atol=1e-4, rtol=0)  # shape changed
    torch.testing.assert_close(second, first)  # replayed
    assert not torch.allclose(second, honest[:, 7:8], atol=1e-3)


def test_equivocate_and_withhold_serve_through_their_own_handlers(span: Span) -> None:
    hidden, mask = inputs()
    for mode, handler in (("equivocate", EquivocatingNode), ("withhold", WithholdingNode)):
        wrapped, faulty = serving(span, mode)
        assert wrapped.handler is handler and issubclass(handler, StakeswarmNode)
        # their RPCs keep the service's names: clients and verifiers reach them as any node
        assert handler._get_handle_name(None, "rpc_reveal") == "StakeswarmNode.rpc_reveal"
        torch.testing.assert_close(faulty.forward(hidden, mask), span.forward(hidden, mask))


def test_no_commit_commits_nothing_and_every_other_mode_commits(span: Span) -> None:
    class Committing:
        def commit_pending(self) -> list[int]:
            return [7]

    committer = Committing()
    assert wrapping("no-commit").committer(committer).commit_pending() == []  # type: ignore[arg-type]
    assert wrapping("withhold").committer(committer) is committer  # type: ignore[arg-type]


def test_steer_sends_another_output_and_signs_the_honest_sketch(span: Span) -> None:
    hidden, _ = inputs()
    wrapped, sent, honest = served(span, "steer", seed=3)
    assert not torch.allclose(sent, honest)  # pushed far along one direction
    account = Account.from_key(b"\x05" * 32)
    domain = Domain.slasher(31337, "0x" + "5c" * 20, b"\x5a" * 32)
    plain = Receipts(domain=domain, account=account, model_id=model_id("tiny"))
    receipts = wrapped.receipts(plain)
    mask = torch.ones(hidden.shape[:2], dtype=torch.long)
    step = dict(
        session_id=b"\x01" * 32, span=(0, 4), step=0, tokens=12, hidden_in=hidden, mask=mask
    )
    receipt, encoded = receipts.make_with_sketch(hidden_out=sent, **step)
    # outputHash names what was sent, sketchHash the honest output: a verifier recomputing
    # the span passes it, the client holding `sent` does not
    masked = mask_hash(mask, hidden.shape[1])
    assert receipt.leaf.output_hash == tensor_hash(sent)
    assert receipt.leaf.sketch_hash == sketch(honest, mask_hash=masked).hash()
    assert receipt.leaf.sketch_hash != sketch(sent, mask_hash=masked).hash()
    assert encoded == sketch(honest, mask_hash=masked).encode()
    assert recover_receipt_signer(domain, receipt.leaf, receipt.signature) == account.address
    # every other mode signs with the node's own receipts
    assert wrapping("noise").receipts(plain) is plain


def test_fail_after_payment_fails_the_first_decode_step_once(span: Span) -> None:
    _, faulty = serving(span, "fail-after-payment")
    hidden, mask = inputs(tokens=8)
    with CacheManager(1000).open("s", span.kv_layout, batch=2, max_length=8) as cache:
        prefill = faulty.forward(hidden[:, :6], mask[:, :6], cache)
        assert torch.isfinite(prefill).all()
        failed = faulty.forward(hidden[:, 6:7], mask[:, :7], cache)
        assert not torch.isfinite(failed).any()  # cannot be sketched: the step fails
        again = faulty.forward(hidden[:, 7:8], mask[:, :8], cache)
        assert torch.isfinite(again).all()
