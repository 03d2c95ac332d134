"""Loading a span reads only its blocks' weights; bad folders and bad inputs get clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from node.blocks import INDEX_FILE, load_client_head, load_span
from node.cache import CacheManager
from node.errors import (
    InvalidInputError,
    InvalidSpanError,
    ModelFilesError,
    SessionLengthError,
    UnsupportedModelError,
)
from stakeswarm.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("llama"), "llama")


def test_a_span_loads_without_the_shards_of_other_blocks(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path, "mistral", shards=8)
    weight_map: dict[str, str] = json.loads((path / INDEX_FILE).read_text())["weight_map"]
    needed = {
        file
        for key, file in weight_map.items()
        if key.startswith(("model.layers.2.", "model.layers.3."))
    }
    others = set(weight_map.values()) - needed
    assert others, "the model should be spread over several shards"
    for file in others:
        (path / file).unlink()

    calls: list[tuple[int, int]] = []
    span = load_span(path, 2, 4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    layer_params = sum(p.numel() for p in span.layers[0].parameters())
    assert sum(p.numel() for p in span.parameters()) == 2 * layer_params
    assert not any(p.is_meta for p in span.parameters())
    out = span.forward(torch.randn(1, 3, 64))
    assert out.shape == (1, 3, 64) and torch.isfinite(out).all()

    with pytest.raises(ModelFilesError, match="missing"):
        load_span(path, 0, 2)


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_span(tmp_path, 0, 1)


def test_missing_files_are_reported(tmp_path: Path, llama: Path) -> None:
    with pytest.raises(ModelFilesError, match="config.json"):
        load_span(tmp_path, 0, 1)
    (tmp_path / "config.json").write_text((llama / "config.json").read_text())
    with pytest.raises(ModelFilesError, match="model.safetensors"):
        load_span(tmp_path, 0, 1)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path, llama: Path) -> None:
    config = json.loads((llama / "config.json").read_text())
    config["attention_bias"] = True  # the layers now expect q/k/v/o biases the file lacks
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(llama / "model.safetensors")
    with pytest.raises(ModelFilesError, match="bias"):
        load_span(tmp_path, 0, 1)


@pytest.mark.parametrize("start, end", [(-1, 2), (2, 2), (4, 3), (0, 7)])
def test_span_outside_the_model_is_refused(llama: Path, start: int, end: int) -> None:
    with pytest.raises(InvalidSpanError, match="6 blocks"):
        load_span(llama, start, end)


def test_unsupported_dtype_is_refused(llama: Path) -> None:
    with pytest.raises(InvalidInputError, match="dtype"):
        load_span(llama, 0, 1, dtype=torch.float64)


@pytest.mark.parametrize(
    "hidden, mask, message",
    [
        (torch.randn(2, 3), None, r"\[batch, tokens, 64\]"),
        (torch.randn(2, 3, 32), None, r"\[batch, tokens, 64\]"),
        (torch.randn(2, 0, 64), None, "empty"),
        (torch.randn(2, 3, 64, dtype=torch.float16), None, "float16"),
        (torch.full((2, 3, 64), float("nan")), None, "NaN"),
        (torch.randn(2, 3, 64), torch.ones(2, 4, dtype=torch.long), r"\[2, 3\]"),
        (torch.randn(2, 3, 64), torch.full((2, 3), 2), "0 or 1"),
        (torch.randn(2, 3, 64), torch.ones(2, 3), "bool or integer"),
    ],
)
def test_bad_inputs_get_clear_errors(
    llama: Path, hidden: torch.Tensor, mask: torch.Tensor | None, message: str
) -> None:
    span = load_span(llama, 0, 1)
    with pytest.raises(InvalidInputError, match=message):
        span.forward(hidden, mask)


def test_a_step_that_does_not_fit_leaves_the_session_unchanged(llama: Path) -> None:
    span = load_span(llama, 0, 2)
    head = load_client_head(llama)
    ids = torch.randint(3, 400, (1, 6))
    manager = CacheManager(max_tokens=100)
    with manager.open("a", span.kv_layout, batch=1, max_length=6) as cache:
        span.forward(head.embed(ids[:, :4]), None, cache)
        with pytest.raises(SessionLengthError, match="max_length=6"):
            span.forward(head.embed(ids[:, 4:6].repeat(1, 2)), None, cache)
        assert cache.length == 4
        with pytest.raises(InvalidInputError, match="batch"):
            span.forward(head.embed(ids[:, 4:5].repeat(2, 1)), None, cache)
        with pytest.raises(InvalidInputError, match="disagrees"):
            span.forward(head.embed(ids[:, 4:5]), torch.tensor([[0, 1, 1, 1, 1]]), cache)
        assert cache.length == 4
        # the session goes on as if the bad requests never came
        last = span.forward(head.embed(ids[:, 4:6]), None, cache)
    whole = span.forward(head.embed(ids))
    torch.testing.assert_close(last, whole[:, 4:6], atol=1e-4, rtol=0)
    assert manager.tokens_in_use == 0


def test_a_cache_of_another_span_is_refused(llama: Path) -> None:
    first, second = load_span(llama, 0, 2), load_span(llama, 2, 4)
    cache = CacheManager(max_tokens=10).open("a", first.kv_layout, batch=1, max_length=10)
    with pytest.raises(InvalidInputError, match="cache was opened for"):
        second.forward(torch.randn(1, 2, 64), None, cache)
