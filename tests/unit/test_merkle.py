"""ledger.merkle: positional roots and proofs, as contracts/IndexedMerkle.sol checks them."""

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


def ordered_hash(left: bytes, right: bytes) -> bytes:
    """keccak256(left || right), written out independently."""
    return keccak(left + right)


def test_pair_hash_keeps_the_order() -> None:
    a, b = leaf(1), leaf(2)
    assert hash_pair(a, b) == ordered_hash(a, b)
    assert hash_pair(b, a) == ordered_hash(b, a)
    assert hash_pair(a, b) != hash_pair(b, a)


def test_one_leaf_is_its_own_root_with_an_empty_proof() -> None:
    tree = MerkleTree([leaf(0)])
    assert tree.root == leaf(0)
    assert tree.proof(0) == []
    assert verify([], tree.root, leaf(0), 0, 1)
    assert not verify([], tree.root, leaf(1), 0, 1)
    assert not verify([], tree.root, leaf(0), 1, 1)
    assert not verify([], tree.root, leaf(0), 0, 0)


def test_two_and_three_leaves_by_hand() -> None:
    a, b, c = leaf(0), leaf(1), leaf(2)
    two = MerkleTree([a, b])
    assert two.root == ordered_hash(a, b)
    assert two.proof(0) == [b] and two.proof(1) == [a]

    three = MerkleTree([a, b, c])
    # The odd last leaf moves up unchanged and pairs, on the right, with the hash of the first two.
    assert three.root == ordered_hash(ordered_hash(a, b), c)
    assert three.proof(0) == [b, c]
    assert three.proof(1) == [a, c]
    assert three.proof(2) == [ordered_hash(a, b)]


def test_five_leaves_by_hand() -> None:
    a, b, c, d, e = (leaf(i) for i in range(5))
    ab, cd = ordered_hash(a, b), ordered_hash(c, d)
    tree = MerkleTree([a, b, c, d, e])
    assert tree.root == ordered_hash(ordered_hash(ab, cd), e)
    assert tree.proof(3) == [c, ab, e]
    assert tree.proof(4) == [ordered_hash(ab, cd)]


def test_the_root_depends_on_leaf_order_and_is_deterministic() -> None:
    leaves = [leaf(i) for i in range(6)]
    assert MerkleTree(leaves).root == MerkleTree(list(leaves)).root
    # Swapping a pair changes the root (a sorted-pair tree would not notice this swap).
    assert MerkleTree([leaves[1], leaves[0], *leaves[2:]]).root != MerkleTree(leaves).root
    swapped = [leaves[0], leaves[2], leaves[1], *leaves[3:]]
    assert MerkleTree(swapped).root != MerkleTree(leaves).root
    assert MerkleTree(leaves).leaves == tuple(leaves)


@pytest.mark.parametrize("count", range(1, 10))
def test_every_position_of_small_trees_verifies_and_only_there(count: int) -> None:
    leaves = [leaf(i) for i in range(count)]
    tree = MerkleTree(leaves)
    for i, value in enumerate(leaves):
        proof = tree.proof(i)
        assert verify(proof, tree.root, value, i, count)
        assert process_proof(proof, value, i, count) == tree.root
        # The same leaf and proof claimed at any other position, or in a tree of another size,
        # fail (the leaves are distinct, so no other position holds this leaf).
        for other in range(-1, count + 2):
            if other != i:
                assert not verify(proof, tree.root, value, other, count)
        for other_count in range(0, count + 4):
            if other_count != count and verify(proof, tree.root, value, i, other_count):
                # Only a count with the same shape along this leaf's path may pass.
                assert _path_shape(i, other_count) == _path_shape(i, count)
        # A missing or an extra sibling fails.
        if proof:
            assert not verify(proof[:-1], tree.root, value, i, count)
            assert not verify(proof[1:], tree.root, value, i, count)
        assert not verify([*proof, leaf(99)], tree.root, value, i, count)
        assert not verify([leaf(99), *proof], tree.root, value, i, count)


