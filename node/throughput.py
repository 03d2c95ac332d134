"""How fast this machine runs a span, and where in the swarm a server should put its span.

Measuring: `get_throughput` times decode-like steps (batch 1, one new token per step, with a
KV cache; the faster of two passes, so one-time costs such as kernel loading do not count)
through a loaded span and caches the result in `throughput.json` in a directory the
caller passes, keyed by model name, precision (dtype and weights), torch thread count, block
count and device, so a node measures once per configuration. `tokens_per_s` is what a server
announces: tokens per second it can push through its whole span. `block_tokens_per_s` is the
same work per block (what one block costs), to estimate a span of another length before
loading it.

Choosing (Petals `block_selection` idea): the swarm is a list of `(start, end, throughput)`
spans; a block's throughput is the sum of the throughputs of the spans that hold it. A new
server takes the contiguous window of its length whose throughputs, sorted ascending, are
lexicographically smallest — first of all the window with the weakest block (the swarm's
bottleneck), ties by lowest start. A serving server moves only when moving raises the swarm's
bottleneck by at least `MOVE_MIN_GAIN` (relative), so servers do not chase noise.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from node.blocks import Span
from node.cache import CacheManager
from node.device import device_name
from node.errors import InvalidSpanError
from node.precisions import precision_name
from node.tensors import DTYPE_NAMES

logger = logging.getLogger(__name__)

THROUGHPUT_FILE = "throughput.json"
MOVE_MIN_GAIN = 0.2  # move only if the swarm's bottleneck throughput grows by >= 20%
_PASSES = 2  # timed passes per measurement; the fastest counts
_PREFILL_TOKENS = 16  # decode steps attend over a short history, as in generation

SwarmSpan = tuple[int, int, float]  # (start, end, throughput in tokens/s)


@dataclass(frozen=True)
class Throughput:
    """One measurement of a span on this machine."""

    model: str  # model name as the operator calls it
    dtype: str  # the precision: "float32" | "float16" | "bfloat16", "bfloat16+int8"...
    threads: int  # torch.get_num_threads() while measuring
    blocks: int  # blocks in the measured span
    tokens_per_s: float  # decode-like tokens per second through the whole span
    block_tokens_per_s: float  # tokens_per_s * blocks: the rate of one block
    measured_at: float  # unix time
    device: str = "cpu"  # where it ran: cpu, cuda:0 (entries older than the field: the CPU)

    @property
    def key(self) -> str:
        return cache_key(self.model, self.dtype, self.threads, self.blocks, self.device)


def cache_key(model: str, dtype: str, threads: int, blocks: int, device: str = "cpu") -> str:
    """The cache key of a measurement configuration (the CPU's keys name no device, as
    before measurements on other devices were kept)."""
    key = f"{model}|{dtype}|threads={threads}|blocks={blocks}"
    return key if device == "cpu" else f"{key}|device={device}"


def measure_throughput(span: Span, model: str, *, steps: int = 16) -> Throughput:
    """Time `steps` decode-like steps (batch 1, 1 token each, cached) through `span`.

    The steps run in `_PASSES` passes, each over a fresh session; the fastest pass counts, so
    one-time costs (kernel loading on a new device or dtype, allocator growth) do not.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    length = _PREFILL_TOKENS + steps
    generator = torch.Generator().manual_seed(0)
    # hidden: [1, length, hidden_size], unit-scale like a real residual stream
    hidden = torch.randn(1, length, span.hidden_size, generator=generator).to(span.dtype)
    hidden = hidden.to(span.device)
    manager = CacheManager(max_tokens=length)
    elapsed = min(_timed_pass(span, manager, hidden) for _ in range(_PASSES))
    tokens_per_s = steps / elapsed
    return Throughput(
        model=model,
        dtype=precision_name(DTYPE_NAMES[span.dtype], span.quantization),
        threads=torch.get_num_threads(),
        blocks=span.num_blocks,
        tokens_per_s=tokens_per_s,
        block_tokens_per_s=tokens_per_s * span.num_blocks,
        measured_at=time.time(),
        device=device_name(span.device),
    )


