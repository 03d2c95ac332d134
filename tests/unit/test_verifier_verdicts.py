"""Verdicts as verifiers share them (checked before they count), and equivocations found in a
pile of receipts (checked before they are sent)."""

from __future__ import annotations

import dataclasses
import os

import msgpack
import pytest
from eth_account import Account

from ledger.eip712 import Domain, sign_receipt
from ledger.merkle import MerkleTree
from ledger.types import Leaf, Reason, model_id
from node.protocol import ProtocolError, SignedReceipt
from verifier.audit import ProvenLeaf
from verifier.equivocation import find_equivocations
from verifier.verdicts import Accusation, sign, verdict_key

DOMAIN = Domain.slasher(31337, "0x2000000000000000000000000000000000000002")
NODE = Account.create()
VERIFIER = Account.create()


def leaf(step: int, output: bytes = b"o" * 32) -> Leaf:
    return Leaf(b"s" * 32, model_id("tiny"), 0, 3, step, 1, b"i" * 32, output, b"k" * 32)


def proven_leaf() -> tuple[ProvenLeaf, bytes]:
    leaves = [leaf(step) for step in range(5)]
    tree = MerkleTree([item.hash() for item in leaves])
    return ProvenLeaf(NODE.address, 9, 3, leaves[3], tree.proof(3)), tree.root


def test_a_shared_verdict_survives_the_wire_and_checks_out() -> None:
    proven, root = proven_leaf()
    accusation = Accusation(sign(DOMAIN, proven, Reason.MISMATCH, VERIFIER), proven)
    wire = msgpack.unpackb(msgpack.packb(accusation.to_wire(), use_bin_type=True), raw=False)
    parsed = Accusation.from_wire(wire)
    assert parsed == accusation
    assert parsed.verdict.signer == VERIFIER.address and parsed.verdict.leaf == proven.leaf_hash
    assert parsed.check(DOMAIN, root, NODE.address)
    assert verdict_key("0xAbC") == "stakeswarm.verdicts.0xabc"
    assert proven.leaf_hash.hex() in accusation.subkey


def test_forged_or_unprovable_verdicts_do_not_check_out() -> None:
    proven, root = proven_leaf()
    accusation = Accusation(sign(DOMAIN, proven, Reason.MISMATCH, VERIFIER), proven)
    impostor = dataclasses.replace(
        accusation, verdict=dataclasses.replace(accusation.verdict, signer=Account.create().address)
    )
    assert not impostor.check(DOMAIN, root, NODE.address)  # signed by someone else
    assert not accusation.check(DOMAIN, os.urandom(32), NODE.address)  # not under that root
    assert not accusation.check(DOMAIN, root, Account.create().address)  # another node's batch
    other_domain = Domain.slasher(1, "0x2000000000000000000000000000000000000002")
    assert not accusation.check(other_domain, root, NODE.address)  # another deployment


@pytest.mark.parametrize(
    "change",
    [{"reason": 0}, {"proof": "x"}, {"sig": b"short"}, {"signer": "nobody"}, {"leaf": None}],
)
def test_malformed_shared_verdicts_are_refused(change: dict) -> None:
    proven, _ = proven_leaf()
    wire = Accusation(sign(DOMAIN, proven, Reason.WITHHELD, VERIFIER), proven).to_wire()
    with pytest.raises(ProtocolError):
        Accusation.from_wire({**wire, **change})


def test_two_receipts_of_one_node_for_one_step_are_an_equivocation() -> None:
    def receipt(item: Leaf, key=NODE) -> SignedReceipt:  # noqa: ANN001
        return SignedReceipt(item, sign_receipt(DOMAIN, item, key))

    first, second = leaf(2), leaf(2, output=b"x" * 32)
    receipts = [
        receipt(leaf(1)),
        receipt(first),
        receipt(first),  # the same receipt twice is no offence
        receipt(leaf(3)),
        receipt(second),
        receipt(leaf(2, output=b"y" * 32), key=Account.create()),  # another signer
        SignedReceipt(leaf(2, output=b"z" * 32), b"\x01" * 65),  # not a signature
    ]
    found = find_equivocations(receipts, DOMAIN)
    assert len(found) == 1
    assert found[0].node == NODE.address
    assert (found[0].a.leaf, found[0].b.leaf) == (first, second)
    assert find_equivocations(receipts[:4], DOMAIN) == []
