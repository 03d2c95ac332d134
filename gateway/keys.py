"""API keys and budgets, as pure functions: making a key, reading one from a request,
and what a request may be charged.

A key is `sk-ss-` followed by 43 url-safe base64 characters (32 random bytes); the gateway
stores only its SHA-256 (`key_hash`), so a leaked database leaks no key.

Budgets (stake-token base units). A request is admitted (`admit`) in this order:
1. a revoked key is refused (401, as an unknown one);
2. a key whose spending reached its budget is refused (402) before anything else is done;
3. the request's reservation (`reservation`: every position the servers compute for it, the
   prompt and `max_tokens` per choice, at the price of the route through the swarm) must fit
   what is left of the budget after the reservations of the key's requests in flight (402).
Without a failover a request never spends more than its reservation. A failover in the
middle of a request (a server replaced, its history replayed to the new one, paid again) can
take it past; generation then goes on only while each step fits in the reservation plus what
the key has beyond all its reservations, and stops (finish reason `length`) before a step that
does not (`within_reservation`). When the request ends, the key is charged what its vouchers
actually came to, and the reservation is released. Only the replay itself can take a key past
its budget (the vouchers are signed: the key is charged them); its next request is then
refused.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

KEY_PREFIX = "sk-ss-"
_SECRET_BYTES = 32
KEY_LENGTH = len(KEY_PREFIX) + 43  # 32 bytes in unpadded url-safe base64


class KeyFormatError(ValueError):
    """An Authorization header that holds no well-formed key."""


def new_key() -> tuple[str, bytes]:
    """A fresh secret key and its hash (what is stored)."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    key = KEY_PREFIX + secret
    return key, key_hash(key)


def key_hash(key: str) -> bytes:
    """The SHA-256 of a key's text: what the ledger stores and looks keys up by."""
    return hashlib.sha256(key.encode()).digest()


def bearer_key(header: str | None) -> str:
    """The key of an `Authorization: Bearer KEY` header; `KeyFormatError` saying what is
    wrong with a missing or malformed one."""
    if header is None or not header.strip():
        raise KeyFormatError(
            "no API key: send it as `Authorization: Bearer sk-ss-...` (create one with "
            "`stakeswarm gateway keys create`)"
        )
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise KeyFormatError("the Authorization header must be `Bearer KEY`")
    if not key.startswith(KEY_PREFIX) or len(key) != KEY_LENGTH:
        raise KeyFormatError("this is not a gateway API key (they start with sk-ss-)")
    return key


@dataclass(frozen=True)
class KeyState:
    """What the budget rules need of one key."""

    name: str
    budget: int  # base units it may spend in all
    spent: int  # base units charged so far
    reserved: int  # base units held by its requests in flight
    revoked: bool


class KeyRevoked(Exception):
    """The key was revoked."""


class OverBudget(Exception):
    """The key cannot pay for the request (see `admit`)."""

    def __init__(self, message: str, *, needed: int, left: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.left = left


def left_of(key: KeyState) -> int:
    """Base units the key may still reserve (never below 0)."""
    return max(0, key.budget - key.spent - key.reserved)


def admit(key: KeyState, reserve: int) -> None:
    """Whether a request of `key` reserving `reserve` base units may start (the module doc's
    order): `KeyRevoked`, or `OverBudget` with what it needs and what is left."""
    if reserve < 0:
        raise ValueError("a reservation is never negative")
    if key.revoked:
        raise KeyRevoked(f"the key {key.name!r} was revoked")
    if key.spent >= key.budget:
        raise OverBudget(
            f"the key {key.name!r} spent its budget ({key.spent} of {key.budget} base units)",
            needed=reserve,
            left=0,
        )
    left = left_of(key)
    if reserve > left:
        raise OverBudget(
            f"this request may cost up to {reserve} base units (its prompt and max_tokens at "
            f"the route's price), the key {key.name!r} has {left} left of {key.budget} "
            f"({key.spent} spent, {key.reserved} held by requests in flight); lower max_tokens "
            "or raise the key's budget",
            needed=reserve,
            left=left,
        )


def reservation(*, prompt_tokens: int, max_tokens: int, choices: int, price: int) -> int:
    """The most a request may cost without a failover: the servers compute the prompt and
    every generated token but the last for each choice, at `price` base units per token
    through the whole route (the prompt and all `max_tokens` are counted: a bound, not a
    guess)."""
    if min(prompt_tokens, max_tokens, choices, price) < 0:
        raise ValueError("token counts and prices are never negative")
    return choices * (prompt_tokens + max_tokens) * price


def within_reservation(*, spent: int, next_step: int, reserved: int) -> bool:
    """Whether a step costing `next_step` may follow `spent` within a reservation of
    `reserved` base units."""
    return spent + next_step <= reserved
