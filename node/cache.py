"""Explicit per-session KV caches with one owner each and a node-wide bound in tokens.

The node's `CacheManager` owns a budget of `max_tokens` cache positions. An inference session
opens a `SessionCache` for its span with a declared batch size and max length; that reserves
`batch * max_length` tokens up front and preallocates the keys and values
(`[batch, kv_heads, max_length, head_dim]` per layer, gpt-fast `KVCache` style), so memory is
bounded when the session opens, not discovered mid-generation. Closing the session frees its
tokens. A session never grows past its declared max length (`SessionLengthError`).

    manager = CacheManager(max_tokens=8192)
    with manager.open(session_id, span.kv_layout, batch=1, max_length=512) as cache:
        out = span.forward(hidden, attention_mask, cache)  # appends to the cache

`SessionCache.update` is what transformers' attention calls (`cache.update(key, value,
layer_idx)`): a step's keys/values are written after the committed length and become part of
the session only when `Span.forward` commits the whole step, so a failed step leaves no trace.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from node.errors import (
    CacheClosedError,
    CacheFullError,
    InvalidInputError,
    SessionExistsError,
    SessionLengthError,
)

logger = logging.getLogger(__name__)

Owner = str | bytes  # who a session cache belongs to: the server uses the session id


@dataclass(frozen=True)
class KVLayout:
    """The shape of one span's KV cache: which layers, how many KV heads, what dtype/device."""

    start: int  # first global layer index of the span
    end: int  # one past the last
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def num_layers(self) -> int:
        return self.end - self.start

    @property
    def bytes_per_token(self) -> int:
        """Bytes one cached position of one sequence takes: keys and values of every layer."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def tokens_for_bytes(self, budget_bytes: int) -> int:
        """How many cache tokens fit in `budget_bytes` (to size a `CacheManager`)."""
        return budget_bytes // self.bytes_per_token


class SessionCache:
    """The KV cache of one session over one span: preallocated, append-only, bounded.

    Holds per layer `keys`/`values` `[batch, kv_heads, max_length, head_dim]`, the committed
    length (positions already processed, the same for every sequence of the batch) and the
    attention mask of those positions `[batch, length]`. Owned by exactly one session; only
    `Span.forward` writes to it, one step at a time (the server serializes a session's steps).
    """

    def __init__(
        self, manager: CacheManager, owner: Owner, layout: KVLayout, batch: int, max_length: int
    ) -> None:
        self.owner = owner
        self.layout = layout
        self.batch = batch
        self.max_length = max_length
        self._manager = manager
        self._length = 0
        self._pending = 0  # tokens written by the step in progress, not yet committed
        shape = (batch, layout.num_kv_heads, max_length, layout.head_dim)
        # keys/values: per layer [batch, kv_heads, max_length, head_dim]
        self._keys = [
            torch.empty(shape, dtype=layout.dtype, device=layout.device)
            for _ in range(layout.num_layers)
        ]
        self._values = [
            torch.empty(shape, dtype=layout.dtype, device=layout.device)
            for _ in range(layout.num_layers)
        ]
        # mask: [batch, max_length], 1 where a committed position is a real token
        self._mask = torch.zeros((batch, max_length), dtype=torch.bool, device=layout.device)
        self._closed = False

    @property
    def tokens(self) -> int:
        """Tokens reserved from the manager: batch * max_length."""
        return self.batch * self.max_length

    @property
    def length(self) -> int:
        """Positions per sequence already in the cache (the `past` of the next step)."""
        return self._length

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def mask(self) -> torch.Tensor:
        """The attention mask of the cached positions: [batch, length], bool."""
        self._check_open()
        return self._mask[:, : self._length]

    def room_for(self, tokens: int) -> None:
        """Raise `SessionLengthError` unless a step of `tokens` new positions fits."""
        self._check_open()
        if self._length + tokens > self.max_length:
            raise SessionLengthError(self.max_length, self._length + tokens)

    def begin_step(self, tokens: int) -> None:
        """Start a step of `tokens` new positions: `update` writes them after `length`."""
        self.room_for(tokens)
        self._pending = tokens

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values of global layer `layer_idx` and return all of the
        session's keys/values for it so far: [batch, kv_heads, length + tokens, head_dim].
        (The transformers `Cache.update` call the attention makes.)"""
        self._check_open()
        local = layer_idx - self.layout.start
        if not 0 <= local < self.layout.num_layers:
            raise InvalidInputError(
                f"layer {layer_idx} is outside this cache's span "
                f"[{self.layout.start}, {self.layout.end})"
            )
        # key_states: [batch, kv_heads, tokens, head_dim]
        tokens = key_states.shape[-2]
        assert tokens == self._pending, "update() outside begin_step()/commit()"
        end = self._length + tokens
        self._keys[local][:, :, self._length : end] = key_states
        self._values[local][:, :, self._length : end] = value_states
        return self._keys[local][:, :, :end], self._values[local][:, :, :end]

    def commit(self, new_mask: torch.Tensor) -> None:
        """End the step: its positions (mask `[batch, tokens]`) become part of the session."""
        self._check_open()
        tokens = new_mask.shape[-1]
        assert tokens == self._pending, "commit() of a step that was not begun"
        self._mask[:, self._length : self._length + tokens] = new_mask
        self._length += tokens
        self._pending = 0

    def abort_step(self) -> None:
        """Forget a step that failed: the cache stays as it was before `begin_step`."""
        self._pending = 0

    def close(self) -> None:
        """Return the memory and the reserved tokens to the manager. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._keys.clear()
        self._values.clear()
        self._manager._release(self)

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"the KV cache of session {self.owner!r} is closed")

    def __enter__(self) -> SessionCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SessionCache(owner={self.owner!r}, span=[{self.layout.start}, {self.layout.end}), "
            f"batch={self.batch}, length={self._length}/{self.max_length}, closed={self._closed})"
        )


class CacheManager:
    """The node's KV-cache budget: hands out session caches while their tokens fit.

    `max_tokens` bounds the sum of `batch * max_length` over open sessions. Thread-safe.
    """

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self.max_tokens = max_tokens
        self._sessions: dict[Owner, SessionCache] = {}
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def tokens_in_use(self) -> int:
        return self._in_use

    @property
    def tokens_left(self) -> int:
        return self.max_tokens - self._in_use

    @property
    def sessions(self) -> int:
        """How many session caches are open."""
        return len(self._sessions)

    def open(self, owner: Owner, layout: KVLayout, *, batch: int, max_length: int) -> SessionCache:
        """Reserve `batch * max_length` tokens for `owner` and allocate its cache.

        Raises `CacheFullError` (asked, available) when they do not fit, `SessionExistsError`
        when `owner` already has an open cache, `InvalidInputError` for non-positive sizes.
        """
        if batch < 1 or max_length < 1:
            raise InvalidInputError(
                f"batch and max_length must be >= 1, got batch={batch}, max_length={max_length}"
            )
        asked = batch * max_length
        with self._lock:
            if owner in self._sessions:
                raise SessionExistsError(f"session {owner!r} already has an open KV cache")
            if asked > self.max_tokens - self._in_use:
                raise CacheFullError(asked, self.max_tokens - self._in_use)
            self._in_use += asked
            self._sessions[owner] = None  # type: ignore[assignment]  # reserved, allocating
        try:
            cache = SessionCache(self, owner, layout, batch, max_length)
        except BaseException:
            with self._lock:
                del self._sessions[owner]
                self._in_use -= asked
            raise
        with self._lock:
            self._sessions[owner] = cache
        logger.debug("opened %r: %d tokens, %d left", cache, asked, self.tokens_left)
        return cache

    def get(self, owner: Owner) -> SessionCache | None:
        """The open cache of `owner`, if any."""
        return self._sessions.get(owner)

    def close(self, owner: Owner) -> None:
        """Close `owner`'s cache if it is open."""
        cache = self._sessions.get(owner)
        if cache is not None:
            cache.close()

    def close_all(self) -> None:
        """Close every open cache (server shutdown)."""
        for cache in list(self._sessions.values()):
            if cache is not None:
                cache.close()

    def _release(self, cache: SessionCache) -> None:
        with self._lock:
            if self._sessions.get(cache.owner) is cache:
                del self._sessions[cache.owner]
                self._in_use -= cache.tokens
        logger.debug("closed %r, %d tokens left", cache, self.tokens_left)
