"""Whether a span fits the device before it is loaded: its weights plus its KV-cache budget.

A node needs, on its device, the weights of every block it serves and, at most, its whole KV
cache budget (`NodeConfig.cache_tokens` positions, each holding keys and values of every
block: `node.cache.KVLayout.bytes_per_token`). Both grow with the span, block by block:

    need(n blocks) = weights of the n blocks + cache_tokens * n * cache bytes per token per block

`plan_span` weighs that against the device's free memory less `MEMORY_HEADROOM` (left for
activations, the allocator's slack and, on a GPU, the CUDA context) and says how many blocks
serve: the span given (`--blocks`) or the length asked (`--num-blocks`) when it fits, else a
`MemoryPlanError` with one line that says what fits; with neither, the largest length that
fits, at most the whole model. It is pure: the numbers come in (`SpanCost`, free bytes), so
it is tested without the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.config import ConfigError

# Fraction of the device's free memory a span may not plan for: activations of the largest
# step, allocator fragmentation and the CUDA context (~0.5 GiB) live there.
MEMORY_HEADROOM = 0.10


class MemoryPlanError(ConfigError):
    """The span asked for does not fit the device's free memory."""


@dataclass(frozen=True)
class SpanCost:
    """What the blocks of one model cost on a device, in bytes, in the dtype served."""

    block_bytes: tuple[int, ...]  # weights of each block (index: global block)
    cache_bytes_per_token: int  # keys and values of one cached position in ONE block
    cache_tokens: int  # the node's KV-cache budget in positions (batch x length)

    @property
    def total_blocks(self) -> int:
        return len(self.block_bytes)

    def weights(self, start: int, end: int) -> int:
        return sum(self.block_bytes[start:end])

    def cache(self, blocks: int) -> int:
        return self.cache_tokens * blocks * self.cache_bytes_per_token

    def most_blocks(self, usable: int) -> int:
        """How many consecutive blocks fit in `usable` bytes, wherever they are (each counted
        at the heaviest block's size), at most the whole model."""
        per_block = max(self.block_bytes) + self.cache(1)
        return min(self.total_blocks, max(0, usable) // per_block)


@dataclass(frozen=True)
class MemoryPlan:
    """How many blocks a node serves and what they take on its device."""

    device: str  # as shown: cpu, cuda:0
    length: int  # blocks to serve
    weights: int  # bytes of their weights (given span: exact; chosen span: heaviest blocks)
    cache: int  # bytes of the whole KV-cache budget over them
    free: int  # bytes free on the device when planned
    usable: int  # free less the headroom

    @property
    def need(self) -> int:
        return self.weights + self.cache


def plan_span(
    cost: SpanCost,
    *,
    device: str,
    free: int,
    blocks: tuple[int, int] | None = None,
    num_blocks: int | None = None,
    headroom: float = MEMORY_HEADROOM,
) -> MemoryPlan:
    """How many blocks serve on `device` with `free` bytes free (see the module doc):
    `blocks` (START, END) or `num_blocks` when they fit, else the most that fit; a
    `MemoryPlanError` when what was asked, or even one block, does not fit."""
    usable = int(free * (1 - headroom))
    fit = cost.most_blocks(usable)
    if blocks is not None:
        start, end = blocks
        what = f"blocks {start}:{end}"
        weights = cost.weights(start, end)
        length = end - start
    else:
        length = fit if num_blocks is None else min(num_blocks, cost.total_blocks)
        what = f"{length} blocks" if num_blocks is not None else "one block"
        heaviest = sorted(cost.block_bytes, reverse=True)
        weights = sum(heaviest[: max(length, 1)])
    cache = cost.cache(max(length, 1))
    if length == 0 or weights + cache > usable:
        raise MemoryPlanError(
            f"{what} need{'s' if what == 'one block' else ''} ~{show_bytes(weights + cache)} (weights {show_bytes(weights)} + "
            f"cache {show_bytes(cache)} for {cost.cache_tokens} tokens) but {device} has "
            f"{show_bytes(free)} free ({show_bytes(usable)} usable after a "
            f"{headroom:.0%} headroom): at most {fit} block{'' if fit == 1 else 's'} fit"
            + ("; lower --cache-tokens or free memory" if fit == 0 else "")
        )
    return MemoryPlan(
        device=device, length=length, weights=weights, cache=cache, free=free, usable=usable
    )


def show_bytes(count: int | float) -> str:
    """Bytes as people read them: GiB from 1 GiB, else MiB."""
    if count >= 2**30:
        return f"{count / 2**30:.2f} GiB"
    return f"{count / 2**20:.1f} MiB"
