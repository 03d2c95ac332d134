"""Span throughput is measured once per configuration; servers pick and leave spans
Petals-style: towards the swarm's weakest blocks, and only for a clear gain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from node.blocks import load_span
from node.errors import InvalidSpanError
from node.throughput import (
    MOVE_MIN_GAIN,
    THROUGHPUT_FILE,
    block_throughputs,
    cache_key,
    choose_span,
    get_throughput,
    should_move,
)
from stakeswarm.tiny_models import make_tiny_model


def test_block_throughputs_sum_the_spans_holding_each_block() -> None:
    swarm = [(0, 4, 10.0), (4, 8, 10.0), (2, 6, 5.0)]
    assert block_throughputs(8, swarm) == [10, 10, 15, 15, 15, 15, 10, 10]
    assert block_throughputs(3, []) == [0, 0, 0]


@pytest.mark.parametrize(
    "total, swarm, length, expected",
    [
        (8, [], 3, (0, 3)),  # nothing served: the first blocks
        (8, [(0, 4, 10.0)], 4, (4, 8)),  # the unserved half
        (8, [(0, 5, 10.0)], 4, (4, 8)),  # as many unserved blocks as possible
        (8, [(0, 4, 10.0), (4, 8, 10.0), (2, 6, 5.0)], 2, (0, 2)),  # equal windows: lowest start
        (6, [(0, 2, 3.0), (2, 4, 1.0), (4, 6, 2.0)], 2, (2, 4)),  # the bottleneck
        # every window's weakest block is 1: the next-weakest decides (2 < 5 < 9)
        (5, [(0, 1, 5.0), (1, 2, 1.0), (2, 3, 9.0), (3, 4, 1.0), (4, 5, 2.0)], 2, (3, 5)),
        (4, [(1, 3, 1.0)], 4, (0, 4)),  # the whole model
    ],
)
def test_choose_span(
    total: int, swarm: list[tuple[int, int, float]], length: int, expected: tuple[int, int]
) -> None:
    assert choose_span(total, swarm, length) == expected


def test_a_server_moves_to_fill_a_gap() -> None:
    assert should_move(6, others=[(0, 3, 10.0)], mine=(0, 3, 10.0))


def test_a_server_in_place_stays() -> None:
    assert not should_move(6, others=[(0, 3, 10.0)], mine=(3, 6, 10.0))


def test_a_server_moves_only_for_a_clear_gain() -> None:
    # moving lifts the bottleneck from 9 to 10 (+11%): not enough by default
    others = [(0, 3, 10.0), (3, 6, 9.0)]
    assert MOVE_MIN_GAIN > 0.11
    assert not should_move(6, others, mine=(0, 3, 1.0))
    assert should_move(6, others, mine=(0, 3, 1.0), min_gain=0.1)
    # from 2 to 7 tokens/s: move
    assert should_move(6, [(0, 3, 10.0), (3, 6, 2.0)], mine=(0, 3, 5.0))


def test_bad_swarms_are_refused() -> None:
    with pytest.raises(InvalidSpanError, match=r"\[3, 9\)"):
        block_throughputs(8, [(3, 9, 1.0)])
    with pytest.raises(InvalidSpanError):
        choose_span(4, [], 5)
    with pytest.raises(ValueError, match="negative"):
        choose_span(4, [(0, 2, -1.0)], 2)
    with pytest.raises(InvalidSpanError):
        should_move(4, [], mine=(2, 2, 1.0))


def test_throughput_is_measured_once_per_configuration(tmp_path: Path) -> None:
    span = load_span(make_tiny_model(tmp_path, "llama"), 0, 2)
    cache_dir = tmp_path / "cache"
    first = get_throughput(span, "tiny-llama", cache_dir, steps=4)
    assert first.tokens_per_s > 0
    assert first.block_tokens_per_s == pytest.approx(first.tokens_per_s * 2)
    assert (first.model, first.dtype, first.blocks) == ("tiny-llama", "float32", 2)

    # the second call reads the file instead of measuring again
    path = cache_dir / THROUGHPUT_FILE
    entries = json.loads(path.read_text())
    assert list(entries) == [first.key]
    entries[first.key]["tokens_per_s"] = 123.0
    path.write_text(json.dumps(entries))
    assert get_throughput(span, "tiny-llama", cache_dir).tokens_per_s == 123.0
    assert get_throughput(span, "tiny-llama", cache_dir, steps=4, force=True).tokens_per_s != 123.0

    threads = torch.get_num_threads()
    other_threads = 2 if threads == 1 else 1
    try:
        torch.set_num_threads(other_threads)
        other = get_throughput(span, "tiny-llama", cache_dir, steps=4)
    finally:
        torch.set_num_threads(threads)
    assert other.key == cache_key("tiny-llama", "float32", other_threads, 2)
    assert set(json.loads(path.read_text())) == {first.key, other.key}

    path.write_text("{not json")
    assert get_throughput(span, "tiny-llama", cache_dir, steps=4).tokens_per_s > 0
    assert first.key in json.loads(path.read_text())


def test_a_measurement_on_a_gpu_is_kept_apart_from_the_cpus() -> None:
    cpu = cache_key("tiny-llama", "float32", 4, 2)
    assert cpu == "tiny-llama|float32|threads=4|blocks=2"  # the key caches already hold
    assert cache_key("tiny-llama", "float32", 4, 2, "cpu") == cpu
    assert cache_key("tiny-llama", "float32", 4, 2, "cuda:0") == f"{cpu}|device=cuda:0"
