import asyncio

import msgpack
import pytest
import torch
from eth_utils import to_checksum_address
from hivemind.proto import runtime_pb2

from ledger.types import Leaf, Voucher, model_id
from node.protocol import (
    CHUNK_BYTES,
    ErrorCode,
    ErrorReply,
    Frame,
    OpenSession,
    ProtocolError,
    PushRequest,
    PushTarget,
    ServerInfo,
    ServerState,
    SignedReceipt,
    StepRequest,
    StepResponse,
    decode_frame,
    encode_frame,
    read_frame,
)


async def _aiter(items):
    for item in items:
        yield item


def roundtrip(frame: Frame, max_bytes: int = 64 * 2**20) -> Frame:
    messages = list(encode_frame(frame, runtime_pb2.ExpertRequest))
    out = asyncio.run(read_frame(_aiter(messages), max_bytes))
    assert out is not None
    return out


def test_large_tensor_frame_splits_under_transport_cap_and_restores_bytes() -> None:
    hidden = torch.randn(2, 700, 576)  # 3.2 MB: more than one unary payload
    mask = torch.ones(2, 700, dtype=torch.int64)
    messages = list(
        encode_frame(Frame({"type": "step"}, [hidden, mask]), runtime_pb2.ExpertRequest)
    )
    assert len(messages) > 1
    assert max(m.ByteSize() for m in messages) < 2 * 2**20
    out = roundtrip(Frame({"type": "step", "step": 3}, [hidden, mask]))
    assert out.metadata == {"type": "step", "step": 3}
    assert torch.equal(out.tensors[0], hidden) and torch.equal(out.tensors[1], mask)


def test_bfloat16_and_empty_frames_roundtrip() -> None:
    h = torch.randn(1, 3, 8).to(torch.bfloat16)
    assert torch.equal(roundtrip(Frame({"type": "x"}, [h])).tensors[0], h)
    assert roundtrip(Frame({"type": "close"})).tensors == []


