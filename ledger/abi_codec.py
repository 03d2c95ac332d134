"""Decoding what the chain answers against our ABIs: reverts into `ContractRevert` (the
Solidity error's name and arguments; Panic and Error(string) too) and logs into `DecodedEvent`.

`ledger.chain` uses it for every call and receipt and re-exports its names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import (
    abi_to_signature,
    event_abi_to_log_topic,
    function_signature_to_4byte_selector,
    get_abi_input_names,
    get_abi_input_types,
    to_checksum_address,
)
from web3 import Web3
from web3.exceptions import Web3Exception

from ledger.errors import LedgerError
from ledger.units import TokenUnits, format_time

logger = logging.getLogger(__name__)

PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)
ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_REASONS = {
    0x00: "generic compiler panic",
    0x01: "assert failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "corrupt storage byte array",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function",
}


# Which arguments of which errors people read as something other than a plain number: every
# unsigned argument of the errors our contracts declare (contracts/interfaces/*.sol) and the
# OpenZeppelin ERC20 errors they raise is either here or a plain number (an id, a count, an
# index, basis points). tests/unit/test_chain_codec.py holds the ABIs to this.
# Stake-token amounts, in base units on-chain: shown as "100 SWARM" by `describe`.
TOKEN_AMOUNT_ARGUMENTS: Mapping[str, frozenset[str]] = {
    "StakeInsufficient": frozenset({"stake", "needed"}),
    "StakeUnbondExceedsStake": frozenset({"amount", "stake"}),
    "StakeRebondExceedsUnbonding": frozenset({"amount", "unbonding"}),
    "ChannelsAmountExceedsDeposit": frozenset({"cumulativeAmount", "deposit"}),
    "ChannelsVoucherNotNewer": frozenset({"cumulativeAmount", "redeemed"}),
    "ERC20InsufficientBalance": frozenset({"balance", "needed"}),
    "ERC20InsufficientAllowance": frozenset({"allowance", "needed"}),
    "SafeERC20FailedDecreaseAllowance": frozenset({"currentAllowance", "requestedDecrease"}),
}
# Chain times, in Unix seconds: shown as UTC dates.
TIME_ARGUMENTS: Mapping[str, frozenset[str]] = {
    "StakeUnbondingLocked": frozenset({"until"}),
    "ChannelsExpired": frozenset({"expiry"}),
    "ChannelsNotExpired": frozenset({"expiry"}),
    "ChannelsInvalidExpiry": frozenset({"expiry", "earliest", "latest"}),
    "SlasherAnswerTooLate": frozenset({"answerBy"}),
    "SlasherChallengeStillOpen": frozenset({"answerBy"}),
    "SlasherChallengeTooEarly": frozenset({"opensAt"}),
    "SlasherChallengeTooLate": frozenset({"closedAt"}),
    "SlasherChallengeWindowClosed": frozenset({"closedAt"}),
    "SlasherCommittedTooLate": frozenset({"committedAt", "deadline"}),
    "ERC2612ExpiredSignature": frozenset({"deadline"}),
}
# Durations, in seconds: shown with their unit.
DURATION_ARGUMENTS: Mapping[str, frozenset[str]] = {
    "SlasherChallengeWindowTooLong": frozenset({"challengeWindow", "unbondingDelay"}),
    "SlasherReceiptWindowsTooLong": frozenset({"total", "unbondingDelay"}),
}


class ChainError(LedgerError):
    """The chain cannot be reached or answered something unusable."""


class ContractRevert(ChainError):
    """A call reverted; `name` and `arguments` are the decoded Solidity error.

    `str()` and `signature` read like the Solidity error, exact and in base units, for logs and
    JSON: `StakeInsufficient(account=0x.., stake=10000000000000000000, needed=...)`;
    `describe(units)` is what a person reads: `StakeInsufficient(account=0x.., stake=10 SWARM,
    needed=100 SWARM)`, times as UTC dates (see `TOKEN_AMOUNT_ARGUMENTS`, `TIME_ARGUMENTS`).
    `Panic` carries `code` (and a `reason`), `Error(string)` a `message`; a selector no known ABI
    declares comes as `UnknownError(selector=0x..)` with the raw `data`.
    """

    def __init__(
        self,
        name: str,
        args: Mapping[str, Any],
        data: bytes = b"",
        *,
        contract: str | None = None,
        action: str | None = None,
    ) -> None:
        self.name = name
        self.arguments = dict(args)
        self.data = bytes(data)
        self.contract = contract  # the ABI (contract name) that declares the error, if known
        self.action = action  # what was attempted, e.g. "NodeRegistry.register"
        super().__init__(self.signature)

    @property
    def signature(self) -> str:
        """The error as Solidity would print it: `Name(arg=value, ...)`."""
        inner = ", ".join(f"{key}={format_value(value)}" for key, value in self.arguments.items())
        return f"{self.name}({inner})"

    def describe(self, units: TokenUnits | None) -> str:
        """The error for people: `Name(arg=value, ...)` with stake-token amounts in `units`
        ("100 SWARM"; left in base units when `units` is None), times as UTC dates and
        durations in seconds."""
        amounts = TOKEN_AMOUNT_ARGUMENTS.get(self.name, frozenset())
        times = TIME_ARGUMENTS.get(self.name, frozenset())
        durations = DURATION_ARGUMENTS.get(self.name, frozenset())

        def shown(key: str, value: Any) -> str:
            if not isinstance(value, int) or isinstance(value, bool):
                return format_value(value)
            if key in amounts and units is not None:
                return units.show(value)
            if key in times:
                return format_time(value)
            if key in durations:
                return f"{value} s"
            return format_value(value)

        inner = ", ".join(f"{key}={shown(key, value)}" for key, value in self.arguments.items())
        return f"{self.name}({inner})"

    def explain(self, units: TokenUnits | None) -> str:
        """`describe` after what was attempted: `NodeRegistry.register reverted: ...`."""
        described = self.describe(units)
        return f"{self.action} reverted: {described}" if self.action else described

    def __str__(self) -> str:
        return f"{self.action} reverted: {self.signature}" if self.action else self.signature


def format_value(value: Any) -> str:
    """Render a decoded ABI value for people: bytes as 0x-hex, sequences as [a, b]."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return str(value)


