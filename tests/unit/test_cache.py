"""The node's KV-cache budget: sessions reserve batch * max_length tokens, are refused when the
budget is spent, free on close, and never grow past their declared length."""

from __future__ import annotations

import threading

import pytest
import torch

from node.cache import CacheManager, KVLayout
from node.errors import (
    CacheClosedError,
    CacheFullError,
    InvalidInputError,
    SessionExistsError,
    SessionLengthError,
)

LAYOUT = KVLayout(
    start=2, end=5, num_kv_heads=2, head_dim=16, dtype=torch.float32, device=torch.device("cpu")
)


def test_sessions_reserve_batch_times_max_length_and_free_on_close() -> None:
    manager = CacheManager(max_tokens=100)
    first = manager.open("a", LAYOUT, batch=2, max_length=20)
    second = manager.open(b"\x01" * 32, LAYOUT, batch=1, max_length=50)
    assert (manager.tokens_in_use, manager.tokens_left, manager.sessions) == (90, 10, 2)
    assert manager.get("a") is first

    first.close()
    first.close()  # idempotent
    assert (manager.tokens_in_use, manager.tokens_left) == (50, 50)
    assert manager.get("a") is None
    manager.close(b"\x01" * 32)
    assert second.closed and manager.tokens_in_use == 0


def test_a_session_that_does_not_fit_is_refused_with_asked_and_available() -> None:
    manager = CacheManager(max_tokens=100)
    manager.open("a", LAYOUT, batch=1, max_length=70)
    with pytest.raises(CacheFullError, match="asked for 40 tokens, 30 available") as info:
        manager.open("b", LAYOUT, batch=2, max_length=20)
    assert (info.value.asked, info.value.available) == (40, 30)
    assert manager.tokens_in_use == 70 and manager.get("b") is None
    manager.open("b", LAYOUT, batch=3, max_length=10)  # exactly fills the budget
    assert manager.tokens_left == 0


def test_one_owner_has_one_cache() -> None:
    manager = CacheManager(max_tokens=100)
    manager.open("a", LAYOUT, batch=1, max_length=10)
    with pytest.raises(SessionExistsError, match="'a'"):
        manager.open("a", LAYOUT, batch=1, max_length=10)
    assert manager.tokens_in_use == 10


@pytest.mark.parametrize("batch, max_length", [(0, 10), (1, 0), (-1, 5)])
def test_non_positive_sizes_are_refused(batch: int, max_length: int) -> None:
    with pytest.raises(InvalidInputError):
        CacheManager(max_tokens=100).open("a", LAYOUT, batch=batch, max_length=max_length)


def test_the_context_manager_frees_even_on_error() -> None:
    manager = CacheManager(max_tokens=100)
    with pytest.raises(RuntimeError), manager.open("a", LAYOUT, batch=1, max_length=10):
        raise RuntimeError("the session broke")
    assert manager.tokens_in_use == 0 and manager.sessions == 0


def test_memory_is_what_the_layout_promises() -> None:
    cache = CacheManager(max_tokens=1000).open("a", LAYOUT, batch=3, max_length=7)
    allocated = sum(t.numel() * t.element_size() for t in cache._keys + cache._values)
    assert allocated == cache.tokens * LAYOUT.bytes_per_token
    assert LAYOUT.bytes_per_token == 2 * 3 * 2 * 16 * 4
    assert LAYOUT.tokens_for_bytes(10 * LAYOUT.bytes_per_token + 1) == 10


def test_a_session_never_grows_past_its_max_length() -> None:
    cache = CacheManager(max_tokens=100).open("a", LAYOUT, batch=1, max_length=5)
    cache.begin_step(3)
    keys = torch.randn(1, 2, 3, 16)
    for layer in range(2, 5):
        got_keys, got_values = cache.update(keys, -keys, layer)
        assert torch.equal(got_keys, keys) and torch.equal(got_values, -keys)
    cache.commit(torch.ones(1, 3, dtype=torch.bool))
    assert cache.length == 3

    with pytest.raises(SessionLengthError, match="needs 6 positions.*max_length=5") as info:
        cache.begin_step(3)
    assert (info.value.max_length, info.value.requested) == (5, 6)
    assert cache.length == 3

    cache.begin_step(2)
    got_keys, _ = cache.update(torch.zeros(1, 2, 2, 16), torch.zeros(1, 2, 2, 16), 2)
    assert got_keys.shape == (1, 2, 5, 16) and torch.equal(got_keys[:, :, :3], keys)
    with pytest.raises(InvalidInputError, match=r"outside this cache's span \[2, 5\)"):
        cache.update(torch.zeros(1, 2, 2, 16), torch.zeros(1, 2, 2, 16), 5)


def test_a_closed_cache_cannot_be_used() -> None:
    cache = CacheManager(max_tokens=100).open("a", LAYOUT, batch=1, max_length=5)
    cache.close()
    with pytest.raises(CacheClosedError, match="closed"):
        cache.begin_step(1)


def test_concurrent_opens_never_exceed_the_budget() -> None:
    manager = CacheManager(max_tokens=1000)
    opened: list[str] = []
    refused: list[str] = []

    def open_one(owner: str) -> None:
        try:
            manager.open(owner, LAYOUT, batch=1, max_length=30)
            opened.append(owner)
        except CacheFullError:
            refused.append(owner)

    threads = [threading.Thread(target=open_one, args=(f"s{i}",)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 33 and len(refused) == 17
    assert manager.tokens_in_use == 990
    manager.close_all()
    assert manager.tokens_in_use == 0 and manager.sessions == 0