def _timed_pass(span: Span, manager: CacheManager, hidden: torch.Tensor) -> float:
    """Seconds the decode steps after an untimed prefill take, in one fresh session."""
    length = hidden.shape[1]
    with manager.open("throughput", span.kv_layout, batch=1, max_length=length) as cache:
        span.forward(hidden[:, :_PREFILL_TOKENS], None, cache)
        _synchronize(span.device)
        begin = time.perf_counter()
        for t in range(_PREFILL_TOKENS, length):
            span.forward(hidden[:, t : t + 1], None, cache)
        _synchronize(span.device)
        return time.perf_counter() - begin


def get_throughput(
    span: Span, model: str, cache_dir: str | Path, *, steps: int = 16, force: bool = False
) -> Throughput:
    """The cached measurement for this configuration, measured (and cached) if missing or
    `force`. A corrupt cache file is logged and replaced."""
    path = Path(cache_dir) / THROUGHPUT_FILE
    key = cache_key(
        model,
        precision_name(DTYPE_NAMES[span.dtype], span.quantization),
        torch.get_num_threads(),
        span.num_blocks,
        device_name(span.device),
    )
    entries = _read_cache(path)
    if not force and key in entries:
        try:
            return Throughput(**entries[key])
        except TypeError:
            logger.warning("ignoring malformed throughput entry %r in %s", key, path)
    result = measure_throughput(span, model, steps=steps)
    logger.info(
        "measured %s: %.1f tokens/s through %d blocks", key, result.tokens_per_s, result.blocks
    )
    entries = _read_cache(path)  # another process may have added entries meanwhile
    entries[key] = asdict(result)
    _write_cache(path, entries)
    return result


def _read_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable throughput cache %s: %s", path, exc)
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename, so a reader never sees half a file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".throughput-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- choosing a span -----------------------------------------------------------------------


def block_throughputs(total_blocks: int, swarm: Sequence[SwarmSpan]) -> list[float]:
    """Per block, the summed throughput of the swarm's spans that hold it."""
    if total_blocks < 1:
        raise InvalidSpanError(f"the model must have >= 1 block, got {total_blocks}")
    totals = [0.0] * total_blocks
    for start, end, throughput in swarm:
        _check_span(total_blocks, start, end)
        if throughput < 0:
            raise ValueError(f"negative throughput {throughput} for span [{start}, {end})")
        for block in range(start, end):
            totals[block] += throughput
    return totals


def _check_span(total_blocks: int, start: int, end: int) -> None:
    if not 0 <= start < end <= total_blocks:
        raise InvalidSpanError(
            f"span [{start}, {end}) is not a non-empty range inside {total_blocks} blocks"
        )


def _best_start(totals: Sequence[float], length: int) -> int:
    if not 1 <= length <= len(totals):
        raise InvalidSpanError(f"cannot place {length} blocks in a model of {len(totals)}")
    options = (
        (sorted(totals[start : start + length]), start) for start in range(len(totals) - length + 1)
    )
    return min(options)[1]


def choose_span(total_blocks: int, swarm: Sequence[SwarmSpan], length: int) -> tuple[int, int]:
    """Where a new server of `length` blocks helps most: the window whose sorted block
    throughputs are lexicographically smallest (weakest block first), lowest start on ties."""
    start = _best_start(block_throughputs(total_blocks, swarm), length)
    return start, start + length


def should_move(
    total_blocks: int,
    others: Sequence[SwarmSpan],
    mine: SwarmSpan,
    *,
    min_gain: float = MOVE_MIN_GAIN,
) -> bool:
    """Whether the server serving `mine` should move, given the rest of the swarm `others`.

    It moves to `choose_span` of the swarm without itself, and only if that raises the
    bottleneck (the weakest block's throughput) by at least `min_gain` relative to now; from a
    bottleneck of 0 it moves when the move leaves fewer blocks unserved.
    """
    start, end, throughput = mine
    _check_span(total_blocks, start, end)
    length = end - start
    without_me = block_throughputs(total_blocks, others)
    new_start = _best_start(without_me, length)
    if new_start == start:
        return False
    now = list(without_me)
    after = list(without_me)
    for block in range(start, end):
        now[block] += throughput
    for block in range(new_start, new_start + length):
        after[block] += throughput
    bottleneck_now, bottleneck_after = min(now), min(after)
    if bottleneck_now == 0:
        return after.count(0.0) < now.count(0.0)
    return bottleneck_after >= bottleneck_now * (1 + min_gain)
