"""Verdicts and withheld findings as verifiers share them (checked before they count), how the
ledger files withheld findings, and equivocations found in a pile of receipts (checked before
they are sent)."""

from __future__ import annotations

import dataclasses
import os

import msgpack
import pytest
from eth_account import Account

from ledger.contracts import Batch
from ledger.eip712 import Domain, recover_withheld_signer, sign_receipt
from ledger.merkle import MerkleTree
from ledger.types import BatchId, Leaf, ModelId, Reason, model_id
from node.protocol import ProtocolError, SignedReceipt
from verifier.audit import ProvenLeaf
from verifier.equivocation import find_equivocations
from verifier.verdicts import (
    Accusation,
    WithheldAccusation,
    parse_findings,
    sign,
    sign_withheld_verdict,
    verdict_key,
    withheld_as_record,
    withheld_from_record,
    withheld_key,
)

SALT = bytes.fromhex("5a17" * 16)  # a Slasher deployment's EIP-712 domain salt

DOMAIN = Domain.slasher(31337, "0x2000000000000000000000000000000000000002", SALT)
NODE = Account.create()
VERIFIER = Account.create()


def leaf(step: int, output: bytes = b"o" * 32) -> Leaf:
    return Leaf(b"s" * 32, model_id("tiny"), 0, 3, step, 1, b"i" * 32, output, b"k" * 32, 1_000)


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
    assert parsed.check(DOMAIN, root, NODE.address, 5)
    assert verdict_key("0xAbC") == "stakeswarm.verdicts.0xabc"
    assert proven.leaf_hash.hex() in accusation.subkey


def test_forged_or_unprovable_verdicts_do_not_check_out() -> None:
    proven, root = proven_leaf()
    accusation = Accusation(sign(DOMAIN, proven, Reason.MISMATCH, VERIFIER), proven)
    impostor = dataclasses.replace(
        accusation, verdict=dataclasses.replace(accusation.verdict, signer=Account.create().address)
    )
    assert accusation.check(DOMAIN, root, NODE.address, 5)
    assert not impostor.check(DOMAIN, root, NODE.address, 5)  # signed by someone else
    assert not accusation.check(DOMAIN, os.urandom(32), NODE.address, 5)  # not under that root
    assert not accusation.check(DOMAIN, root, Account.create().address, 5)  # another node's batch
    other_domain = Domain.slasher(1, "0x2000000000000000000000000000000000000002", SALT)
    assert not accusation.check(other_domain, root, NODE.address, 5)  # another deployment
    # proven at another position than the one it names, or in a batch of another size
    moved = dataclasses.replace(accusation, proven=dataclasses.replace(proven, leaf_index=2))
    assert not moved.check(DOMAIN, root, NODE.address, 5)
    assert not accusation.check(DOMAIN, root, NODE.address, 4)


@pytest.mark.parametrize(
    "change",
    [{"reason": 0}, {"proof": "x"}, {"sig": b"short"}, {"signer": "nobody"}, {"leaf": None}],
)
def test_malformed_shared_verdicts_are_refused(change: dict) -> None:
    proven, _ = proven_leaf()
    wire = Accusation(sign(DOMAIN, proven, Reason.WITHHELD, VERIFIER), proven).to_wire()
    with pytest.raises(ProtocolError):
        Accusation.from_wire({**wire, **change})


def batch(batch_id: int = 9, node: str = NODE.address, leaf_count: int = 5) -> Batch:
    return Batch(BatchId(batch_id), node, ModelId(model_id("tiny")), b"r" * 32, leaf_count, 0)


def wire_round_trip(value: dict) -> dict:
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def test_a_shared_withheld_finding_survives_the_wire_and_checks_out() -> None:
    verdict = sign_withheld_verdict(DOMAIN, NODE.address.lower(), 9, 4, VERIFIER)
    assert verdict.node == NODE.address and verdict.signer == VERIFIER.address
    assert recover_withheld_signer(DOMAIN, verdict, verdict.signature) == VERIFIER.address
    finding = WithheldAccusation(verdict)
    parsed = WithheldAccusation.from_wire(wire_round_trip(finding.to_wire()))
    assert parsed == finding
    assert parsed.check(DOMAIN, batch())
    assert parsed.subkey == f"withheld:9:4:{VERIFIER.address.lower()}"


def test_forged_or_impossible_withheld_findings_do_not_check_out() -> None:
    finding = WithheldAccusation(sign_withheld_verdict(DOMAIN, NODE.address, 9, 4, VERIFIER))
    impostor = WithheldAccusation(
        dataclasses.replace(finding.verdict, signer=Account.create().address)
    )
    assert not impostor.check(DOMAIN, batch())  # signed by someone else
    assert not finding.check(DOMAIN, batch(node=Account.create().address))  # not its batch
    assert not finding.check(DOMAIN, batch(leaf_count=4))  # no leaf at index 4
    assert not finding.check(DOMAIN, batch(batch_id=10))  # another batch than signed
    other_domain = Domain.slasher(1, "0x2000000000000000000000000000000000000002", SALT)
    assert not finding.check(other_domain, batch())  # another deployment
    moved = WithheldAccusation(dataclasses.replace(finding.verdict, leaf_index=3))
    assert not moved.check(DOMAIN, batch())  # the signature is about index 4


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "verdict"},
        {"batch": 0},
        {"index": 2**32},
        {"index": "4"},
        {"sig": b"short"},
        {"signer": "nobody"},
        {"node": None},
    ],
)
def test_malformed_withheld_findings_are_refused(change: dict) -> None:
    wire = WithheldAccusation(sign_withheld_verdict(DOMAIN, NODE.address, 9, 4, VERIFIER)).to_wire()
    with pytest.raises(ProtocolError):
        WithheldAccusation.from_wire({**wire, **change})


def test_shared_records_are_sorted_by_kind_and_malformed_ones_skipped() -> None:
    proven, _ = proven_leaf()
    accusation = Accusation(sign(DOMAIN, proven, Reason.MISMATCH, VERIFIER), proven)
    withheld = WithheldAccusation(sign_withheld_verdict(DOMAIN, NODE.address, 9, 1, VERIFIER))
    broken = {**withheld.to_wire(), "index": -1}
    found = parse_findings(
        [wire_round_trip(accusation.to_wire()), wire_round_trip(withheld.to_wire()), broken, 7]
    )
    assert found.accusations == [accusation]
    assert found.withheld == [withheld]
    # a verifier that knows only accusations skips withheld findings as malformed
    with pytest.raises(ProtocolError):
        Accusation.from_wire(withheld.to_wire())


def test_withheld_findings_are_filed_under_their_position() -> None:
    keys = {withheld_key(b, i) for b in (1, 2, 2**200) for i in (0, 1, 2**32 - 1)}
    assert len(keys) == 9 and all(len(key) == 32 for key in keys)
    assert withheld_key(9, 1) not in {item.hash() for item in (leaf(step) for step in range(5))}
    verdict = sign_withheld_verdict(DOMAIN, NODE.address, 9, 1, VERIFIER)
    record = withheld_as_record(verdict)
    assert (record.leaf, record.reason) == (withheld_key(9, 1), Reason.WITHHELD)
    assert (record.signer, record.signature) == (verdict.signer, verdict.signature)
    assert withheld_from_record(record, 1) == verdict
    with pytest.raises(ValueError, match="not about batch 9 leaf 2"):
        withheld_from_record(record, 2)


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