def _path_shape(index: int, count: int) -> list[tuple[bool, bool]]:
    """Per level: whether the node at `index` has a sibling and is the left one."""
    shape = []
    while count > 1:
        shape.append(((index ^ 1) < count, index % 2 == 0))
        index >>= 1
        count = (count + 1) >> 1
    return shape


def test_a_proof_from_another_position_fails_even_where_sorted_pairs_would_pass() -> None:
    a, b = leaf(0), leaf(1)
    tree = MerkleTree([a, b])
    # With commutative hashing, [b] proves a at any index; positional hashing binds index 0.
    assert verify([b], tree.root, a, 0, 2)
    assert not verify([b], tree.root, a, 1, 2)
    assert not verify([a], tree.root, b, 0, 2)


def test_a_wrong_count_fails() -> None:
    leaves = [leaf(i) for i in range(5)]
    tree = MerkleTree(leaves)
    # Leaf 4 of 5 has one sibling (the root of the first four); claimed in a tree of 6 or 8 it
    # would need a sibling at the bottom level, so the proof is too short.
    assert verify(tree.proof(4), tree.root, leaves[4], 4, 5)
    assert not verify(tree.proof(4), tree.root, leaves[4], 4, 6)
    assert not verify(tree.proof(4), tree.root, leaves[4], 4, 8)
    assert not verify(tree.proof(0), tree.root, leaves[0], 0, 4)


def test_1000_leaves_every_proof_verifies_and_is_short() -> None:
    leaves = [leaf(i) for i in range(1_025)]
    tree = MerkleTree(leaves)
    depth = math.ceil(math.log2(len(leaves)))
    for i, value in enumerate(leaves):
        proof = tree.proof(i)
        assert len(proof) <= depth
        assert verify(proof, tree.root, value, i, len(leaves))
    assert not verify(tree.proof(0), tree.root, leaves[1], 0, len(leaves))
    assert not verify(tree.proof(0), tree.root, leaves[0], 1, len(leaves))


@settings(max_examples=80, deadline=None)
@given(
    leaves=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70, unique=True),
    data=st.data(),
)
def test_every_proof_verifies_and_tampering_fails(leaves: list[bytes], data: st.DataObject) -> None:
    count = len(leaves)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(min_value=0, max_value=count - 1))
    proof = tree.proof(index)
    assert verify(proof, tree.root, leaves[index], index, count)
    assert process_proof(proof, leaves[index], index, count) == tree.root

    flipped_bit = data.draw(st.integers(min_value=0, max_value=255))

    def tamper(value: bytes) -> bytes:
        as_int = int.from_bytes(value, "big") ^ (1 << flipped_bit)
        return as_int.to_bytes(32, "big")

    assert not verify(proof, tree.root, tamper(leaves[index]), index, count)
    assert not verify(proof, tamper(tree.root), leaves[index], index, count)
    other = data.draw(st.integers(min_value=0, max_value=count))
    if other != index:
        assert not verify(proof, tree.root, leaves[index], other, count)
    assert not verify(proof, tree.root, leaves[index], index, index)
    assert not verify([*proof, leaves[index]], tree.root, leaves[index], index, count)
    if proof:
        at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = [*proof[:at], tamper(proof[at]), *proof[at + 1 :]]
        assert not verify(bad, tree.root, leaves[index], index, count)
        assert not verify(proof[:-1], tree.root, leaves[index], index, count)


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
        verify([b"\x01" * 33], tree.root, leaf(0), 0, 2)
    with pytest.raises(MerkleError, match="root"):
        verify(tree.proof(0), tree.root[:16], leaf(0), 0, 2)
    with pytest.raises(MerkleError, match="leaf must be"):
        verify(tree.proof(0), tree.root, b"", 0, 2)
    with pytest.raises(MerkleError, match="leaf index must be an int"):
        verify(tree.proof(0), tree.root, leaf(0), True, 2)  # type: ignore[arg-type]
    with pytest.raises(MerkleError, match="leaf count must be an int"):
        verify(tree.proof(0), tree.root, leaf(0), 0, "2")  # type: ignore[arg-type]
