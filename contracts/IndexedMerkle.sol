// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";

/// @title IndexedMerkle: Merkle proofs that bind a leaf's position.
/// @notice The tree over `count` leaves pairs neighbours left to right, `parent =
/// keccak256(left || right)` in that order, and moves an odd last node up unchanged (so one leaf
/// is its own root). A proof is the siblings from the leaf up; the leaf's index says at each
/// level whether its node is the left or the right one, so a proof proves exactly one position
/// (unlike OpenZeppelin's sorted-pair `MerkleProof`, where any position passes). `ledger/merkle.py`
/// builds the same trees.
library IndexedMerkle {
    /// @notice True when `siblings` prove `leaf` at position `index` of a tree of `count` leaves
    /// whose root is `root`; false for `index >= count` or a proof of the wrong length.
    function verify(bytes32[] calldata siblings, bytes32 root, bytes32 leaf, uint256 index, uint256 count)
        internal
        pure
        returns (bool)
    {
        if (index >= count) return false;
        bytes32 node = leaf;
        uint256 used = 0;
        while (count > 1) {
            // the node's sibling, index with its lowest bit flipped, exists unless it is the odd last
            // slither-disable-next-line incorrect-exp (a bitwise xor on purpose, not a power)
            if ((index ^ 1) < count) {
                if (used == siblings.length) return false;
                bytes32 sibling = siblings[used++];
                node = index & 1 == 0 ? Hashes.efficientKeccak256(node, sibling) : Hashes.efficientKeccak256(sibling, node);
            }
            index >>= 1;
            count = (count + 1) >> 1;
        }
        return used == siblings.length && node == root;
    }
}
