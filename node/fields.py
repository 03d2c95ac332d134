"""Checks of untrusted scalar fields: the one vocabulary for values read from peers.

Every msgpack value a node, client or verifier reads from someone else (wire frames, DHT
records, shared verdicts) goes through these before it is used. Each check returns the value,
typed, or raises `FieldError` naming the field and what it must be. The checks know nothing of
where a value came from: each edge turns `FieldError` into its own refusal (`node.protocol`
into `ProtocolError(BAD_REQUEST)`, `verifier.verdicts` into a malformed shared verdict).
"""

from __future__ import annotations

from typing import Any

from eth_utils import is_address, to_checksum_address

UINT256_MAX = 2**256 - 1
MAX_TEXT_CHARS = 10_000  # longest string field a peer may send
_SHOWN_CHARS = 300  # how much of a refusal's message may quote the value


class FieldError(ValueError):
    """An untrusted value that is not what its field must hold; the message says both."""


def mapping(raw: Any, what: str) -> dict[str, Any]:
    """`raw` if it is a map (msgpack's dict)."""
    if not isinstance(raw, dict):
        raise FieldError(f"{what} must be a map")
    return raw


def integer(raw: Any, what: str, lo: int = 0, hi: int = UINT256_MAX) -> int:
    """`raw` if it is an int (not a bool) in [lo, hi]."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise FieldError(f"{what} must be an integer in [{lo}, {hi}], got {raw!r}"[:_SHOWN_CHARS])
    return raw


def text(raw: Any, what: str) -> str:
    """`raw` if it is a string of at most `MAX_TEXT_CHARS` characters."""
    if not isinstance(raw, str) or len(raw) > MAX_TEXT_CHARS:
        raise FieldError(f"{what} must be a string")
    return raw


def fixed_bytes(raw: Any, what: str, length: int) -> bytes:
    """`raw` if it is bytes of exactly `length` (a hash, a signature)."""
    if not isinstance(raw, bytes) or len(raw) != length:
        raise FieldError(f"{what} must be {length} bytes")
    return raw


def address(raw: Any, what: str) -> str:
    """The checksummed form of `raw` if it is an Ethereum address (hex, any case)."""
    if not isinstance(raw, str) or not is_address(raw):
        raise FieldError(f"{what} must be an address")
    return to_checksum_address(raw)


__all__ = [
    "MAX_TEXT_CHARS",
    "UINT256_MAX",
    "FieldError",
    "address",
    "fixed_bytes",
    "integer",
    "mapping",
    "text",
]
