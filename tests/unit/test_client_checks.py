"""The client's pure checks: receipts (signed EIP-712 leaves), registrations, deposits, the
budget, and its configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from eth_account import Account

from client.config import ClientConfig
from client.errors import BudgetExceededError, ClientConfigError
from client.payments import DEPOSIT_SESSIONS, Budget, deposit_for
from client.receipts import MAX_RECEIPT_CLOCK_SKEW, ExpectedLeaf, ReceiptProblem, check_receipt
from client.registry import registration_problem
from ledger.eip712 import Domain, sign_receipt
from ledger.types import Leaf, model_id
from ledger.units import TokenUnits
from node.protocol import SignedReceipt
from node.sketch import sketch
from node.tensors import tensor_hash

SALT = bytes.fromhex("5a17" * 16)  # a Slasher deployment's EIP-712 domain salt

NODE = Account.from_key(b"\x01" * 32)
OTHER = Account.from_key(b"\x02" * 32)
DOMAIN = Domain.slasher(31337, "0x" + "5c" * 20, SALT)
SESSION = b"\x07" * 32
MODEL = model_id("tiny-llama")
NOW = 1_767_225_600  # the client's clock when the reply arrives


def _step() -> tuple[torch.Tensor, torch.Tensor, ExpectedLeaf, Leaf]:
    sent, received = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    expected = ExpectedLeaf(
        signer=NODE.address,
        session_id=SESSION,
        model_id=MODEL,
        span=(3, 6),
        step=4,
        tokens=3,
        input_hash=tensor_hash(sent),
        output_hash=tensor_hash(received),
        sketch_hash=sketch(received).hash(),
        received_at=NOW,
    )
    leaf = Leaf(
        SESSION,
        MODEL,
        3,
        6,
        4,
        3,
        tensor_hash(sent),
        tensor_hash(received),
        sketch(received).hash(),
        NOW - 2,
    )
    return sent, received, expected, leaf


def _signed(leaf: Leaf, signer=NODE) -> SignedReceipt:  # noqa: ANN001
    return SignedReceipt(leaf, sign_receipt(DOMAIN, leaf, signer))


def _problem(receipt: SignedReceipt, expected: ExpectedLeaf) -> ReceiptProblem | None:
    found = check_receipt(DOMAIN, receipt, expected)
    return None if found is None else found[0]


def test_an_honest_receipt_checks_out() -> None:
    _, _, expected, leaf = _step()
    assert check_receipt(DOMAIN, _signed(leaf), expected) is None
    chained = dataclasses.replace(expected, previous_output_hash=leaf.input_hash)
    assert check_receipt(DOMAIN, _signed(leaf), chained) is None


def test_a_receipt_signed_by_another_key_or_not_at_all_is_refused() -> None:
    _, _, expected, leaf = _step()
    assert _problem(_signed(leaf, OTHER), expected) is ReceiptProblem.WRONG_SIGNER
    assert _problem(SignedReceipt(leaf, b"\x00" * 65), expected) is ReceiptProblem.BAD_SIGNATURE
    # signed under another contract's domain: recovers someone else
    foreign = Domain.slasher(31337, "0x" + "5d" * 20, SALT)
    receipt = SignedReceipt(leaf, sign_receipt(foreign, leaf, NODE))
    assert _problem(receipt, expected) is ReceiptProblem.WRONG_SIGNER


def test_a_receipt_for_something_else_is_refused() -> None:
    _, _, expected, leaf = _step()
    for change in (
        {"session_id": b"\x08" * 32},
        {"model_id": model_id("other")},
        {"span_start": 2},
        {"span_end": 5},
        {"step": 5},
        {"tokens": 1},
    ):
        bad = dataclasses.replace(leaf, **change)
        assert _problem(_signed(bad), expected) is ReceiptProblem.WRONG_LEAF, change


def test_hashes_must_be_of_what_was_sent_and_received() -> None:
    sent, received, expected, leaf = _step()
    lying_in = dataclasses.replace(leaf, input_hash=tensor_hash(sent + 1e-3))
    assert _problem(_signed(lying_in), expected) is ReceiptProblem.INPUT_HASH
    lying_out = dataclasses.replace(leaf, output_hash=tensor_hash(received.half().float()))
    assert _problem(_signed(lying_out), expected) is ReceiptProblem.OUTPUT_HASH
    # what the client received was altered on the way: the honest receipt no longer matches
    altered = dataclasses.replace(expected, output_hash=tensor_hash(received * 1.0001))
    found = check_receipt(DOMAIN, _signed(leaf), altered)
    assert found is not None and found[0] is ReceiptProblem.OUTPUT_HASH
    assert "not the hash of the hidden states received" in found[1]


def test_the_sketch_must_be_of_what_was_received() -> None:
    """A node that commits the sketch of its honest output but sends (and hashes) a steered
    one: the output hash matches what arrived, the sketch hash does not."""
    _, received, expected, leaf = _step()
    steered = received.clone()
    steered[..., 0] += 10.0  # pushed towards a token of the node's choice
    lying = dataclasses.replace(
        expected, output_hash=tensor_hash(steered), sketch_hash=sketch(steered).hash()
    )
    committed_honest = dataclasses.replace(leaf, output_hash=tensor_hash(steered))
    found = check_receipt(DOMAIN, _signed(committed_honest), lying)
    assert found is not None and found[0] is ReceiptProblem.SKETCH_HASH
    assert "committed to another output than the one it sent" in found[1]


def test_custody_breaks_when_the_input_is_not_the_previous_output() -> None:
    _, _, expected, leaf = _step()
    chained = dataclasses.replace(expected, previous_output_hash=b"\x0a" * 32)
    assert _problem(_signed(leaf), chained) is ReceiptProblem.CUSTODY


def test_a_receipt_issued_too_far_from_the_clients_clock_is_refused() -> None:
    _, _, expected, leaf = _step()
    for issued_at in (NOW - MAX_RECEIPT_CLOCK_SKEW, NOW, NOW + MAX_RECEIPT_CLOCK_SKEW):
        assert _problem(_signed(dataclasses.replace(leaf, issued_at=issued_at)), expected) is None
    # backdated: the node's commit deadline would end early; postdated: it would end late
    backdated = dataclasses.replace(leaf, issued_at=NOW - MAX_RECEIPT_CLOCK_SKEW - 1)
    found = check_receipt(DOMAIN, _signed(backdated), expected)
    assert found is not None and found[0] is ReceiptProblem.ISSUED_AT
    assert f"{MAX_RECEIPT_CLOCK_SKEW + 1} s before this client's clock" in found[1]
    for issued_at in (0, NOW + MAX_RECEIPT_CLOCK_SKEW + 1, 2**64 - 1):
        bad = dataclasses.replace(leaf, issued_at=issued_at)
        assert _problem(_signed(bad), expected) is ReceiptProblem.ISSUED_AT, issued_at


REGISTERED = dict(
    registered=True,
    active=True,
    model=MODEL,
    registered_model=MODEL,
    peer_id=b"peer",
    registered_peer_id=b"peer",
    span=(3, 6),
    registered_span=(3, 6),
    price_per_block=10,
    registered_price_per_block=10,
)


def test_an_announcement_must_match_the_on_chain_registration() -> None:
    assert registration_problem(**REGISTERED) is None
    cases = {
        "not registered": {"registered": False},
        "not active": {"active": False},
        "another model": {"registered_model": model_id("other")},
        "another libp2p peer id": {"registered_peer_id": b"thief"},
        "registered for [3, 5)": {"registered_span": (3, 5)},
        "registry says 12": {"registered_price_per_block": 12},
    }
    for words, change in cases.items():
        problem = registration_problem(**{**REGISTERED, **change})
        assert problem is not None and words in problem, (words, problem)


def test_the_deposit_covers_several_sessions_within_the_budget() -> None:
    assert deposit_for(price_per_token=3, session_tokens=100, budget_left=None) == (
        3 * 100 * DEPOSIT_SESSIONS
    )
    assert deposit_for(price_per_token=3, session_tokens=100, budget_left=500) == 500
    # a top-up covers at least the shortfall; a free server still gets a non-empty deposit
    assert deposit_for(price_per_token=3, session_tokens=1, budget_left=10, at_least=40) == 40
    assert deposit_for(price_per_token=0, session_tokens=100, budget_left=None) == 1
    with pytest.raises(ValueError):
        deposit_for(price_per_token=-1, session_tokens=1, budget_left=None)


def test_the_budget_refuses_what_it_cannot_pay_before_anything_is_spent() -> None:
    swarm = TokenUnits(decimals=18, symbol="SWARM")
    budget = Budget(limit=100 * 10**15, units=swarm)  # 0.1 SWARM
    budget.check(60 * 10**15, "a step")
    budget.spend(60 * 10**15)
    budget.check(40 * 10**15, "a step")
    with pytest.raises(BudgetExceededError) as refused:
        budget.check(41 * 10**15, "a step")
    assert str(refused.value).startswith(
        "a step would cost 0.041 SWARM, but only 0.04 SWARM of the budget of 0.1 SWARM is left "
        "(0.06 SWARM spent)"
    )
    assert (refused.value.needed, refused.value.left) == (41 * 10**15, 40 * 10**15)  # exact
    assert budget.spent == 60 * 10**15
    unlimited = Budget(limit=None, units=swarm)
    unlimited.check(10**30, "anything")
    assert unlimited.left is None


def test_client_config_refuses_what_cannot_work(tmp_path: Path) -> None:
    good = ClientConfig(model_path=tmp_path / "tiny-llama", initial_peers=("/ip4/127.0.0.1/tcp/1",))
    assert good.name == "tiny-llama"
    assert good.ledger_path("0xabc").parts[-3:] == ("client", "0xabc", "ledger.sqlite")
    for change, words in [
        ({"initial_peers": ()}, "initial peer"),
        ({"dtype": "int8"}, "dtype"),
        ({"budget": -1}, "budget"),
        ({"step_timeout": 0}, "step_timeout"),
        ({"silence_timeout": -1}, "silence_timeout"),
        ({"channel_min_life": 10, "channel_life": 5}, "channel_min_life"),
        ({"backoff_base": 10, "backoff_max": 1}, "backoff_base"),
    ]:
        with pytest.raises(ClientConfigError, match=words):
            dataclasses.replace(good, **change)


def test_the_package_exports_the_client_api() -> None:
    import client
    from client.model import DistributedModelForCausalLM

    assert client.DistributedModelForCausalLM is DistributedModelForCausalLM
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        client.Nope  # noqa: B018
