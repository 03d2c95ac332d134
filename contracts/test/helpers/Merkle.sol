// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Merkle: the tree a node commits, built in Solidity for tests.
/// @notice Same shape and hashing as `ledger/merkle.py` and `IndexedMerkle`: leaves in the given
/// order, neighbours paired left to right with `parent = keccak256(left || right)` (ordered, not
/// sorted), an odd last node moves up unchanged. A proof is the siblings from the leaf up; which
/// side each goes on follows from the leaf's index, so a proof holds for one position only.
library Merkle {
    /// @notice The parent of `left` and `right`, in that order.
    function hashPair(bytes32 left, bytes32 right) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(left, right));
    }

    /// @notice The root over `leaves` (at least one).
    function root(bytes32[] memory leaves) internal pure returns (bytes32) {
        require(leaves.length != 0, "Merkle: no leaves");
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            level = _parents(level);
        }
        return level[0];
    }

    /// @notice The siblings of leaf `index` from the bottom up (levels where the node is an odd
    /// last one have no sibling and add nothing).
    function proof(bytes32[] memory leaves, uint256 index) internal pure returns (bytes32[] memory siblings) {
        require(index < leaves.length, "Merkle: index out of range");
        bytes32[] memory buffer = new bytes32[](256);
        uint256 count = 0;
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            uint256 sibling = index ^ 1;
            if (sibling < level.length) buffer[count++] = level[sibling];
            level = _parents(level);
            index /= 2;
        }
        siblings = new bytes32[](count);
        for (uint256 i = 0; i < count; ++i) {
            siblings[i] = buffer[i];
        }
    }

    function _parents(bytes32[] memory level) private pure returns (bytes32[] memory parents) {
        parents = new bytes32[]((level.length + 1) / 2);
        for (uint256 i = 0; i + 1 < level.length; i += 2) {
            parents[i / 2] = hashPair(level[i], level[i + 1]);
        }
        if (level.length % 2 == 1) parents[parents.length - 1] = level[level.length - 1];
    }
}
