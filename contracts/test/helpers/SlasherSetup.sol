// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ISlasher} from "../../interfaces/ISlasher.sol";

import {SystemFixture} from "./Fixture.sol";

/// @notice Shared setup of the Slasher tests: a deployed system, one staked node and verifiers
/// with known keys.
abstract contract SlasherSetup is SystemFixture {
    uint64 internal constant T0 = ISSUED_AT; // the leaves of makeLeaf(sessionId, step, salt) are issued at the start
    uint256 internal constant NODE_PK = 0xA11CE;
    uint256 internal constant STRANGER_PK = 0x5712A;
    uint256 internal constant NODE_STAKE = 1_000e18;
    bytes32 internal constant SESSION = keccak256("session 1");

    address internal node;
    /// @dev Verifier keys sorted by address, so verdict lists built in order are valid.
    uint256[] internal verifierKeys;

    function _setUpSystem(Params memory p, uint256 verifierCount) internal {
        vm.warp(T0);
        deploySystem(p);
        node = vm.addr(NODE_PK);
        registerNode(node, 0, 8, NODE_STAKE);
        uint256[] memory keys = new uint256[](verifierCount);
        for (uint256 i = 0; i < verifierCount; ++i) {
            keys[i] = 0xF1 + i;
        }
        // Insertion sort by address: verdicts must come in strictly increasing signer order.
        for (uint256 i = 1; i < keys.length; ++i) {
            uint256 k = keys[i];
            uint256 j = i;
            while (j > 0 && vm.addr(keys[j - 1]) > vm.addr(k)) {
                keys[j] = keys[j - 1];
                --j;
            }
            keys[j] = k;
        }
        verifierKeys = keys;
        for (uint256 i = 0; i < keys.length; ++i) {
            registerVerifier(vm.addr(keys[i]), p.verifierMinStake);
        }
    }

    /// @dev Three leaves of SESSION (steps 0..2), committed by `node` as one batch.
    function _threeLeaves() internal pure returns (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) {
        leaves = new ISlasher.Leaf[](3);
        hashes = new bytes32[](3);
        for (uint256 i = 0; i < 3; ++i) {
            leaves[i] = makeLeaf(SESSION, uint32(i), 0);
            hashes[i] = keccak256(abi.encode(leaves[i]));
        }
    }

    function _verdicts(uint256[] memory keys, uint256 batchId, bytes32 leaf, ISlasher.Reason reason)
        internal
        view
        returns (bytes[] memory verdicts)
    {
        verdicts = new bytes[](keys.length);
        for (uint256 i = 0; i < keys.length; ++i) {
            verdicts[i] = signVerdict(keys[i], node, batchId, leaf, reason);
        }
    }

    /// @dev Withheld verdicts by `keys` (in that order) against leaf `leafIndex` of `batchId`.
    function _withheldVerdicts(uint256[] memory keys, uint256 batchId, uint32 leafIndex)
        internal
        view
        returns (bytes[] memory verdicts)
    {
        verdicts = new bytes[](keys.length);
        for (uint256 i = 0; i < keys.length; ++i) {
            verdicts[i] = signWithheld(keys[i], node, batchId, leafIndex);
        }
    }

    /// @dev Claims, for the signers `keys`, the verdict on `leaf` of `batchId`, and mines a block.
    function _claimVerdicts(uint256[] memory keys, uint256 batchId, bytes32 leaf, ISlasher.Reason reason) internal {
        claimAndRoll(slasher.verdictDigest(node, batchId, leaf, reason), addressesOf(keys), SECRET);
    }

    /// @dev Claims, for the signers `keys`, the withheld finding on `leafIndex` of `batchId`, and mines a block.
    function _claimWithheld(uint256[] memory keys, uint256 batchId, uint32 leafIndex) internal {
        claimAndRoll(slasher.withheldDigest(node, batchId, leafIndex), addressesOf(keys), SECRET);
    }

    function _firstKeys(uint256 count) internal view returns (uint256[] memory keys) {
        keys = new uint256[](count);
        for (uint256 i = 0; i < count; ++i) {
            keys[i] = verifierKeys[i];
        }
    }

    function _oneKey(uint256 key) internal pure returns (uint256[] memory keys) {
        keys = new uint256[](1);
        keys[0] = key;
    }
}
