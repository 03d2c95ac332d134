"""Column types of the ledger database: how chain values are stored, exactly and portably.

- `TokenAmount`: token base units (uint256, beyond 64 bits) as a 78-digit zero-padded decimal
  string. Exact on every backend (SQLite's NUMERIC would round through a float), and the
  fixed width keeps SQL `<`, `>`, `ORDER BY` and `MAX` numeric. Python sees `int`.
- `Bytes32`: hashes and ids as 32 raw bytes.
- `EthAddress`: checksummed 0x-addresses; any case is accepted on the way in.
- `UtcDateTime`: timezone-aware UTC datetimes in and out (SQLite keeps no zone).

The `check_*` functions validate values the same way; repository functions call them first so
that bad input fails with a plain `LedgerDbError` (a column type raising while a flush binds
parameters reaches the caller wrapped in SQLAlchemy's `StatementError`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from eth_utils import is_address, to_checksum_address
from sqlalchemy import DateTime, Dialect, LargeBinary, String
from sqlalchemy.types import TypeDecorator

from ledger.errors import LedgerDbError

UINT256_MAX: Final = 2**256 - 1
AMOUNT_DIGITS: Final = 78  # len(str(2**256 - 1))
BIGINT_MAX: Final = 2**63 - 1  # the largest value of a BigInteger column


def utcnow() -> datetime:
    """Now, timezone-aware UTC: the default of every timestamp column."""
    return datetime.now(UTC)


def check_amount(value: object, what: str = "amount") -> int:
    """`value` if it is a uint256 int, else `LedgerDbError` naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerDbError(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value <= UINT256_MAX:
        raise LedgerDbError(f"{what} must fit uint256, got {value}")
    return value


def check_int(value: object, what: str, *, low: int = 0, high: int = BIGINT_MAX) -> int:
    """`value` if it is an int in `[low, high]`, else `LedgerDbError` naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerDbError(f"{what} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise LedgerDbError(f"{what} must be in [{low}, {high}], got {value}")
    return value


def check_bytes(value: object, what: str, length: int = 32) -> bytes:
    """`value` as bytes if it is exactly `length` bytes long, else `LedgerDbError`."""
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        shown = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise LedgerDbError(f"{what} must be exactly {length} bytes, got {shown}")
    return bytes(value)


def check_address(value: object, what: str = "address") -> str:
    """`value` checksummed if it is a 20-byte 0x-address, else `LedgerDbError`."""
    if not isinstance(value, str) or not is_address(value):
        raise LedgerDbError(f"{what} must be a 20-byte 0x-address, got {value!r}")
    return to_checksum_address(value)


def check_time(value: object, what: str = "timestamp") -> datetime:
    """`value` in UTC if it is a timezone-aware datetime, else `LedgerDbError`."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise LedgerDbError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


class TokenAmount(TypeDecorator[int]):
    """A uint256 amount of token base units, stored as a fixed-width decimal string."""

    impl = String(AMOUNT_DIGITS)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return f"{check_amount(value, 'a token amount'):0{AMOUNT_DIGITS}d}"

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


class Bytes32(TypeDecorator[bytes]):
    """Exactly 32 bytes: a hash, a session id, a model id, a Merkle root."""

    impl = LargeBinary(32)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        return None if value is None else check_bytes(value, "a bytes32 column")

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        return None if value is None else bytes(value)


class EthAddress(TypeDecorator[str]):
    """A 20-byte account or contract address, stored and returned checksummed."""

    impl = String(42)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else check_address(value)


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time; naive datetimes are refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else check_time(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
