"""Merkle trees whose proofs bind a leaf's position, as `contracts/IndexedMerkle.sol` checks them.

A node commits one root per batch of leaves; a slash or a receipt challenge proves one leaf at
one position under that root. Pairs hash in order: `parent = keccak256(left || right)`, so the
same two leaves swapped give another root, and a proof only passes at the index it was made for.
Leaves are taken as given (32-byte leaf hashes such as `Leaf.hash()`, which is already
`keccak256(abi.encode(...))`) and are not hashed again.

Shape: leaves stay in the caller's order (a leaf's index is its position in the batch); each
level pairs neighbours left to right and an odd last node moves up unchanged. So one leaf is its
own root with an empty proof, and a proof has at most ceil(log2(n)) siblings.

Verification walks up with the leaf's index and the tree's leaf count: at each level, if the
node has a sibling (`index ^ 1 < count`) the next proof element is consumed, on the left when the
index is odd; then `index >>= 1` and `count = (count + 1) >> 1`. A proof is valid only if
`index < count`, every element is consumed and the walk ends at the root. The count fixes the
shape, so a proof of the right root but for another position or tree size fails.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils import keccak

from ledger.errors import MerkleError

NODE_LENGTH = 32


def _check_node(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != NODE_LENGTH:
        shown = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise MerkleError(f"{what} must be exactly {NODE_LENGTH} bytes, got {shown}")
    return bytes(value)


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MerkleError(f"{what} must be an int, got {type(value).__name__}")
    return value


def hash_pair(left: bytes, right: bytes) -> bytes:
    """The parent of two nodes: keccak256 of `left || right`, in that order (OpenZeppelin
    `Hashes.efficientKeccak256(left, right)`)."""
    return keccak(left + right)


class MerkleTree:
    """An immutable Merkle tree over 32-byte leaves, with positional (`IndexedMerkle`) proofs."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        """Build the tree over `leaves` in order; `MerkleError` if there are none or one is not
        exactly 32 bytes."""
        if isinstance(leaves, bytes | bytearray | str):
            raise MerkleError("leaves must be a sequence of 32-byte leaf hashes, not one value")
        if len(leaves) == 0:
            raise MerkleError("a Merkle tree needs at least one leaf")
        level = [_check_node(leaf, f"leaf {i}") for i, leaf in enumerate(leaves)]
        # _levels[0] are the leaves, _levels[-1] == [root].
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            parents = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                parents.append(level[-1])
            level = parents
            self._levels.append(level)

    @property
    def root(self) -> bytes:
        """The 32-byte root to commit on-chain."""
        return self._levels[-1][0]

    @property
    def leaves(self) -> tuple[bytes, ...]:
        """The leaves in the order given."""
        return tuple(self._levels[0])

    def __len__(self) -> int:
        return len(self._levels[0])

    def proof(self, index: int) -> list[bytes]:
        """The siblings from leaf `index` up to the root, as `IndexedMerkle.verify` takes them
        (with `index` and `len(self)`); `MerkleError` if `index` is not in `[0, len(self))`."""
        index = _check_int(index, "leaf index")
        if not 0 <= index < len(self):
            raise MerkleError(f"leaf index {index} is out of range for {len(self)} leaves")
        siblings: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            # An odd last node has no sibling: it moves up unchanged and adds nothing.
            if sibling < len(level):
                siblings.append(level[sibling])
            index //= 2
        return siblings


def process_proof(proof: Sequence[bytes], leaf: bytes, index: int, count: int) -> bytes | None:
    """The root that `proof` leads to from `leaf` at position `index` of a tree of `count`
    leaves, or None when the proof does not fit that position (`index` not in `[0, count)`, or
    too few or too many siblings). `MerkleError` if the leaf or a proof element is not exactly
    32 bytes, or `index`/`count` is not an int."""
    node = _check_node(leaf, "leaf")
    siblings = [_check_node(sibling, f"proof element {i}") for i, sibling in enumerate(proof)]
    index = _check_int(index, "leaf index")
    count = _check_int(count, "leaf count")
    if not 0 <= index < count:
        return None
    used = 0
    while count > 1:
        if (index ^ 1) < count:
            if used == len(siblings):
                return None
            sibling = siblings[used]
            used += 1
            node = hash_pair(node, sibling) if index % 2 == 0 else hash_pair(sibling, node)
        index >>= 1
        count = (count + 1) >> 1
    if used != len(siblings):
        return None
    return node


def verify(proof: Sequence[bytes], root: bytes, leaf: bytes, index: int, count: int) -> bool:
    """True when `proof` proves `leaf` at position `index` of a tree of `count` leaves under
    `root`, exactly as `IndexedMerkle.verify`: False for a wrong index, count or proof length;
    malformed input (not 32-byte values, a non-int index or count) raises `MerkleError`."""
    checked_root = _check_node(root, "root")
    return process_proof(proof, leaf, index, count) == checked_root
