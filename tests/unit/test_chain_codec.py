"""Revert decoding: what a user sees when a transaction reverts."""

from __future__ import annotations

from typing import Any

from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from ledger.abi_codec import AbiCodec, ContractRevert

REGISTRY_ABI: list[dict[str, Any]] = [
    {
        "type": "error",
        "name": "RegistryInsufficientStake",
        "inputs": [
            {"name": "node", "type": "address"},
            {"name": "stake", "type": "uint256"},
            {"name": "needed", "type": "uint256"},
        ],
    },
    {"type": "error", "name": "RegistryEmptyPeerId", "inputs": []},
    {
        "type": "error",
        "name": "Unnamed",
        "inputs": [{"name": "", "type": "bytes32"}],
    },
]
NODE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def selector(signature: str) -> bytes:
    return function_signature_to_4byte_selector(signature)


def test_custom_error_decodes_to_name_and_named_arguments() -> None:
    data = selector("RegistryInsufficientStake(address,uint256,uint256)") + encode(
        ["address", "uint256", "uint256"], [NODE, 1, 2]
    )

    revert = AbiCodec({"NodeRegistry": REGISTRY_ABI}).decode_revert(
        data, action="NodeRegistry.register"
    )

    assert isinstance(revert, ContractRevert)
    assert revert.name == "RegistryInsufficientStake"
    assert revert.arguments == {"node": NODE, "stake": 1, "needed": 2}
    assert revert.contract == "NodeRegistry"
    assert revert.signature == f"RegistryInsufficientStake(node={NODE}, stake=1, needed=2)"
    assert str(revert) == f"NodeRegistry.register reverted: {revert.signature}"


def test_error_without_arguments_and_unnamed_arguments() -> None:
    codec = AbiCodec({"NodeRegistry": REGISTRY_ABI})

    empty = codec.decode_revert(selector("RegistryEmptyPeerId()"))
    unnamed = codec.decode_revert(selector("Unnamed(bytes32)") + b"\x11" * 32)

    assert empty.signature == "RegistryEmptyPeerId()"
    assert unnamed.signature == "Unnamed(arg0=0x" + "11" * 32 + ")"


def test_panic_and_error_string_are_decoded() -> None:
    codec = AbiCodec({})

    panic = codec.decode_revert(selector("Panic(uint256)") + encode(["uint256"], [0x11]))
    message = codec.decode_revert(selector("Error(string)") + encode(["string"], ["no way"]))

    assert panic.name == "Panic"
    assert panic.arguments["code"] == "0x11"
    assert "overflow" in panic.arguments["reason"]
    assert message.signature == "Error(message=no way)"


def test_unknown_selector_and_empty_revert_still_say_what_they_are() -> None:
    codec = AbiCodec({"NodeRegistry": REGISTRY_ABI})

    unknown = codec.decode_revert(bytes.fromhex("deadbeef") + b"\x01" * 32)
    empty = codec.decode_revert(b"")
    truncated = codec.decode_revert(selector("RegistryInsufficientStake(address,uint256,uint256)"))

    assert unknown.name == "UnknownError"
    assert unknown.arguments["selector"] == bytes.fromhex("deadbeef")
    assert empty.name == "Reverted"
    assert truncated.name == "UnknownError"
