"""Exceptions of the `ledger` package.

Every error the package raises on purpose derives from `LedgerError`, so a caller (the CLI,
a node's handler) can catch the package's failures narrowly and show their message as is:
messages name what was wrong and never include secrets (passwords, private keys).
Other ledger modules add their own subclasses here.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every deliberate error in `ledger`."""


class TypedDataError(LedgerError):
    """A value does not fit its EIP-712 / ABI type (wrong length, out of range, bad address)."""


class SignatureError(LedgerError):
    """A signature is malformed (length, v, s out of range or malleable) and recovers no signer."""


class MerkleError(LedgerError):
    """A Merkle tree or proof input is invalid (no leaves, wrong node length, bad index)."""


class WalletError(LedgerError):
    """A keystore cannot be created, found, read or unlocked."""


class LedgerDbError(LedgerError):
    """The ledger database refuses an operation (unknown row, wrong state, bad value)."""


class VoucherError(LedgerDbError):
    """A voucher is not acceptable for its channel (not higher than the one already held)."""


class EquivocationError(LedgerDbError):
    """A second, different leaf for a (session, model, span, step) slot that already has one.

    Signing both would be slashable equivocation, so the ledger refuses to store it.
    """


class LedgerDamagedError(LedgerDbError):
    """The ledger database file is damaged or not a database (a failed integrity check, a
    write-ahead log with a garbage header): it cannot be trusted with what is owed or committed.
    """
