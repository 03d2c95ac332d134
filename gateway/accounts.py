"""`Accounts`: the API keys' bookkeeping over the ledger database, for the gateway's requests.

A request authenticates (`authenticate`: the key's hash looked up; 401 for an unknown or
revoked key), reserves what it may cost (`reserve`, by the rules of `gateway.keys.admit`; 402
when the key cannot pay), and, when it ends, is settled (`settle`): the key is charged what its
vouchers came to and the reservation is released. Reservations live in this process only (a
restarted gateway has no request in flight); spending is in the database, so `stakeswarm
gateway keys show` sees it at once. One lock orders reservations and settlements, so two
requests of one key never both take the last of its budget.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from gateway.errors import BudgetExhausted, Unauthorized
from gateway.keys import KeyFormatError, KeyRevoked, KeyState, OverBudget, admit, bearer_key
from gateway.keys import key_hash as hash_of
from ledger.db import Ledger, charge_gateway_key, gateway_key_by_hash, gateway_keys
from ledger.db.gateway import GatewayKey

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRef:
    """An authenticated key, as a request carries it."""

    id: int
    name: str


@dataclass(frozen=True)
class Hold:
    """A request's reservation on its key (base units), until it is settled."""

    key: KeyRef
    amount: int


class Accounts:
    """The keys' budgets, reservations and charges (see the module doc)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._reserved: dict[int, int] = {}  # key id -> base units held by requests in flight

    def authenticate(self, header: str | None) -> KeyRef:
        """The key of an `Authorization` header; `Unauthorized` for none, a malformed one, an
        unknown one or a revoked one."""
        try:
            key = bearer_key(header)
        except KeyFormatError as exc:
            raise Unauthorized(str(exc)) from None
        with self._ledger.begin() as db:
            row = gateway_key_by_hash(db, hash_of(key))
            if row is None:
                raise Unauthorized("unknown API key")
            if row.revoked_at is not None:
                raise Unauthorized(f"the API key {row.name!r} was revoked")
            return KeyRef(row.id, row.name)

    def figures(self) -> dict[str, int]:
        """What the gateway's keys did, summed: `keys` (usable ones), `requests` settled,
        `prompt_tokens` and `completion_tokens` of those, `spent` (base units charged to the
        keys, what the gateway's vouchers paid for them) and `reserved` by requests in flight."""
        with self._ledger.begin() as db:
            rows = gateway_keys(db)
            totals = {
                "keys": sum(row.revoked_at is None for row in rows),
                "requests": sum(row.requests for row in rows),
                "prompt_tokens": sum(row.prompt_tokens for row in rows),
                "completion_tokens": sum(row.completion_tokens for row in rows),
                "spent": sum(row.spent for row in rows),
            }
        with self._lock:
            totals["reserved"] = sum(self._reserved.values())
        return totals

    def check(self, key: KeyRef) -> None:
        """`BudgetExhausted` when the key spent its budget (before any work for a request)."""
        self.reserve(key, 0)

    def reserve(self, key: KeyRef, amount: int) -> Hold:
        """Hold `amount` base units of the key's budget for a request; `BudgetExhausted` (402)
        when it cannot pay, `Unauthorized` when it was revoked meanwhile."""
        with self._lock, self._ledger.begin() as db:
            row = db.get(GatewayKey, key.id)
            if row is None:
                raise Unauthorized("unknown API key")
            state = KeyState(
                name=row.name,
                budget=row.budget,
                spent=row.spent,
                reserved=self._reserved.get(key.id, 0),
                revoked=row.revoked_at is not None,
            )
            try:
                admit(state, amount)
            except KeyRevoked as exc:
                raise Unauthorized(str(exc)) from None
            except OverBudget as exc:
                raise BudgetExhausted(str(exc)) from None
            if amount:
                self._reserved[key.id] = state.reserved + amount
        return Hold(key, amount)

    def release(self, hold: Hold) -> None:
        """Give a reservation back unspent (the request never signed anything)."""
        with self._lock:
            self._unhold(hold)

    def settle(self, hold: Hold, *, cost: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Charge the key `cost` base units for the request `hold` reserved for, with its token
        counts, and release the reservation."""
        with self._lock:
            self._unhold(hold)
            with self._ledger.begin() as db:
                charge_gateway_key(
                    db,
                    hold.key.id,
                    cost=cost,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                )
        logger.info(
            "key %s charged %d base units (%d + %d tokens)",
            hold.key.name,
            cost,
            prompt_tokens,
            completion_tokens,
        )

    def headroom(self, hold: Hold) -> int:
        """Base units the key of `hold` has beyond every reservation (this one included): what
        its request may spend past its reservation (after a failover's replay)."""
        with self._lock, self._ledger.begin() as db:
            row = db.get(GatewayKey, hold.key.id)
            if row is None or row.revoked_at is not None:
                return 0
            return max(0, row.budget - row.spent - self._reserved.get(hold.key.id, 0))

    def reserved(self, key: KeyRef) -> int:
        """Base units the key's requests in flight hold."""
        with self._lock:
            return self._reserved.get(key.id, 0)

    def _unhold(self, hold: Hold) -> None:
        left = self._reserved.get(hold.key.id, 0) - hold.amount
        if left > 0:
            self._reserved[hold.key.id] = left
        else:
            self._reserved.pop(hold.key.id, None)
