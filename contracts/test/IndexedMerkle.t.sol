// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IndexedMerkle} from "../IndexedMerkle.sol";

import {Merkle} from "./helpers/Merkle.sol";
import {TestBase} from "./helpers/TestBase.sol";

/// @notice `IndexedMerkle.verify` behind an external call, so the proof arrives as calldata as
/// it does in the Slasher.
contract IndexedMerkleHarness {
    function verify(bytes32[] calldata siblings, bytes32 root, bytes32 leaf, uint256 index, uint256 count)
        external
        pure
        returns (bool)
    {
        return IndexedMerkle.verify(siblings, root, leaf, index, count);
    }
}

/// @title IndexedMerkle: every position of every small tree verifies, and only there.
/// @notice Trees and proofs come from the test helper `Merkle` (the shape of `ledger/merkle.py`);
/// one tree is also built by hand, so helper and library cannot agree on a wrong shape.
contract IndexedMerkleTest is TestBase {
    uint256 internal constant MAX_SMALL_TREE = 9;

    IndexedMerkleHarness internal merkle;

    function setUp() public {
        merkle = new IndexedMerkleHarness();
    }

    /// @dev `count` distinct leaves; `salt` varies them.
    function _leaves(uint256 count, uint256 salt) internal pure returns (bytes32[] memory leaves) {
        leaves = new bytes32[](count);
        for (uint256 i = 0; i < count; ++i) {
            leaves[i] = keccak256(abi.encode("leaf", salt, i));
        }
    }

    function _verify(bytes32[] memory leaves, bytes32[] memory siblings, bytes32 leaf, uint256 index)
        internal
        view
        returns (bool)
    {
        return merkle.verify(siblings, Merkle.root(leaves), leaf, index, leaves.length);
    }

    function _without(bytes32[] memory siblings, uint256 drop) internal pure returns (bytes32[] memory shorter) {
        shorter = new bytes32[](siblings.length - 1);
        for (uint256 i = 0; i < shorter.length; ++i) {
            shorter[i] = siblings[i < drop ? i : i + 1];
        }
    }

    function _with(bytes32[] memory siblings, bytes32 extra) internal pure returns (bytes32[] memory longer) {
        longer = new bytes32[](siblings.length + 1);
        for (uint256 i = 0; i < siblings.length; ++i) {
            longer[i] = siblings[i];
        }
        longer[siblings.length] = extra;
    }

    // ---- valid proofs ------------------------------------------------------------------------

    function test_verify_everyPositionOfTreesOfOneToNineLeaves() public view {
        for (uint256 count = 1; count <= MAX_SMALL_TREE; ++count) {
            bytes32[] memory leaves = _leaves(count, count);
            for (uint256 i = 0; i < count; ++i) {
                assertTrue(_verify(leaves, Merkle.proof(leaves, i), leaves[i], i), "every position verifies");
            }
        }
    }

    function test_verify_oneLeafIsItsOwnRootWithAnEmptyProof() public view {
        bytes32 leaf = keccak256("only");
        assertTrue(merkle.verify(new bytes32[](0), leaf, leaf, 0, 1), "the leaf is the root");
        assertFalse(merkle.verify(new bytes32[](0), keccak256("other"), leaf, 0, 1), "another root");
    }

    function test_verify_matchesAHandBuiltTreeOfFiveLeaves() public view {
        // root = H(H(H(l0, l1), H(l2, l3)), l4): l4 is the odd last node twice and moves up.
        bytes32[] memory l = _leaves(5, 0);
        bytes32 left = keccak256(abi.encodePacked(l[0], l[1]));
        bytes32 right = keccak256(abi.encodePacked(l[2], l[3]));
        bytes32 four = keccak256(abi.encodePacked(left, right));
        bytes32 root = keccak256(abi.encodePacked(four, l[4]));
        assertEq(Merkle.root(l), root, "the helper builds the same tree");

        bytes32[] memory ofTwo = new bytes32[](3);
        (ofTwo[0], ofTwo[1], ofTwo[2]) = (l[3], left, l[4]);
        assertTrue(merkle.verify(ofTwo, root, l[2], 2, 5), "l2: right sibling, left sibling, right sibling");
        bytes32[] memory ofFour = new bytes32[](1);
        ofFour[0] = four;
        assertTrue(merkle.verify(ofFour, root, l[4], 4, 5), "l4: one sibling, on the left");
        assertEq(Merkle.proof(l, 2)[1], left, "the helper's proof of l2");
        assertEq(Merkle.proof(l, 4).length, 1, "the helper's proof of l4");
    }

    function test_verify_ordersThePairs() public pure {
        // Unlike a sorted-pair tree, swapping two leaves changes the root.
        bytes32[] memory leaves = _leaves(2, 0);
        bytes32 root = Merkle.root(leaves);
        (leaves[0], leaves[1]) = (leaves[1], leaves[0]);
        assertTrue(Merkle.root(leaves) != root, "swapped leaves, another root");
    }

    // ---- invalid proofs ----------------------------------------------------------------------

    function test_verify_falseAtEveryOtherIndex() public view {
        for (uint256 count = 2; count <= MAX_SMALL_TREE; ++count) {
            bytes32[] memory leaves = _leaves(count, count);
            for (uint256 i = 0; i < count; ++i) {
                bytes32[] memory siblings = Merkle.proof(leaves, i);
                for (uint256 j = 0; j < count; ++j) {
                    if (j == i) continue;
                    assertFalse(_verify(leaves, siblings, leaves[i], j), "a proof holds at its own index only");
                }
            }
        }
    }

    function test_verify_falseForAnIndexAtOrBeyondTheCount() public view {
        for (uint256 count = 1; count <= MAX_SMALL_TREE; ++count) {
            bytes32[] memory leaves = _leaves(count, count);
            // The next power of two at or above `count`: index + width walks the same left/right
            // path as index, so only the range check refuses it.
            uint256 width = 1;
            while (width < count) width <<= 1;
            for (uint256 i = 0; i < count; ++i) {
                bytes32[] memory siblings = Merkle.proof(leaves, i);
                assertFalse(_verify(leaves, siblings, leaves[i], i + width), "an alias beyond the count");
                assertFalse(_verify(leaves, siblings, leaves[i], count), "index == count");
                assertFalse(_verify(leaves, siblings, leaves[i], type(uint256).max), "the largest index");
            }
        }
        bytes32 leaf = keccak256("only");
        assertFalse(merkle.verify(new bytes32[](0), leaf, leaf, 0, 0), "a tree of no leaves");
    }

    function test_verify_falseForAShortProof() public view {
        for (uint256 count = 2; count <= MAX_SMALL_TREE; ++count) {
            bytes32[] memory leaves = _leaves(count, count);
            for (uint256 i = 0; i < count; ++i) {
                bytes32[] memory siblings = Merkle.proof(leaves, i);
                for (uint256 drop = 0; drop < siblings.length; ++drop) {
                    assertFalse(_verify(leaves, _without(siblings, drop), leaves[i], i), "a sibling missing");
                }
            }
        }
    }

    function test_verify_falseForALongProof() public view {
        for (uint256 count = 1; count <= MAX_SMALL_TREE; ++count) {
            bytes32[] memory leaves = _leaves(count, count);
            for (uint256 i = 0; i < count; ++i) {
                bytes32[] memory siblings = Merkle.proof(leaves, i);
                assertFalse(_verify(leaves, _with(siblings, keccak256("extra")), leaves[i], i), "an extra sibling");
                assertFalse(_verify(leaves, _with(siblings, bytes32(0)), leaves[i], i), "a trailing zero");
            }
        }
    }

    function test_verify_falseForSwappedSiblings() public view {
        for (uint256 count = 3; count <= MAX_SMALL_TREE; ++count) {
            bytes32[] memory leaves = _leaves(count, count);
            for (uint256 i = 0; i < count; ++i) {
                bytes32[] memory siblings = Merkle.proof(leaves, i);
                for (uint256 a = 0; a + 1 < siblings.length; ++a) {
                    bytes32[] memory swapped = Merkle.proof(leaves, i);
                    (swapped[a], swapped[a + 1]) = (swapped[a + 1], swapped[a]);
                    assertFalse(_verify(leaves, swapped, leaves[i], i), "siblings out of order");
                }
            }
        }
    }

    function test_verify_falseForAnotherLeafOrRoot() public view {
        for (uint256 count = 1; count <= MAX_SMALL_TREE; ++count) {
            bytes32[] memory leaves = _leaves(count, count);
            bytes32 root = Merkle.root(leaves);
            for (uint256 i = 0; i < count; ++i) {
                bytes32[] memory siblings = Merkle.proof(leaves, i);
                assertFalse(merkle.verify(siblings, root, keccak256("foreign"), i, count), "a foreign leaf");
                assertFalse(merkle.verify(siblings, keccak256("root"), leaves[i], i, count), "another root");
            }
        }
    }

    function test_verify_falseForAnInnerNodeAsALeaf() public view {
        // H(l0, l1) with the proof of the pair above it would prove a position of a smaller tree,
        // not of this one: the count fixes the depth.
        bytes32[] memory leaves = _leaves(4, 0);
        bytes32 inner = keccak256(abi.encodePacked(leaves[0], leaves[1]));
        bytes32[] memory siblings = new bytes32[](1);
        siblings[0] = keccak256(abi.encodePacked(leaves[2], leaves[3]));
        for (uint256 i = 0; i < 4; ++i) {
            assertFalse(merkle.verify(siblings, Merkle.root(leaves), inner, i, 4), "an inner node");
        }
    }

    // ---- fuzz --------------------------------------------------------------------------------

    function testFuzz_verify_everyPositionOfAnyTree(uint256 count, uint256 index, uint256 salt) public view {
        count = bound(count, 1, 300);
        index = bound(index, 0, count - 1);
        bytes32[] memory leaves = _leaves(count, salt);
        bytes32[] memory siblings = Merkle.proof(leaves, index);
        assertTrue(_verify(leaves, siblings, leaves[index], index), "the proven position");
        if (count > 1) {
            uint256 other = (index + 1) % count;
            assertFalse(_verify(leaves, siblings, leaves[index], other), "the next position");
            assertFalse(_verify(leaves, siblings, leaves[other], index), "another leaf at this position");
        }
    }

    function testFuzz_verify_falseBeyondTheCount(uint256 count, uint256 index, uint256 beyond) public view {
        count = bound(count, 1, 300);
        index = bound(index, 0, count - 1);
        beyond = bound(beyond, count, type(uint256).max);
        bytes32[] memory leaves = _leaves(count, count);
        assertFalse(_verify(leaves, Merkle.proof(leaves, index), leaves[index], beyond), "index >= count");
    }

    function testFuzz_verify_falseForAnyAlteredSibling(uint256 count, uint256 index, uint256 which, bytes32 noise)
        public
        view
    {
        count = bound(count, 2, 300);
        index = bound(index, 0, count - 1);
        bytes32[] memory leaves = _leaves(count, count);
        bytes32[] memory siblings = Merkle.proof(leaves, index);
        which = bound(which, 0, siblings.length - 1);
        vm.assume(noise != siblings[which]);
        siblings[which] = noise;
        assertFalse(_verify(leaves, siblings, leaves[index], index), "an altered sibling");
    }
}
