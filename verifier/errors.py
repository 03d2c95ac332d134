"""Exceptions of the verifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.protocol import ErrorCode
    from verifier.audit import ProvenLeaf


class VerifierError(Exception):
    """Base class of the verifier's errors."""


class VerifierConfigError(VerifierError, ValueError):
    """A verifier configuration that cannot work."""


class RevealUnavailableError(VerifierError):
    """No reveal came back from the node (unreachable, refused, timed out, malformed); `code`
    is the node's error code when it refused."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class InvalidOpeningError(VerifierError):
    """What a node revealed does not hold up. With `proven` (the audited leaf and its Merkle
    proof, checked against the chain) the failure is provable on-chain as withheld; without,
    the node has not even shown the sampled leaf."""

    def __init__(self, message: str, proven: ProvenLeaf | None = None) -> None:
        super().__init__(message)
        self.proven = proven
