"""Merkle trees whose proofs OpenZeppelin `MerkleProof.verify` accepts.

A node commits one root per batch of leaves; a slash proves one leaf under that root.
OpenZeppelin hashes pairs commutatively: `parent = keccak256(min(a, b) || max(a, b))` (the
smaller 32-byte word first), so a proof is just the list of siblings from the leaf up, with no
left/right flags. Leaves are taken as given (32-byte leaf hashes such as `Leaf.hash()`, which is
already `keccak256(abi.encode(...))`) and are not hashed again.

Shape: leaves stay in the caller's order (a leaf's index is its position in the batch); each
level pairs neighbours left to right and an odd last node moves up unchanged. So one leaf is its
own root with an empty proof, and a proof has at most ceil(log2(n)) siblings.
No Python library that is kept up implements this exact rule, hence the few lines here.
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


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin `Hashes.commutativeKeccak256`: keccak256 of the two nodes, smaller first."""
    return keccak(a + b) if a < b else keccak(b + a)


class MerkleTree:
    """An immutable Merkle tree over 32-byte leaves, with OpenZeppelin-compatible proofs."""

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
        """The siblings from leaf `index` up to the root, as `MerkleProof.verify` takes them;
        `MerkleError` if `index` is not in `[0, len(self))`."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise MerkleError(f"leaf index must be an int, got {type(index).__name__}")
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


def process_proof(proof: Sequence[bytes], leaf: bytes) -> bytes:
    """The root that `proof` leads to from `leaf` (OpenZeppelin `MerkleProof.processProof`);
    `MerkleError` if the leaf or a proof element is not exactly 32 bytes."""
    node = _check_node(leaf, "leaf")
    for i, sibling in enumerate(proof):
        node = hash_pair(node, _check_node(sibling, f"proof element {i}"))
    return node


def verify(proof: Sequence[bytes], root: bytes, leaf: bytes) -> bool:
    """True when `proof` proves `leaf` under `root`, exactly as OpenZeppelin
    `MerkleProof.verify`; malformed input (not 32-byte values) raises `MerkleError`."""
    return process_proof(proof, leaf) == _check_node(root, "root")
