"""ledger.merkle: OpenZeppelin-compatible roots and proofs."""

from __future__ import annotations

import math

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import MerkleError
from ledger.merkle import MerkleTree, hash_pair, process_proof, verify


def leaf(i: int) -> bytes:
    return keccak(i.to_bytes(32, "big"))


def sorted_hash(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin Hashes.commutativeKeccak256, written out independently."""
    low, high = sorted((a, b))
    return keccak(low + high)


def test_pair_hash_is_commutative_and_sorted() -> None:
    a, b = leaf(1), leaf(2)
    assert hash_pair(a, b) == hash_pair(b, a) == sorted_hash(a, b)
    assert hash_pair(a, b) != keccak(max(a, b) + min(a, b))


def test_one_leaf_is_its_own_root_with_an_empty_proof() -> None:
    tree = MerkleTree([leaf(0)])
    assert tree.root == leaf(0)
    assert tree.proof(0) == []
    assert verify([], tree.root, leaf(0))
    assert not verify([], tree.root, leaf(1))


def test_two_and_three_leaves_by_hand() -> None:
    a, b, c = leaf(0), leaf(1), leaf(2)
    two = MerkleTree([a, b])
    assert two.root == sorted_hash(a, b)
    assert two.proof(0) == [b] and two.proof(1) == [a]

    three = MerkleTree([a, b, c])
    # The odd last leaf moves up unchanged and pairs with the hash of the first two.
    assert three.root == sorted_hash(sorted_hash(a, b), c)
    assert three.proof(0) == [b, c]
    assert three.proof(2) == [sorted_hash(a, b)]


def test_five_leaves_by_hand() -> None:
    a, b, c, d, e = (leaf(i) for i in range(5))
    ab, cd = sorted_hash(a, b), sorted_hash(c, d)
    tree = MerkleTree([a, b, c, d, e])
    assert tree.root == sorted_hash(sorted_hash(ab, cd), e)
    assert tree.proof(3) == [c, ab, e]
    assert tree.proof(4) == [sorted_hash(ab, cd)]


def test_the_root_depends_on_leaf_order_and_is_deterministic() -> None:
    leaves = [leaf(i) for i in range(6)]
    assert MerkleTree(leaves).root == MerkleTree(list(leaves)).root
    swapped = [leaves[0], leaves[2], leaves[1], *leaves[3:]]
    assert MerkleTree(swapped).root != MerkleTree(leaves).root
    assert MerkleTree(leaves).leaves == tuple(leaves)


def test_1000_leaves_every_proof_verifies_and_is_short() -> None:
    leaves = [leaf(i) for i in range(1_025)]
    tree = MerkleTree(leaves)
    depth = math.ceil(math.log2(len(leaves)))
    for i, value in enumerate(leaves):
        proof = tree.proof(i)
        assert len(proof) <= depth
        assert verify(proof, tree.root, value)
    assert not verify(tree.proof(0), tree.root, leaves[1])


@settings(max_examples=60, deadline=None)
@given(
    leaves=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70),
    data=st.data(),
)
def test_every_proof_verifies_and_tampering_fails(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    proof = tree.proof(index)
    assert verify(proof, tree.root, leaves[index])
    assert process_proof(proof, leaves[index]) == tree.root

    flipped_bit = data.draw(st.integers(min_value=0, max_value=255))

    def tamper(value: bytes) -> bytes:
        as_int = int.from_bytes(value, "big") ^ (1 << flipped_bit)
        return as_int.to_bytes(32, "big")

    assert not verify(proof, tree.root, tamper(leaves[index]))
    assert not verify(proof, tamper(tree.root), leaves[index])
    if proof:
        at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = [*proof[:at], tamper(proof[at]), *proof[at + 1 :]]
        assert not verify(bad, tree.root, leaves[index])
        assert not verify(proof[:-1], tree.root, leaves[index])


@pytest.mark.parametrize(
    ("leaves", "message"),
    [
        ([], "at least one leaf"),
        ([b"\x00" * 31], "leaf 0 must be exactly 32 bytes, got 31"),
        ([b"\x00" * 32, "0x" + "00" * 32], "leaf 1 must be exactly 32 bytes, got str"),
        (b"\x00" * 32, "not one value"),
    ],
)
def test_bad_leaves_are_refused(leaves: list[bytes], message: str) -> None:
    with pytest.raises(MerkleError, match=message):
        MerkleTree(leaves)


@pytest.mark.parametrize("index", [-1, 3, 100])
def test_out_of_range_index_is_refused(index: int) -> None:
    with pytest.raises(MerkleError, match=f"leaf index {index} is out of range for 3 leaves"):
        MerkleTree([leaf(0), leaf(1), leaf(2)]).proof(index)


def test_malformed_proof_input_is_refused() -> None:
    tree = MerkleTree([leaf(0), leaf(1)])
    with pytest.raises(MerkleError, match="proof element 0"):
        verify([b"\x01" * 33], tree.root, leaf(0))
    with pytest.raises(MerkleError, match="root"):
        verify(tree.proof(0), tree.root[:16], leaf(0))
    with pytest.raises(MerkleError, match="leaf must be"):
        verify(tree.proof(0), tree.root, b"")
