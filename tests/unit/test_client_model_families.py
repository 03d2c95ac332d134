"""The client's Hugging Face model (`client.model.DistributedModelForCausalLM`) generates what
transformers generates, for every supported family: its local ends (embeddings with the
family's scale, final norm, LM head with the family's soft-cap) around spans run in-process
by a stand-in session, with the node's KV caches. The network, payments and receipts are
covered by the integration tests; this checks what the family changes on the client."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import torch

from client.model import DistributedModelForCausalLM
from node.blocks import Span, load_client_head, load_span
from node.cache import CacheManager
from node.families import load_config
from stakeswarm.tiny_models import FAMILIES, Family, load_reference_model, make_tiny_model

SPLITS = [(0, 1), (1, 4)]
WINDOW = 4  # shorter than prompt + generated tokens
NEW_TOKENS = 6


class LocalSession:
    """What `DistributedModelForCausalLM` uses of an `InferenceSession`, over local spans."""

    def __init__(self, spans: list[Span], batch: int, max_length: int) -> None:
        self.spans = spans
        self.position = 0
        manager = CacheManager(max_tokens=len(spans) * batch * max_length)
        self.caches = [
            manager.open(f"span-{i}", span.kv_layout, batch=batch, max_length=max_length)
            for i, span in enumerate(spans)
        ]

    def step(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # hidden: [batch, tokens, hidden_size]; attention_mask: [batch, position + tokens]
        for span, cache in zip(self.spans, self.caches, strict=True):
            hidden = span.forward(hidden, attention_mask, cache)
        self.position += hidden.shape[1]
        return hidden.float()

    def __enter__(self) -> LocalSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for cache in self.caches:
            cache.close()


class LocalClient:
    """A stand-in `SwarmClient` whose sessions run the spans in this process."""

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans

    def inference_session(
        self, *, max_length: int, batch_size: int | None = None, prompts: Any = None
    ) -> Any:
        assert prompts is None  # no deep prompts in these models
        return LocalSession(self.spans, batch_size or 1, max_length)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("family", FAMILIES)
def test_the_client_model_generates_what_transformers_generates(
    family: Family, tmp_path: Path
) -> None:
    path = make_tiny_model(
        tmp_path, family, 4, sliding_window=None if family == "llama" else WINDOW
    )
    spans = [load_span(path, start, end) for start, end in SPLITS]
    client: Any = LocalClient(spans)
    model: Any = DistributedModelForCausalLM(load_config(path), load_client_head(path), client)
    reference: Any = load_reference_model(path)
    ids = torch.tensor([[1, 5, 77, 300, 12, 9, 41, 8], [0, 0, 0, 1, 33, 402, 7, 19]])
    mask = (ids != 0).long()

    with torch.no_grad():
        expected_logits = reference(ids, attention_mask=mask).logits
    logits = model.forward(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected_logits[real], atol=1e-3, rtol=0)

    expected = reference.generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False
    )
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)
    assert generated.tolist() == expected.tolist()
