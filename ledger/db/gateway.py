"""The gateway's API keys: who may call the OpenAI-compatible gateway, what each may spend,
and what each has spent (`gateway.keys` holds the rules, `gateway.accounts` the bookkeeping).

A key is stored only as the SHA-256 of its secret (`key_hash`): the secret is shown once, when
the key is created, and cannot be read back. `budget` and `spent` are stake-token base units
(`TokenAmount`): `spent` is the sum of the vouchers the gateway's wallet signed for the key's
requests. A revoked key stays, with its spending, for the record; its name cannot be reused.
Functions take a `Session` and never commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from ledger.db.columns import Bytes32, TokenAmount, UtcDateTime, check_amount, check_bytes, utcnow
from ledger.db.models import Base
from ledger.errors import LedgerDbError

NAME_LENGTH = 64  # the longest key name


class GatewayKey(Base):
    """One API key of the gateway: its name, the hash of its secret, its budget and spending."""

    __tablename__ = "gateway_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)  # what people call it
    key_hash: Mapped[bytes] = mapped_column(Bytes32(), unique=True)  # sha256 of the secret
    budget: Mapped[int] = mapped_column(TokenAmount())  # base units the key may spend in all
    spent: Mapped[int] = mapped_column(TokenAmount())  # base units its requests cost so far
    requests: Mapped[int] = mapped_column(BigInteger)  # requests charged (settled) so far
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)  # prompt tokens of those requests
    completion_tokens: Mapped[int] = mapped_column(BigInteger)  # tokens generated for them
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # last settled request
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # None: usable


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= NAME_LENGTH:
        raise LedgerDbError(f"a key name is a non-empty string of at most {NAME_LENGTH} chars")
    return name


def create_gateway_key(session: Session, *, name: str, key_hash: bytes, budget: int) -> GatewayKey:
    """Store a new key `name` (the hash of its secret, its budget); `LedgerDbError` when the
    name or the hash is taken."""
    name = _check_name(name)
    key_hash = check_bytes(key_hash, "key hash")
    budget = check_amount(budget, "budget")
    if gateway_key_by_name(session, name) is not None:
        raise LedgerDbError(f"a key named {name!r} exists already")
    if gateway_key_by_hash(session, key_hash) is not None:
        raise LedgerDbError("a key with this secret exists already")
    row = GatewayKey(
        name=name,
        key_hash=key_hash,
        budget=budget,
        spent=0,
        requests=0,
        prompt_tokens=0,
        completion_tokens=0,
    )
    session.add(row)
    session.flush()
    return row


def gateway_key_by_hash(session: Session, key_hash: bytes) -> GatewayKey | None:
    """The key whose secret hashes to `key_hash` (revoked or not), None if there is none."""
    return session.scalars(
        select(GatewayKey).where(GatewayKey.key_hash == check_bytes(key_hash, "key hash"))
    ).one_or_none()


def gateway_key_by_name(session: Session, name: str) -> GatewayKey | None:
    """The key called `name` (revoked or not), None if there is none."""
    return session.scalars(
        select(GatewayKey).where(GatewayKey.name == _check_name(name))
    ).one_or_none()


def gateway_keys(session: Session) -> list[GatewayKey]:
    """Every key, revoked ones too, oldest first."""
    return list(session.scalars(select(GatewayKey).order_by(GatewayKey.id)))


def charge_gateway_key(
    session: Session, key_id: int, *, cost: int, prompt_tokens: int, completion_tokens: int
) -> GatewayKey:
    """Add one settled request to key `key_id`: `cost` base units, its token counts. The
    charge is recorded even when it takes the key past its budget (the vouchers are signed:
    the money is gone); the budget rules refuse its next request instead."""
    row = session.get(GatewayKey, key_id)
    if row is None:
        raise LedgerDbError(f"no gateway key with id {key_id}")
    cost = check_amount(cost, "cost")
    for value, what in ((prompt_tokens, "prompt tokens"), (completion_tokens, "completion tokens")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LedgerDbError(f"{what} must be a non-negative int")
    row.spent = check_amount(row.spent + cost, "spent")
    row.requests += 1
    row.prompt_tokens += prompt_tokens
    row.completion_tokens += completion_tokens
    row.last_used_at = utcnow()
    session.flush()
    return row


def set_gateway_key_budget(session: Session, name: str, budget: int) -> GatewayKey:
    """Give key `name` a new budget (in all, spending included)."""
    row = gateway_key_by_name(session, name)
    if row is None:
        raise LedgerDbError(f"no gateway key named {name!r}")
    row.budget = check_amount(budget, "budget")
    session.flush()
    return row


def revoke_gateway_key(session: Session, name: str) -> GatewayKey:
    """Revoke key `name`: its requests are refused from now on (its records stay)."""
    row = gateway_key_by_name(session, name)
    if row is None:
        raise LedgerDbError(f"no gateway key named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
