"""Revert decoding: what a user sees when a transaction reverts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from ledger.abi_codec import (
    DURATION_ARGUMENTS,
    TIME_ARGUMENTS,
    TOKEN_AMOUNT_ARGUMENTS,
    AbiCodec,
    ContractRevert,
)
from ledger.units import TokenUnits

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


STAKE_ABI: list[dict[str, Any]] = [
    {
        "type": "error",
        "name": "StakeInsufficient",
        "inputs": [
            {"name": "account", "type": "address"},
            {"name": "stake", "type": "uint256"},
            {"name": "needed", "type": "uint256"},
        ],
    },
    {
        "type": "error",
        "name": "StakeUnbondingLocked",
        "inputs": [
            {"name": "account", "type": "address"},
            {"name": "until", "type": "uint64"},
        ],
    },
]
SWARM = TokenUnits(decimals=18, symbol="SWARM")


def test_describe_shows_token_amounts_with_the_symbol_and_keeps_the_signature_exact() -> None:
    data = selector("StakeInsufficient(address,uint256,uint256)") + encode(
        ["address", "uint256", "uint256"], [NODE, 10 * 10**18, 100 * 10**18]
    )

    revert = AbiCodec({"StakeRegistry": STAKE_ABI}).decode_revert(
        data, action="NodeRegistry.register"
    )

    assert (
        revert.describe(SWARM)
        == f"StakeInsufficient(account={NODE}, stake=10 SWARM, needed=100 SWARM)"
    )
    assert revert.explain(SWARM) == f"NodeRegistry.register reverted: {revert.describe(SWARM)}"
    # logs and JSON keep the exact base units
    assert revert.signature == (
        f"StakeInsufficient(account={NODE}, stake=10000000000000000000, "
        "needed=100000000000000000000)"
    )


def test_describe_shows_chain_times_as_dates() -> None:
    data = selector("StakeUnbondingLocked(address,uint64)") + encode(
        ["address", "uint64"], [NODE, 1796587442]
    )

    revert = AbiCodec({"StakeRegistry": STAKE_ABI}).decode_revert(data)

    assert revert.describe(SWARM) == (
        f"StakeUnbondingLocked(account={NODE}, until=2026-12-06 20:04:02 UTC)"
    )
    assert "1796587442" not in revert.describe(None)


def _declared_errors() -> dict[str, list[tuple[str, str]]]:
    """Every custom error our contracts declare: name -> [(type, argument name)]."""
    root = Path(__file__).resolve().parents[2] / "contracts"
    declared: dict[str, list[tuple[str, str]]] = {}
    for source in [*root.glob("*.sol"), *(root / "interfaces").glob("*.sol")]:
        for name, params in re.findall(r"\berror\s+(\w+)\s*\(([^)]*)\)\s*;", source.read_text()):
            declared[name] = [
                (kind, arg) for kind, arg in (p.split()[:2] for p in params.split(",") if p.strip())
            ]
    return declared


# Unsigned error arguments that are plain numbers (ids, counts, indexes, bits, basis points).
PLAIN_NUMBERS = {
    "channelId", "batchId", "challengeId", "leafIndex", "leafCount", "maxLeaves", "spanStart",
    "spanEnd", "bps", "quorum", "reason", "index", "provided",
}  # fmt: skip


def test_every_amount_and_time_argument_of_our_errors_is_shown_for_people() -> None:
    """A new error with a uint argument must be classified: an amount, a time, a duration or a
    plain number — else a person would read raw base units or Unix seconds."""
    declared = _declared_errors()
    assert "StakeInsufficient" in declared and "ChannelsInvalidExpiry" in declared
    unclassified = [
        f"{error}.{arg}"
        for error, params in declared.items()
        for kind, arg in params
        if kind.startswith("uint")
        and arg not in TOKEN_AMOUNT_ARGUMENTS.get(error, ())
        and arg not in TIME_ARGUMENTS.get(error, ())
        and arg not in DURATION_ARGUMENTS.get(error, ())
        and arg not in PLAIN_NUMBERS
    ]
    assert unclassified == []
    misnamed = [
        f"{error}.{arg}"
        for table in (TOKEN_AMOUNT_ARGUMENTS, TIME_ARGUMENTS, DURATION_ARGUMENTS)
        for error, args in table.items()
        if not error.startswith(("ERC20", "ERC2612", "SafeERC20"))
        for arg in args
        if ("uint256", arg) not in declared.get(error, [])
        and ("uint64", arg) not in declared.get(error, [])
    ]
    assert misnamed == []