def test_oversized_frame_is_refused_with_too_large() -> None:
    with pytest.raises(ProtocolError) as e:
        roundtrip(
            Frame({"type": "step"}, [torch.zeros(3 * CHUNK_BYTES // 4)]), max_bytes=CHUNK_BYTES
        )
    assert e.value.code is ErrorCode.TOO_LARGE


def test_lying_tensor_header_is_refused_before_deserializing() -> None:
    t = runtime_pb2.Tensor(buffer=b"\x00" * 12, size=[1000, 1000], dtype="float32")
    header = msgpack.packb({"n": 1, "m": {"type": "step"}}, use_bin_type=True)
    with pytest.raises(ProtocolError) as e:
        decode_frame([runtime_pb2.ExpertRequest(tensors=[t], metadata=header)])
    assert e.value.code is ErrorCode.BAD_TENSOR
    t = runtime_pb2.Tensor(buffer=b"\x00" * 8, size=[1], dtype="object")
    with pytest.raises(ProtocolError, match="not accepted"):
        decode_frame([runtime_pb2.ExpertRequest(tensors=[t], metadata=header)])


@pytest.mark.parametrize(
    "metadata", [b"\xc1garbage", msgpack.packb([1, 2]), msgpack.packb({"n": 1, "m": {}})]
)
def test_garbage_metadata_is_a_bad_request(metadata: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_frame([runtime_pb2.ExpertRequest(metadata=metadata)])
    assert e.value.code is ErrorCode.BAD_REQUEST


def test_messages_roundtrip_through_wire_dicts() -> None:
    v = Voucher(channel_id=4, cumulative_amount=10**30, signature=b"\x01" * 65)
    assert StepRequest.from_wire(StepRequest(7, v).to_wire()) == StepRequest(7, v)
    o = OpenSession(b"\x02" * 32, 0, 3, 128, 2, 4, "bfloat16")
    assert OpenSession.from_wire(o.to_wire()) == o
    leaf = Leaf(
        b"\x03" * 32, model_id("m"), 0, 3, 1, 2, b"\x04" * 32, b"\x05" * 32, b"\x06" * 32, 2**63 - 1
    )
    r = SignedReceipt(leaf, b"\x07" * 65)
    assert SignedReceipt.from_wire(msgpack.unpackb(msgpack.packb(r.to_wire()))) == r
    info = ServerInfo(
        ServerState.ONLINE, 2, 5, 12.5, 1000, "0x" + "ab" * 20, "float32", 4096, 10**18
    )
    back = ServerInfo.from_wire(info.to_wire())
    assert back.price_per_token == 3000 and back.span_end == 5


def test_pipelined_steps_and_pushes_roundtrip_and_a_plain_step_stays_as_before() -> None:
    v = Voucher(channel_id=4, cumulative_amount=10**30, signature=b"\x01" * 65)
    target = PushTarget("QmWtA8FbXdUdnHcxV1N1TTtsxyTbFzZHm8G63Z4sqGGmEd", b"\x02" * 32, 5)
    piped = StepRequest(7, v, push_to=target, pushed_from=to_checksum_address("0x" + "ab" * 20))
    assert StepRequest.from_wire(msgpack.unpackb(msgpack.packb(piped.to_wire()))) == piped
    assert set(StepRequest(7, v).to_wire()) == {"type", "step", "voucher"}  # protocol-6 wire
    leaf = Leaf(
        b"\x03" * 32, model_id("m"), 0, 3, 1, 2, b"\x04" * 32, b"\x05" * 32, b"\x06" * 32, 9
    )
    receipt = SignedReceipt(leaf, b"\x07" * 65)
    for pushed in (None, True, False):
        done = StepResponse(3, receipt, pushed)
        assert StepResponse.from_wire(msgpack.unpackb(msgpack.packb(done.to_wire()))) == done
    for push in (PushRequest(b"\x08" * 32, 2, receipt), PushRequest(b"\x08" * 32, 2)):
        assert PushRequest.from_wire(msgpack.unpackb(msgpack.packb(push.to_wire()))) == push


@pytest.mark.parametrize(
    ("what", "wire"),
    [
        (
            "push_to: a malformed peer",
            {"push_to": {"peer": "../etc", "session": b"\x02" * 32, "step": 0}},
        ),
        ("push_to", {"push_to": {"peer": "Qm1", "session": b"\x02" * 31, "step": 0}}),
        ("push_to", {"push_to": {"peer": "Qm1", "session": b"\x02" * 32, "step": -1}}),
        ("push_to", {"push_to": [1, 2, 3]}),
        ("pushed_from", {"pushed_from": "not an address"}),
    ],
)
def test_a_malformed_pipelined_step_is_a_bad_request(what: str, wire: dict) -> None:
    v = Voucher(channel_id=4, cumulative_amount=10, signature=b"\x01" * 65)
    with pytest.raises(ProtocolError, match=what) as refused:
        StepRequest.from_wire({**StepRequest(1, v).to_wire(), **wire})
    assert refused.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("issued", [None, -1, 2**63, 2**64 - 1, True, 1.5, b"\x00" * 8])
def test_a_leaf_without_a_uint64_issued_at_is_refused(issued: object) -> None:
    leaf = Leaf(
        b"\x03" * 32, model_id("m"), 0, 3, 1, 2, b"\x04" * 32, b"\x05" * 32, b"\x06" * 32, 7
    )
    wire = SignedReceipt(leaf, b"\x07" * 65).to_wire()
    if issued is None:
        del wire["leaf"]["issued"]
    else:
        wire["leaf"]["issued"] = issued
    with pytest.raises(ProtocolError, match="leaf issued at") as e:
        SignedReceipt.from_wire(wire)
    assert e.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "bad",
    [
        {
            "type": "open",
            "session": b"\x01" * 31,
            "span": [0, 2],
            "max_length": 8,
            "batch": 1,
            "channel": 1,
        },
        {
            "type": "open",
            "session": b"\x01" * 32,
            "span": [0],
            "max_length": 8,
            "batch": 1,
            "channel": 1,
        },
        {
            "type": "open",
            "session": b"\x01" * 32,
            "span": [0, 2],
            "max_length": -1,
            "batch": 1,
            "channel": 1,
        },
        {
            "type": "open",
            "session": b"\x01" * 32,
            "span": [0, 2],
            "max_length": 8,
            "batch": 1,
            "channel": 1,
            "dtype": "int8",
        },
    ],
)
def test_malformed_open_is_refused(bad: dict) -> None:
    with pytest.raises(ProtocolError):
        OpenSession.from_wire(bad)


def test_an_error_says_whether_the_steps_voucher_was_spent() -> None:
    spent = ErrorReply(ErrorCode.INTERNAL, "the step failed after payment", True, True)
    assert ErrorReply.from_wire(spent.to_wire()) == spent
    assert ErrorReply.from_wire(spent.to_wire()).spent is True
    refused = ErrorReply(ErrorCode.PAYMENT_BEHIND, "voucher behind", False)
    assert ErrorReply.from_wire(refused.to_wire()).spent is False
    # absent: not spent; anything but a boolean is a malformed reply
    assert ErrorReply.from_wire({"code": "internal", "message": "x"}).spent is False
    with pytest.raises(ProtocolError, match="spent must be a boolean"):
        ErrorReply.from_wire({"code": "internal", "message": "x", "spent": 1})
