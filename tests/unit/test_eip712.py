"""ledger.eip712 against the shared vector that the Solidity tests check too."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import eip712
from ledger.eip712 import Domain
from ledger.errors import SignatureError, TypedDataError
from ledger.types import Leaf, Reason, Verdict, Voucher, WithheldVerdict

VECTOR_PATH = Path(__file__).resolve().parents[2] / "contracts" / "test" / "vectors" / "eip712.json"
OTHER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # Anvil #1


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    return json.loads(VECTOR_PATH.read_text())


def h(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def channels_domain(v: dict[str, Any]) -> Domain:
    return Domain.payment_channels(v["chainId"], v["paymentChannels"], h(v["paymentChannelsSalt"]))


def slasher_domain(v: dict[str, Any]) -> Domain:
    return Domain.slasher(v["chainId"], v["slasher"], h(v["slasherSalt"]))


def vector_voucher(v: dict[str, Any]) -> Voucher:
    return Voucher(v["voucher"]["channelId"], int(v["voucher"]["cumulativeAmount"]))


def vector_leaf(v: dict[str, Any]) -> Leaf:
    r = v["receipt"]
    return Leaf(
        session_id=h(r["sessionId"]),
        model_id=h(r["modelId"]),
        span_start=r["spanStart"],
        span_end=r["spanEnd"],
        step=r["step"],
        tokens=r["tokens"],
        input_hash=h(r["inputHash"]),
        output_hash=h(r["outputHash"]),
        sketch_hash=h(r["sketchHash"]),
        issued_at=r["issuedAt"],
    )


def vector_verdict(v: dict[str, Any]) -> Verdict:
    d = v["verdict"]
    return Verdict(node=d["node"], batch_id=d["batchId"], leaf=h(d["leaf"]), reason=d["reason"])


def vector_withheld(v: dict[str, Any]) -> WithheldVerdict:
    d = v["withheld"]
    return WithheldVerdict(node=d["node"], batch_id=d["batchId"], leaf_index=d["leafIndex"])


# --- the shared vector ---------------------------------------------------------------------


def test_voucher_matches_vector(vector: dict[str, Any]) -> None:
    domain, voucher = channels_domain(vector), vector_voucher(vector)
    assert eip712.voucher_digest(domain, voucher) == h(vector["voucher"]["digest"])
    signature = eip712.sign_voucher(domain, voucher, vector["privateKey"])
    assert signature == h(vector["voucher"]["signature"])
    recovered = eip712.recover_voucher_signer(domain, voucher, h(vector["voucher"]["signature"]))
    assert recovered == vector["signer"]


def test_receipt_matches_vector(vector: dict[str, Any]) -> None:
    domain, leaf = slasher_domain(vector), vector_leaf(vector)
    assert leaf.hash() == h(vector["receipt"]["leafHash"])
    assert eip712.receipt_digest(domain, leaf) == h(vector["receipt"]["digest"])
    signature = eip712.sign_receipt(domain, leaf, Account.from_key(vector["privateKey"]))
    assert signature == h(vector["receipt"]["signature"])
    recovered = eip712.recover_receipt_signer(domain, leaf, h(vector["receipt"]["signature"]))
    assert recovered == vector["signer"]


def test_verdict_matches_vector(vector: dict[str, Any]) -> None:
    domain, verdict = slasher_domain(vector), vector_verdict(vector)
    assert verdict.leaf == h(vector["receipt"]["leafHash"])
    assert eip712.verdict_digest(domain, verdict) == h(vector["verdict"]["digest"])
    signature = eip712.sign_verdict(domain, verdict, h(vector["privateKey"]))
    assert signature == h(vector["verdict"]["signature"])
    recovered = eip712.recover_verdict_signer(domain, verdict, h(vector["verdict"]["signature"]))
    assert recovered == vector["signer"]


def test_withheld_matches_vector(vector: dict[str, Any]) -> None:
    domain, withheld = slasher_domain(vector), vector_withheld(vector)
    assert eip712.withheld_digest(domain, withheld) == h(vector["withheld"]["digest"])
    signature = eip712.sign_withheld(domain, withheld, vector["privateKey"])
    assert signature == h(vector["withheld"]["signature"])
    recovered = eip712.recover_withheld_signer(domain, withheld, h(vector["withheld"]["signature"]))
    assert recovered == vector["signer"]


def test_withheld_type_string_is_the_contracts(vector: dict[str, Any]) -> None:
    """The struct hash is keccak(typehash || node || batchId || leafIndex), with the type string
    of `Slasher.WITHHELD_TYPEHASH`: a field renamed or retyped on one side breaks this."""
    withheld = vector_withheld(vector)
    typehash = keccak(text="Withheld(address node,uint256 batchId,uint32 leafIndex)")
    struct_hash = keccak(
        abi_encode(
            ["bytes32", "address", "uint256", "uint32"],
            [typehash, withheld.node, withheld.batch_id, withheld.leaf_index],
        )
    )
    separator = keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address", "bytes32"],
            [
                keccak(
                    text="EIP712Domain(string name,string version,uint256 chainId,"
                    "address verifyingContract,bytes32 salt)"
                ),
                keccak(text="stakeswarm Slasher"),
                keccak(text="1"),
                vector["chainId"],
                vector["slasher"],
                h(vector["slasherSalt"]),
            ],
        )
    )
    expected = keccak(b"\x19\x01" + separator + struct_hash)
    assert eip712.withheld_digest(slasher_domain(vector), withheld) == expected


def test_receipt_type_string_and_leaf_encoding_are_the_contracts(vector: dict[str, Any]) -> None:
    """The leaf is keccak(abi.encode(10 fields)) and the receipt's struct hash keccak(typehash ||
    abi.encode(the same fields)), with the type string of `Slasher.RECEIPT_TYPEHASH`, issuedAt
    a uint64 last: a field renamed, retyped or moved on one side breaks this."""
    leaf = vector_leaf(vector)
    assert leaf.issued_at == 1_767_225_600
    types = ["bytes32", "bytes32", "uint16", "uint16", "uint32", "uint32"]
    types += ["bytes32", "bytes32", "bytes32", "uint64"]
    encoded = abi_encode(types, list(dataclasses.astuple(leaf)))
    assert len(encoded) == 10 * 32
    assert keccak(encoded) == leaf.hash() == h(vector["receipt"]["leafHash"])
    typehash = keccak(
        text="Receipt(bytes32 sessionId,bytes32 modelId,uint16 spanStart,uint16 spanEnd,"
        "uint32 step,uint32 tokens,bytes32 inputHash,bytes32 outputHash,bytes32 sketchHash,"
        "uint64 issuedAt)"
    )
    separator = keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address", "bytes32"],
            [
                keccak(
                    text="EIP712Domain(string name,string version,uint256 chainId,"
                    "address verifyingContract,bytes32 salt)"
                ),
                keccak(text="stakeswarm Slasher"),
                keccak(text="1"),
                vector["chainId"],
                vector["slasher"],
                h(vector["slasherSalt"]),
            ],
        )
    )
    expected = keccak(b"\x19\x01" + separator + keccak(typehash + encoded))
    assert eip712.receipt_digest(slasher_domain(vector), leaf) == expected


# --- every input is bound into the digest --------------------------------------------------


def test_domain_chain_and_contract_change_every_digest(vector: dict[str, Any]) -> None:
    voucher, leaf, verdict = vector_voucher(vector), vector_leaf(vector), vector_verdict(vector)
    chans, slasher = channels_domain(vector), slasher_domain(vector)
    other_chain = dataclasses.replace(chans, chain_id=1)
    other_contract = dataclasses.replace(chans, verifying_contract=vector["slasher"])
    base = eip712.voucher_digest(chans, voucher)
    assert eip712.voucher_digest(other_chain, voucher) != base
    assert eip712.voucher_digest(other_contract, voucher) != base

    slasher_elsewhere = [
        dataclasses.replace(slasher, chain_id=1),
        dataclasses.replace(slasher, verifying_contract=vector["paymentChannels"]),
    ]
    for domain in slasher_elsewhere:
        assert eip712.receipt_digest(domain, leaf) != eip712.receipt_digest(slasher, leaf)
        assert eip712.verdict_digest(domain, verdict) != eip712.verdict_digest(slasher, verdict)
        withheld = vector_withheld(vector)
        assert eip712.withheld_digest(domain, withheld) != eip712.withheld_digest(slasher, withheld)


@pytest.mark.parametrize("field", ["channel_id", "cumulative_amount"])
def test_any_voucher_field_changes_the_digest(vector: dict[str, Any], field: str) -> None:
    domain, voucher = channels_domain(vector), vector_voucher(vector)
    changed = dataclasses.replace(voucher, **{field: getattr(voucher, field) + 1})
    assert eip712.voucher_digest(domain, changed) != eip712.voucher_digest(domain, voucher)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Leaf)])
def test_any_receipt_field_changes_the_digest(vector: dict[str, Any], field: str) -> None:
    domain, leaf = slasher_domain(vector), vector_leaf(vector)
    value = getattr(leaf, field)
    new = value + 1 if isinstance(value, int) else bytes([value[0] ^ 1]) + value[1:]
    changed = dataclasses.replace(leaf, **{field: new})  # type: ignore[arg-type]
    assert eip712.receipt_digest(domain, changed) != eip712.receipt_digest(domain, leaf)
    # The vector signature no longer recovers to the node for the changed leaf.
    signature = h(vector["receipt"]["signature"])
    assert eip712.recover_receipt_signer(domain, changed, signature) != vector["signer"]


@pytest.mark.parametrize(
    "change",
    [
        {"node": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"},
        {"batch_id": 4},
        {"leaf": b"\x01" * 32},
        {"reason": Reason.WITHHELD},
    ],
)
def test_any_verdict_field_changes_the_digest(vector: dict[str, Any], change: dict) -> None:
    domain, verdict = slasher_domain(vector), vector_verdict(vector)
    changed = dataclasses.replace(verdict, **change)
    assert eip712.verdict_digest(domain, changed) != eip712.verdict_digest(domain, verdict)


@pytest.mark.parametrize(
    "change",
    [
        {"node": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"},
        {"batch_id": 4},
        {"leaf_index": 8},
    ],
)
def test_any_withheld_field_changes_the_digest(vector: dict[str, Any], change: dict) -> None:
    domain, withheld = slasher_domain(vector), vector_withheld(vector)
    changed = dataclasses.replace(withheld, **change)
    assert eip712.withheld_digest(domain, changed) != eip712.withheld_digest(domain, withheld)
    signature = h(vector["withheld"]["signature"])
    assert eip712.recover_withheld_signer(domain, changed, signature) != vector["signer"]


def test_a_withheld_signature_is_no_verdict(vector: dict[str, Any]) -> None:
    """The same key signing about the same batch under the other type recovers to someone else."""
    domain = slasher_domain(vector)
    withheld = vector_withheld(vector)
    verdict = Verdict(withheld.node, withheld.batch_id, b"\0" * 28 + bytes([0, 0, 0, 7]), 2)
    signature = h(vector["withheld"]["signature"])
    assert eip712.recover_verdict_signer(domain, verdict, signature) != vector["signer"]


def test_signer_and_signature_fields_do_not_enter_the_digest(vector: dict[str, Any]) -> None:
    domain, verdict = slasher_domain(vector), vector_verdict(vector)
    signed = dataclasses.replace(verdict, signer=vector["signer"], signature=b"\x07" * 65)
    assert eip712.verdict_digest(domain, signed) == eip712.verdict_digest(domain, verdict)
    withheld = vector_withheld(vector)
    signed_withheld = dataclasses.replace(withheld, signer=vector["signer"], signature=b"\7" * 65)
    assert eip712.withheld_digest(domain, signed_withheld) == eip712.withheld_digest(
        domain, withheld
    )


def test_another_key_recovers_to_another_address(vector: dict[str, Any]) -> None:
    domain, voucher = channels_domain(vector), vector_voucher(vector)
    other = Account.from_key(OTHER_KEY)
    signature = eip712.sign_voucher(domain, voucher, other)
    recovered = eip712.recover_voucher_signer(domain, voucher, signature)
    assert recovered == other.address
    assert recovered != vector["signer"]


@settings(max_examples=25, deadline=None)
@given(
    channel_id=st.integers(min_value=0, max_value=2**256 - 1),
    amount=st.integers(min_value=0, max_value=2**256 - 1),
)
def test_voucher_round_trip_for_any_values(channel_id: int, amount: int) -> None:
    domain = Domain.payment_channels(31337, "0x1000000000000000000000000000000000000001", bytes(32))
    voucher = Voucher(channel_id, amount)
    signature = eip712.sign_voucher(domain, voucher, OTHER_KEY)
    assert len(signature) == 65 and signature[64] in (27, 28)
    assert (
        eip712.recover_voucher_signer(domain, voucher, signature)
        == Account.from_key(OTHER_KEY).address
    )


# --- bad input ------------------------------------------------------------------------------


def test_domain_checksums_and_validates() -> None:
    lower = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
    salt = bytes(32)
    assert (
        Domain.slasher(1, lower, salt).verifying_contract
        == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    )
    with pytest.raises(TypedDataError, match="verifying contract"):
        Domain.slasher(1, "0x1234", salt)
    with pytest.raises(TypedDataError, match="chain id"):
        Domain.slasher(0, lower, salt)
    with pytest.raises(TypedDataError, match="domain salt"):
        Domain.slasher(1, lower, b"short")


def test_another_deployments_salt_changes_every_slasher_digest(vector: dict[str, Any]) -> None:
    """A Slasher redeployed at the same address on the same chain has another salt, so a receipt
    or verdict signed for the old deployment does not verify there."""
    domain = slasher_domain(vector)
    redeployed = Domain.slasher(domain.chain_id, domain.verifying_contract, bytes(32))
    leaf = vector_leaf(vector)
    assert eip712.receipt_digest(redeployed, leaf) != eip712.receipt_digest(domain, leaf)
    signature = eip712.sign_receipt(domain, leaf, vector["privateKey"])
    assert eip712.recover_receipt_signer(redeployed, leaf, signature) != vector["signer"]


def test_a_struct_under_the_wrong_domain_is_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(TypedDataError, match="stakeswarm PaymentChannels"):
        eip712.voucher_digest(slasher_domain(vector), vector_voucher(vector))
    with pytest.raises(TypedDataError, match="stakeswarm Slasher"):
        eip712.receipt_digest(channels_domain(vector), vector_leaf(vector))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"session_id": b"\x11" * 31}, "session id must be exactly 32 bytes, got 31"),
        ({"model_id": "0x" + "11" * 32}, "model id must be exactly 32 bytes"),
        ({"span_start": 2**16}, "span start must fit uint16"),
        ({"step": -1}, "step must fit uint32"),
        ({"tokens": True}, "tokens must be an int"),
        ({"issued_at": 2**64}, "issued at must fit uint64"),
        ({"issued_at": -1}, "issued at must fit uint64"),
    ],
)
def test_bad_leaf_values_are_refused_not_padded(
    vector: dict[str, Any], change: dict, message: str
) -> None:
    leaf = dataclasses.replace(vector_leaf(vector), **change)
    with pytest.raises(TypedDataError, match=message):
        eip712.receipt_digest(slasher_domain(vector), leaf)


def test_bad_voucher_and_verdict_values_are_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(TypedDataError, match="uint256"):
        eip712.voucher_digest(channels_domain(vector), Voucher(1, 2**256))
    verdict = vector_verdict(vector)
    with pytest.raises(TypedDataError, match="verdict node"):
        eip712.verdict_digest(slasher_domain(vector), dataclasses.replace(verdict, node="nobody"))
    with pytest.raises(TypedDataError, match="reason"):
        bad_reason = dataclasses.replace(verdict, reason=7)  # type: ignore[arg-type]
        eip712.verdict_digest(slasher_domain(vector), bad_reason)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"node": "nobody"}, "withheld node"),
        ({"batch_id": -1}, "batch id must fit uint256"),
        ({"leaf_index": 2**32}, "leaf index must fit uint32"),
        ({"leaf_index": "7"}, "leaf index must be an int"),
    ],
)
def test_bad_withheld_values_are_refused(
    vector: dict[str, Any], change: dict, message: str
) -> None:
    withheld = dataclasses.replace(vector_withheld(vector), **change)
    with pytest.raises(TypedDataError, match=message):
        eip712.withheld_digest(slasher_domain(vector), withheld)
    with pytest.raises(TypedDataError, match="stakeswarm Slasher"):
        eip712.withheld_digest(channels_domain(vector), vector_withheld(vector))


def test_bad_signer_is_refused_without_echoing_the_key(vector: dict[str, Any]) -> None:
    with pytest.raises(TypedDataError, match="private key") as info:
        eip712.sign_voucher(channels_domain(vector), vector_voucher(vector), "0xdeadbeef")
    assert "deadbeef" not in str(info.value)


def test_malformed_signatures_are_refused(vector: dict[str, Any]) -> None:
    domain, voucher = channels_domain(vector), vector_voucher(vector)
    good = h(vector["voucher"]["signature"])
    with pytest.raises(SignatureError, match="65 bytes"):
        eip712.recover_voucher_signer(domain, voucher, good[:64])
    with pytest.raises(SignatureError, match="v must be 27 or 28"):
        eip712.recover_voucher_signer(domain, voucher, good[:64] + bytes([good[64] - 27]))
    with pytest.raises(SignatureError, match="r is out of range"):
        eip712.recover_voucher_signer(domain, voucher, bytes(32) + good[32:])


def test_malleable_high_s_twin_is_refused(vector: dict[str, Any]) -> None:
    """The (r, n - s, v ^ 1) twin is valid ECDSA but OpenZeppelin refuses it; so do we."""
    domain, voucher = channels_domain(vector), vector_voucher(vector)
    good = h(vector["voucher"]["signature"])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(good[32:64], "big")
    twin = good[:32] + (n - s).to_bytes(32, "big") + bytes([55 - good[64]])
    with pytest.raises(SignatureError, match="malleable"):
        eip712.recover_voucher_signer(domain, voucher, twin)
