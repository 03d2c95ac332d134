"""Spans reproduce the whole Hugging Face model: in one pass, step by step with the KV cache,
and driving greedy generation — for every supported family, with left-padded batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from node.blocks import SPAN_FP32_ATOL, ClientHead, Span, load_client_head, load_span
from node.cache import CacheManager
from node.errors import ModelFilesError
from stakeswarm.tiny_models import (
    FAMILIES,
    GEMMA2_FINAL_SOFTCAP,
    load_reference_model,
    make_tiny_model,
)

SPLITS = [(0, 2), (2, 4), (4, 6)]
WINDOW = 6  # windows (all but llama), shorter than the sequences below so windowing matters
PROMPT = 11
NEW_TOKENS = 8


class Model:
    """One tiny model on disk with its reference, client head and chain of spans."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reference: PreTrainedModel = load_reference_model(path)
        self.head: ClientHead = load_client_head(path)
        self.spans: list[Span] = [load_span(path, start, end) for start, end in SPLITS]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    family = request.param
    window = None if family == "llama" else WINDOW
    # qwen2 and mixtral are sharded to exercise the index path (a Mixtral layer's experts,
    # converted on load, may lie in two shards); qwen2 windows its upper half of layers,
    # gemma2 every other layer, the others every layer.
    path = make_tiny_model(
        tmp_path_factory.mktemp(family),
        family,
        sliding_window=window,
        shards=3 if family in ("qwen2", "mixtral") else 1,
    )
    return Model(path)


def left_padded_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, the first 4 tokens shorter and left-padded: ids and mask [2, PROMPT]."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 450, (2, PROMPT), generator=generator)
    mask = torch.ones(2, PROMPT, dtype=torch.long)
    ids[0, :4] = 0
    mask[0, :4] = 0
    return ids, mask


def reference_block_outputs(
    model: Model, ids: torch.Tensor, mask: torch.Tensor
) -> list[torch.Tensor]:
    """The residual stream after every decoder layer of the whole HF model (before the final
    norm). In transformers 5 `hidden_states[-1]` is already normed, so the last layer's output
    is captured with a hook; `hidden_states[i]` (i < layers) is the output of layer i - 1."""
    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        for layer in model.reference.model.layers
    ]
    try:
        with torch.no_grad():
            output = model.reference(ids, attention_mask=mask, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    for i in range(1, len(captured)):
        torch.testing.assert_close(captured[i - 1], output.hidden_states[i])
    return captured


def run_chain(
    spans: list[Span], hidden: torch.Tensor, mask: torch.Tensor, caches=None
) -> list[torch.Tensor]:
    outputs = []
    for i, span in enumerate(spans):
        hidden = span.forward(hidden, mask, None if caches is None else caches[i])
        outputs.append(hidden)
    return outputs


def assert_real_positions_close(
    actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor
) -> None:
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=SPAN_FP32_ATOL, rtol=0)


def test_chain_of_spans_matches_the_whole_model_in_one_pass(model: Model) -> None:
    ids, mask = left_padded_batch()
    expected = reference_block_outputs(model, ids, mask)
    outputs = run_chain(model.spans, model.head.embed(ids), mask)
    for (_, end), output in zip(SPLITS, outputs, strict=True):
        assert_real_positions_close(output, expected[end - 1], mask)
    with torch.no_grad():
        logits = model.reference(ids, attention_mask=mask).logits
    assert_real_positions_close(model.head.logits(outputs[-1]), logits, mask)


def test_cached_steps_match_the_stateless_pass(model: Model) -> None:
    ids, mask = left_padded_batch(seed=2)
    stateless = run_chain(model.spans, model.head.embed(ids), mask)[-1]

    manager = CacheManager(max_tokens=3 * 2 * PROMPT)
    caches = [
        manager.open(f"s{i}", s.kv_layout, batch=2, max_length=PROMPT)
        for i, s in enumerate(model.spans)
    ]
    prefill = 5
    steps = [
        run_chain(model.spans, model.head.embed(ids[:, :prefill]), mask[:, :prefill], caches)[-1]
    ]
    for t in range(prefill, PROMPT):
        hidden = model.head.embed(ids[:, t : t + 1])
        steps.append(run_chain(model.spans, hidden, mask[:, : t + 1], caches)[-1])
    assert [c.length for c in caches] == [PROMPT] * 3
    assert_real_positions_close(torch.cat(steps, dim=1), stateless, mask)


def test_a_padded_prompt_gives_what_it_gives_alone(model: Model) -> None:
    ids, mask = left_padded_batch(seed=3)
    batched = run_chain(model.spans, model.head.embed(ids), mask)[-1]
    alone = run_chain(model.spans, model.head.embed(ids[:1, 4:]), mask[:1, 4:])[-1]
    torch.testing.assert_close(batched[0, 4:], alone[0], atol=SPAN_FP32_ATOL, rtol=0)


