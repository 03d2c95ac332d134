"""The checks of untrusted fields (node.fields) and how each edge refuses with them: the wire
as `ProtocolError(BAD_REQUEST)`, shared verdicts as a malformed shared verdict."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account

from node import fields
from node.fields import FieldError
from node.protocol import ErrorCode, ErrorReply, ProtocolError, RevealRequest, voucher_from_wire
from verifier.verdicts import WithheldAccusation

ADDRESS = "0x" + "ab" * 20


@pytest.mark.parametrize("value", [0, 7, 2**32 - 1])
def test_an_integer_in_its_range_is_returned(value: int) -> None:
    assert fields.integer(value, "index", 0, 2**32 - 1) == value


@pytest.mark.parametrize("value", [-1, 2**32, True, False, 1.0, "3", b"\x03", None])
def test_an_integer_outside_its_range_or_of_another_type_is_refused(value: Any) -> None:
    with pytest.raises(FieldError, match=r"index must be an integer in \[0, 4294967295\]"):
        fields.integer(value, "index", 0, 2**32 - 1)


def test_an_integer_defaults_to_the_uint256_range_and_quotes_little_of_the_value() -> None:
    assert fields.integer(2**256 - 1, "amount") == 2**256 - 1
    with pytest.raises(FieldError, match="got -1"):
        fields.integer(-1, "amount")
    with pytest.raises(FieldError) as refused:
        fields.integer("x" * 100_000, "amount")
    assert len(str(refused.value)) <= 300


def test_bytes_must_have_their_exact_length() -> None:
    assert fields.fixed_bytes(b"\x01" * 32, "hash", 32) == b"\x01" * 32
    for bad in (b"\x01" * 31, b"\x01" * 33, "01" * 32, bytearray(32), None):
        with pytest.raises(FieldError, match="hash must be 32 bytes"):
            fields.fixed_bytes(bad, "hash", 32)


def test_an_address_comes_back_checksummed() -> None:
    account = Account.create()
    assert fields.address(account.address.lower(), "node") == account.address
    for bad in ("nobody", ADDRESS[:-2], b"\xab" * 20, None):
        with pytest.raises(FieldError, match="node must be an address"):
            fields.address(bad, "node")


def test_text_and_maps() -> None:
    assert fields.text("x" * fields.MAX_TEXT_CHARS, "model") == "x" * fields.MAX_TEXT_CHARS
    for bad in ("x" * (fields.MAX_TEXT_CHARS + 1), b"model", 3):
        with pytest.raises(FieldError, match="model must be a string"):
            fields.text(bad, "model")
    assert fields.mapping({"a": 1}, "leaf") == {"a": 1}
    with pytest.raises(FieldError, match="leaf must be a map"):
        fields.mapping([("a", 1)], "leaf")


def reveal_wire(**change: Any) -> dict[str, Any]:
    wire = RevealRequest(ADDRESS, 1, 0, 1_000, ADDRESS, b"\x01" * 65).to_wire()
    return {**wire, **change}


@pytest.mark.parametrize(
    "change, named",
    [
        ({"node": "nobody"}, "node must be an address"),
        ({"batch": 0}, "batch must be an integer"),
        ({"index": 2**32}, "index must be an integer"),
        ({"sig": b"\x01" * 64}, "signature must be 65 bytes"),
    ],
)
def test_a_bad_field_on_the_wire_is_a_bad_request(change: dict[str, Any], named: str) -> None:
    with pytest.raises(ProtocolError, match=named) as refused:
        RevealRequest.from_wire(reveal_wire(**change))
    assert refused.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(ProtocolError, match="voucher must be a map") as refused:
        voucher_from_wire([1, 2])
    assert refused.value.code is ErrorCode.BAD_REQUEST


def test_an_error_reply_with_a_code_that_is_no_string_is_malformed() -> None:
    # an unknown code string reads as INTERNAL; a code of another type is a malformed reply
    assert ErrorReply.from_wire({"code": "no_such_code"}).code is ErrorCode.INTERNAL
    with pytest.raises(ProtocolError, match="code must be a string") as refused:
        ErrorReply.from_wire({"code": 3})
    assert refused.value.code is ErrorCode.BAD_REQUEST


def test_a_bad_field_in_a_shared_verdict_names_it() -> None:
    wire = {"kind": "withheld", "node": ADDRESS, "batch": 9, "index": 4, "signer": ADDRESS}
    with pytest.raises(ProtocolError, match="shared verdict: signature must be 65 bytes") as bad:
        WithheldAccusation.from_wire({**wire, "sig": b"short"})
    assert bad.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(ProtocolError, match=r"shared verdict: batch must be an integer in \[1, "):
        WithheldAccusation.from_wire({**wire, "batch": 0, "sig": b"\x01" * 65})