def _checksum_addresses(abi_type: str, value: Any) -> Any:
    """eth_abi decodes addresses in lower case; people read them checksummed."""
    if abi_type == "address":
        return to_checksum_address(value)
    if abi_type.startswith("address[") and isinstance(value, list | tuple):
        return type(value)(to_checksum_address(v) for v in value)
    return value


@dataclass(frozen=True)
class DecodedEvent:
    """One log decoded against the ABI of the contract that emitted it."""

    name: str  # event name, e.g. "BatchCommitted"
    contract: str  # contract (ABI) name, e.g. "Commitments"
    address: str  # checksummed emitter
    args: Mapping[str, Any]
    block_number: int
    log_index: int
    tx_hash: str  # 0x-hex


class AbiCodec:
    """Decodes reverts and logs against a set of named ABIs."""

    def __init__(self, abis: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        self.abis = {name: list(abi) for name, abi in abis.items()}
        self._errors: dict[bytes, tuple[str, Mapping[str, Any]]] = {}
        self._events: dict[bytes, list[tuple[str, Mapping[str, Any]]]] = {}
        for contract, abi in self.abis.items():
            for item in abi:
                if item.get("type") == "error":
                    signature = abi_to_signature(item)  # type: ignore[arg-type]
                    selector = function_signature_to_4byte_selector(signature)
                    self._errors.setdefault(selector, (contract, item))
                elif item.get("type") == "event" and not item.get("anonymous", False):
                    topic = event_abi_to_log_topic(item)  # type: ignore[arg-type]
                    self._events.setdefault(topic, []).append((contract, item))

    def decode_revert(self, data: bytes, *, action: str | None = None) -> ContractRevert:
        """The `ContractRevert` for revert `data` (selector + ABI-encoded arguments)."""
        data = bytes(data)
        if not data:
            return ContractRevert("Reverted", {}, data, action=action)
        selector, body = data[:4], data[4:]
        try:
            if selector == PANIC_SELECTOR:
                (code,) = abi_decode(["uint256"], body)
                reason = PANIC_REASONS.get(code, "unknown panic code")
                return ContractRevert(
                    "Panic", {"code": hex(code), "reason": reason}, data, action=action
                )
            if selector == ERROR_STRING_SELECTOR:
                (message,) = abi_decode(["string"], body)
                return ContractRevert("Error", {"message": message}, data, action=action)
            if selector in self._errors:
                contract, item = self._errors[selector]
                types = get_abi_input_types(item)  # type: ignore[arg-type]
                values = [
                    _checksum_addresses(t, v)
                    for t, v in zip(types, abi_decode(types, body), strict=True)
                ]
                names = [
                    name or f"arg{i}"
                    for i, name in enumerate(get_abi_input_names(item))  # type: ignore[arg-type]
                ]
                return ContractRevert(
                    item["name"],
                    dict(zip(names, values, strict=True)),
                    data,
                    contract=contract,
                    action=action,
                )
        except DecodingError:
            logger.warning("cannot decode revert data %s", data.hex())
        return ContractRevert(
            "UnknownError", {"selector": selector, "data": body}, data, action=action
        )

    def decode_log(
        self, log: Mapping[str, Any], w3: Web3, emitter: str | None = None
    ) -> DecodedEvent | None:
        """Decode one receipt/`eth_getLogs` entry; None when no known event matches.
        `emitter` names the ABI of the contract at the log's address, when known: it is tried
        first (an ERC20 `Transfer` is the StakeToken's, not the abstract ERC20's)."""
        topics = log.get("topics") or []
        if not topics:
            return None
        candidates = sorted(
            self._events.get(bytes(topics[0]), []), key=lambda found: found[0] != emitter
        )
        for contract, item in candidates:
            event_contract = w3.eth.contract(abi=[item])
            try:
                decoded = event_contract.events[item["name"]]().process_log(log)  # type: ignore[arg-type]
            except (Web3Exception, DecodingError, TypeError, ValueError):
                continue  # same signature, other indexing: try the next ABI
            return DecodedEvent(
                name=decoded["event"],
                contract=contract,
                address=to_checksum_address(decoded["address"]),
                args=dict(decoded["args"]),
                block_number=int(decoded["blockNumber"]),
                log_index=int(decoded["logIndex"]),
                tx_hash="0x" + bytes(decoded["transactionHash"]).hex(),
            )
        return None