def generate_through_spans(model: Model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Greedy decoding as a client does it: embeddings, final norm and LM head locally, the
    spans in the middle, one KV cache per span. Finished rows get the pad token, like HF."""
    config = model.reference.generation_config
    batch = ids.shape[0]
    manager = CacheManager(max_tokens=3 * batch * (PROMPT + NEW_TOKENS))
    caches = [
        manager.open(i, span.kv_layout, batch=batch, max_length=PROMPT + NEW_TOKENS)
        for i, span in enumerate(model.spans)
    ]
    hidden = run_chain(model.spans, model.head.embed(ids), mask, caches)[-1]
    finished = torch.zeros(batch, dtype=torch.bool)
    generated = []
    for _ in range(NEW_TOKENS):
        next_ids = model.head.logits(hidden[:, -1:]).argmax(-1)  # [batch, 1]
        next_ids[finished] = config.pad_token_id
        generated.append(next_ids)
        finished |= next_ids[:, 0] == config.eos_token_id
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], dim=1)
        hidden = run_chain(model.spans, model.head.embed(next_ids), mask, caches)[-1]
    for cache in caches:
        cache.close()
    assert manager.tokens_in_use == 0
    return torch.cat(generated, dim=1)


def test_greedy_generation_through_spans_equals_generate(model: Model) -> None:
    ids, mask = left_padded_batch(seed=4)
    with torch.no_grad():
        expected = model.reference.generate(
            ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False
        )[:, PROMPT:]
    generated = generate_through_spans(model, ids, mask)
    assert generated.tolist() == expected.tolist()
    assert len(set(expected[1].tolist())) > 1  # the model does not just repeat one token


def test_layers_use_global_indices_for_windows_and_cache(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "qwen2", sliding_window=WINDOW)  # layers 3..5 windowed
    span = load_span(path, 2, 5)
    assert span.windows == (None, WINDOW, WINDOW)
    assert [layer.self_attn.layer_idx for layer in span.layers] == [2, 3, 4]
    assert (span.kv_layout.start, span.kv_layout.end) == (2, 5)


def test_gemma2_alternates_windowed_and_global_layers_by_global_index(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "gemma2", sliding_window=WINDOW)
    span = load_span(path, 1, 4)
    assert span.windows == (None, WINDOW, None)
    assert span.config._attn_implementation == "eager"  # sdpa cannot soft-cap attention


def test_gemma2_head_scales_embeddings_and_caps_logits(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "gemma2")
    head = load_client_head(path)
    ids = torch.tensor([[5, 6, 7]])
    scale = head.embed_tokens.embedding_dim**0.5
    torch.testing.assert_close(head.embed(ids), head.embed_tokens(ids) * scale)
    cap = GEMMA2_FINAL_SOFTCAP
    logits = head.logits(torch.randn(1, 3, head.embed_tokens.embedding_dim) * 10)
    assert logits.abs().max() < cap
    assert logits.abs().max() > cap / 2  # capped, not merely small


def test_mixtral_experts_are_fused_from_per_expert_weights(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "mixtral", 2)
    reference: Any = load_reference_model(path).model.layers[1].mlp
    mlp: Any = load_span(path, 1, 2).layers[0].mlp
    torch.testing.assert_close(mlp.experts.gate_up_proj, reference.experts.gate_up_proj)
    torch.testing.assert_close(mlp.experts.down_proj, reference.experts.down_proj)
    torch.testing.assert_close(mlp.gate.weight, reference.gate.weight)


def test_mixtral_with_an_expert_missing_is_refused(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "mixtral", 2)
    weights = load_file(path / "model.safetensors")
    del weights["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    load_span(path, 0, 1)  # the other layer is whole
    with pytest.raises(ModelFilesError, match=r"experts\.3\.w2"):
        load_span(path, 1, 2)


def test_bfloat16_span_stays_close_to_float32(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "llama")
    ids, mask = left_padded_batch(seed=5)
    head = load_client_head(path)
    fp32 = load_span(path, 0, 6).forward(head.embed(ids), mask)
    bf16_span = load_span(path, 0, 6, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16_span.parameters())
    bf16 = bf16_span.forward(head.embed(ids).to(torch.bfloat16), mask)
    assert bf16.dtype == torch.bfloat16
    real = mask.bool()
    error = (bf16.float() - fp32)[real].abs().max()
    assert 0 < error < 0.1 * fp32[real].abs().max()


def test_tied_embeddings_head_matches_the_model(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "qwen2", tie_word_embeddings=True)
    reference = load_reference_model(path)
    head = load_client_head(path)
    assert torch.equal(head.lm_head.weight, head.embed_tokens.weight)
    span = load_span(path, 0, 6)
    ids, mask = left_padded_batch(seed=6)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
    assert_real_positions_close(head.logits(span.forward(head.embed(ids), mask)), expected, mask)
