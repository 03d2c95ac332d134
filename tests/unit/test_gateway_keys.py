"""The gateway's key and budget rules (`gateway.keys`) and its keys table (`ledger.db.gateway`):
what a key looks like, which request a budget admits, and what a key is charged."""

from __future__ import annotations

import pytest

from gateway.accounts import Accounts
from gateway.errors import BudgetExhausted, Unauthorized
from gateway.keys import (
    KEY_PREFIX,
    KeyFormatError,
    KeyRevoked,
    KeyState,
    OverBudget,
    admit,
    bearer_key,
    key_hash,
    new_key,
    reservation,
    within_reservation,
)
from ledger.db import (
    create_gateway_key,
    gateway_key_by_name,
    gateway_keys,
    open_ledger,
    revoke_gateway_key,
)
from ledger.errors import LedgerDbError


def state(budget: int = 100, spent: int = 0, reserved: int = 0, revoked: bool = False) -> KeyState:
    return KeyState("alice", budget, spent, reserved, revoked)


def test_new_keys_are_random_and_only_their_hash_is_kept() -> None:
    key, digest = new_key()
    other, _ = new_key()
    assert key.startswith(KEY_PREFIX) and key != other
    assert digest == key_hash(key) and len(digest) == 32
    assert key.encode() not in digest
    assert bearer_key(f"Bearer {key}") == key
    assert bearer_key(f"bearer   {key} ") == key


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", f"Basic {new_key()[0]}", "Bearer sk-proj-abc", "Bearer sk-ss-short"],
)
def test_a_missing_or_malformed_authorization_is_refused(header: str | None) -> None:
    with pytest.raises(KeyFormatError):
        bearer_key(header)


def test_reservation_counts_the_prompt_and_max_tokens_of_every_choice() -> None:
    assert reservation(prompt_tokens=10, max_tokens=5, choices=2, price=7) == 2 * 15 * 7
    assert within_reservation(spent=200, next_step=10, reserved=210)
    assert not within_reservation(spent=201, next_step=10, reserved=210)


def test_admit_refuses_a_spent_key_then_a_reservation_beyond_what_is_left() -> None:
    admit(state(), 100)  # all of it
    with pytest.raises(OverBudget) as spent:
        admit(state(spent=100), 0)  # nothing more, not even a free look
    assert spent.value.left == 0
    with pytest.raises(OverBudget) as short:
        admit(state(spent=40, reserved=50), 11)  # 10 left after what is in flight
    assert (short.value.needed, short.value.left) == (11, 10)
    admit(state(spent=40, reserved=50), 10)
    with pytest.raises(KeyRevoked):
        admit(state(revoked=True), 0)


def test_accounts_hold_reservations_and_charge_what_was_spent(ledger_db_url: str) -> None:
    ledger = open_ledger(ledger_db_url)  # on SQLite and on PostgreSQL
    try:
        key, digest = new_key()
        with ledger.begin() as db:
            create_gateway_key(db, name="alice", key_hash=digest, budget=100)
        accounts = Accounts(ledger)
        with pytest.raises(Unauthorized):
            accounts.authenticate(f"Bearer {new_key()[0]}")
        ref = accounts.authenticate(f"Bearer {key}")
        first = accounts.reserve(ref, 60)
        with pytest.raises(BudgetExhausted):
            accounts.reserve(ref, 41)  # 40 left while the first request runs
        assert accounts.headroom(first) == 40  # what a failover's replay may eat into
        accounts.settle(first, cost=55, prompt_tokens=3, completion_tokens=4)
        assert accounts.reserved(ref) == 0
        second = accounts.reserve(ref, 45)
        accounts.settle(second, cost=50, prompt_tokens=1, completion_tokens=1)  # a failover
        with pytest.raises(BudgetExhausted):
            accounts.check(ref)  # spent 105 of 100: refused before anything is done
        with ledger.begin() as db:
            row = gateway_key_by_name(db, "alice")
            assert row is not None
            assert (row.spent, row.requests, row.prompt_tokens, row.completion_tokens) == (
                105, 2, 4, 5,
            )  # fmt: skip
            revoke_gateway_key(db, "alice")
        with pytest.raises(Unauthorized):
            accounts.authenticate(f"Bearer {key}")
    finally:
        ledger.close()


def test_key_names_and_hashes_are_unique_and_revoked_keys_stay(ledger_db_url: str) -> None:
    ledger = open_ledger(ledger_db_url)  # on SQLite and on PostgreSQL
    try:
        _, digest = new_key()
        with ledger.begin() as db:
            create_gateway_key(db, name="alice", key_hash=digest, budget=10**30)
            with pytest.raises(LedgerDbError):
                create_gateway_key(db, name="alice", key_hash=new_key()[1], budget=1)
            with pytest.raises(LedgerDbError):
                create_gateway_key(db, name="bob", key_hash=digest, budget=1)
            with pytest.raises(LedgerDbError):
                create_gateway_key(db, name="", key_hash=new_key()[1], budget=1)
            revoke_gateway_key(db, "alice")
        with ledger.begin() as db:
            [row] = gateway_keys(db)
            assert row.budget == 10**30 and row.revoked_at is not None
    finally:
        ledger.close()
