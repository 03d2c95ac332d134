"""What a node keeps between a training forward and its backward (`node.training`), and the
backward frames on the wire."""

from __future__ import annotations

import pytest

from ledger.types import Voucher
from node.protocol import (
    BackwardRequest,
    ErrorCode,
    ProtocolError,
    ServerInfo,
    ServerState,
)
from node.training import ForwardLog

SPAN = (3, 6)
INPUT, MASK = b"\x01" * 32, b"\x02" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(log: ForwardLog, session: bytes, channel: int = 1) -> None:
    log.record(session, span=SPAN, input_hash=INPUT, mask_hash=MASK, channel_id=channel)


def take(log: ForwardLog, session: bytes, **changed: object) -> object:
    fields: dict[str, object] = dict(span=SPAN, input_hash=INPUT, mask_hash=MASK, channel_id=1)
    return log.take(session, **(fields | changed))  # type: ignore[arg-type]


def test_a_forward_has_one_backward_on_its_own_inputs_span_and_channel() -> None:
    log = ForwardLog()
    record(log, b"a" * 32)
    for changed, code in (
        ({"span": (0, 3)}, ErrorCode.NO_FORWARD),
        ({"input_hash": b"\x09" * 32}, ErrorCode.NO_FORWARD),
        ({"mask_hash": b"\x09" * 32}, ErrorCode.NO_FORWARD),
        ({"channel_id": 2}, ErrorCode.WRONG_CHANNEL),
    ):
        with pytest.raises(ProtocolError) as refused:
            take(log, b"a" * 32, **changed)
        assert refused.value.code is code
    taken = take(log, b"a" * 32)
    with pytest.raises(ProtocolError, match="already propagated back"):
        take(log, b"a" * 32)
    log.restore(b"a" * 32, taken)  # its backward was refused: it may come again
    take(log, b"a" * 32)


def test_forwards_are_kept_for_a_while_and_the_oldest_go_first() -> None:
    clock = Clock()
    log = ForwardLog(ttl=10, max_entries=2, clock=clock)
    record(log, b"a" * 32)
    clock.now = 5
    record(log, b"b" * 32)
    record(log, b"c" * 32)  # over the bound: "a" goes
    assert len(log) == 2
    with pytest.raises(ProtocolError):
        take(log, b"a" * 32)
    clock.now = 14.9
    taken = take(log, b"b" * 32)
    clock.now = 15.1  # "b" and "c" are older than 10 s now
    log.restore(b"b" * 32, taken)
    for session in (b"b" * 32, b"c" * 32):
        with pytest.raises(ProtocolError, match="older than 10 s"):
            take(log, session)
    assert len(log) == 0


def test_backward_frames_and_prices_round_trip() -> None:
    voucher = Voucher(7, 1000, b"\x05" * 65)
    request = BackwardRequest(b"s" * 32, 3, 6, voucher)
    assert BackwardRequest.from_wire(request.to_wire()) == request
    with pytest.raises(ProtocolError) as refused:
        BackwardRequest.from_wire(request.to_wire() | {"session": b"short"})
    assert refused.value.code is ErrorCode.BAD_REQUEST
    info = ServerInfo(
        state=ServerState.ONLINE,
        span_start=3,
        span_end=6,
        throughput=10.0,
        price_per_token_per_block=5,
        eth_address="0x" + "ab" * 20,
        dtype="float32",
        cache_tokens_left=100,
        backward_price_per_token_per_block=10,
    )
    again = ServerInfo.from_wire(info.to_wire())
    assert again.backward_price_per_token == 30 and again.price_per_token == 15
    older = info.to_wire()
    del older["bprice"]  # a record without it: the node serves no backward
    assert ServerInfo.from_wire(older).backward_price_per_token == 0
