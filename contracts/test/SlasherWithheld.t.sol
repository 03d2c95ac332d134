// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ICommitments} from "../interfaces/ICommitments.sol";
import {ISlasher} from "../interfaces/ISlasher.sol";

import {SlasherSetup} from "./helpers/SlasherSetup.sol";

/// @notice A batch of three leaves committed by `node`, and withheld-verdict helpers over it.
abstract contract WithheldSetup is SlasherSetup {
    ISlasher.Leaf[] internal _leaves;
    bytes32[] internal _hashes;
    uint256 internal _batchId;
    ICommitments.BatchHeader internal _header;

    function _commitThreeLeaves() internal {
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        for (uint256 i = 0; i < leaves.length; ++i) {
            _leaves.push(leaves[i]);
        }
        _hashes = hashes;
        (_batchId, _header) = commitLeaves(node, hashes);
    }

    /// @dev A withheld slash of `leafIndex` with `verdicts` (and whatever claim exists) reverts with `error`.
    function _expectWithheldRevert(uint32 leafIndex, bytes[] memory verdicts, bytes memory error) internal {
        ICommitments.BatchHeader memory header = _header;
        vm.expectRevert(error);
        slasher.slashWithheld(_batchId, header, leafIndex, verdicts, SECRET);
    }

    /// @dev Verifiers `keys` find position `leafIndex` withheld: claim, one block, slash.
    function _slashWithheldBy(uint256[] memory keys, uint32 leafIndex) internal returns (uint256) {
        return claimAndSlashWithheld(_batchId, _header, leafIndex, keys);
    }

    /// @dev The Withheld digest as any EIP-712 signer computes it, for any chain and contract.
    function _withheldDigest(uint256 chainId, address verifyingContract, address accused, uint256 batchId, uint32 index)
        internal
        pure
        returns (bytes32)
    {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256(
                    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract,bytes32 salt)"
                ),
                keccak256("stakeswarm Slasher"),
                keccak256("1"),
                chainId,
                verifyingContract,
                DOMAIN_SALT
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(keccak256("Withheld(address node,uint256 batchId,uint32 leafIndex)"), accused, batchId, index)
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }
}

/// @title Slasher.slashWithheld with quorum 1: the success path, every refusal, and how it
/// relates to `slash` of a proven leaf.
contract SlasherWithheldTest is WithheldSetup {
    function setUp() public {
        _setUpSystem(defaultParams(), 2);
        _commitThreeLeaves();
    }

    function _verdict(uint256 key, uint32 leafIndex) internal view returns (bytes[] memory) {
        return _withheldVerdicts(_oneKey(key), _batchId, leafIndex);
    }

    // ---- success -----------------------------------------------------------------------------

    function test_slashWithheld_takesStakePaysVerifierAndPoolsTheRest() public {
        address verifier = vm.addr(verifierKeys[0]);
        bytes[] memory verdicts = _verdict(verifierKeys[0], 1);
        address submitter = address(0x5B);
        _claimWithheld(_oneKey(verifierKeys[0]), _batchId, 1);

        vm.expectEmit(address(slasher));
        emit ISlasher.LeafWithheldSlashed(node, _batchId, 1, 500e18, 100e18);
        vm.prank(submitter);
        uint256 slashed = slasher.slashWithheld(_batchId, _header, 1, verdicts, SECRET);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.slashWithheld quorum 1");

        assertEq(slashed, 500e18, "half the stake");
        assertEq(token.balanceOf(verifier), 100e18, "bounty: 20% of the slash, to the signer");
        assertEq(token.balanceOf(submitter), 0, "the submitter is not paid for submitting");
        assertEq(slasher.rewardPool(), 400e18, "reward pool: the rest");
        assertEq(token.balanceOf(address(slasher)), 400e18, "slasher balance == pool");
        assertEq(registry.getNode(node).stake, 500e18, "node stake");
        assertEq(registry.totalStaked(), 500e18, "registry totalStaked");
        assertTrue(slasher.isWithheldSlashed(_batchId, 1), "position marked");
        assertFalse(slasher.isWithheldSlashed(_batchId, 0), "other position untouched");
        assertFalse(slasher.isLeafSlashed(node, _hashes[1]), "no leaf hash is marked: none was shown");
        assertFalse(registry.isActive(node), "node fell below its span's stake");
    }

    function test_slashWithheld_slashesEveryPositionOnce() public {
        uint256 remaining = NODE_STAKE;
        for (uint32 i = 0; i < 3; ++i) {
            uint256 slashed = _slashWithheldBy(_oneKey(verifierKeys[0]), i);
            assertEq(slashed, remaining / 2, "each slash takes half of what is left");
            remaining -= slashed;
        }
        assertEq(registry.getNode(node).stake, remaining, "stake left");
    }

    function test_slashWithheld_reachesUnbondingStakeInsideTheWindow() public {
        vm.prank(node);
        registry.unbond(NODE_STAKE);
        vm.warp(T0 + 3 days);
        assertEq(_slashWithheldBy(_oneKey(verifierKeys[0]), 0), 500e18, "half of unbonding");
        assertEq(registry.getNode(node).unbonding, 500e18, "unbonding left");
    }

    function test_slashWithheld_allowedAtTheLastSecondOfTheWindow() public {
        vm.warp(T0 + 3 days);
        assertEq(_slashWithheldBy(_oneKey(verifierKeys[0]), 2), 500e18, "slashed");
    }

    // ---- which leaf, which batch, when -------------------------------------------------------

    function test_slashWithheld_revertsOnUnknownBatch() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherUnknownBatch.selector, 0));
        slasher.slashWithheld(0, _header, 0, verdicts, SECRET);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherUnknownBatch.selector, _batchId + 1));
        slasher.slashWithheld(_batchId + 1, _header, 0, verdicts, SECRET);
    }

    function test_slashWithheld_revertsOnAHeaderThatIsNotTheBatchs() public {
        // A forged header could name a larger leafCount or a later committedAt (reopening the window).
        bytes[] memory verdicts = _verdict(verifierKeys[0], 5);
        ICommitments.BatchHeader memory forged = _header;
        forged.leafCount = 6;
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherHeaderMismatch.selector, _batchId));
        slasher.slashWithheld(_batchId, forged, 5, verdicts, SECRET);
        forged = _header;
        forged.committedAt += 1 days;
        vm.warp(T0 + 3 days + 1);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherHeaderMismatch.selector, _batchId));
        slasher.slashWithheld(_batchId, forged, 0, verdicts, SECRET);
    }

    function test_slashWithheld_revertsAfterTheChallengeWindow() public {
        _claimWithheld(_oneKey(verifierKeys[0]), _batchId, 0);
        vm.warp(T0 + 3 days + 1);
        _expectWithheldRevert(
            0,
            _verdict(verifierKeys[0], 0),
            abi.encodeWithSelector(ISlasher.SlasherChallengeWindowClosed.selector, _batchId, T0 + 3 days)
        );
    }

    function test_slashWithheld_revertsOnLeafIndexOutOfRange() public {
        _expectWithheldRevert(
            3,
            _verdict(verifierKeys[0], 3),
            abi.encodeWithSelector(ISlasher.SlasherLeafIndexOutOfRange.selector, _batchId, uint32(3), uint32(3))
        );
        uint32 last = type(uint32).max;
        _expectWithheldRevert(
            last,
            _verdict(verifierKeys[0], last),
            abi.encodeWithSelector(ISlasher.SlasherLeafIndexOutOfRange.selector, _batchId, last, uint32(3))
        );
    }

    function test_slashWithheld_revertsOnTheSameIndexTwice() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0);
        _slashWithheldBy(_oneKey(verifierKeys[0]), 0);
        _claimWithheld(_oneKey(verifierKeys[1]), _batchId, 0);
        bytes memory error =
            abi.encodeWithSelector(ISlasher.SlasherWithheldAlreadySlashed.selector, _batchId, uint32(0));
        // the same verdicts replayed, and fresh ones from another verifier
        _expectWithheldRevert(0, verdicts, error);
        _expectWithheldRevert(0, _verdict(verifierKeys[1], 0), error);
        assertEq(registry.getNode(node).stake, 500e18, "slashed once");
    }

    function test_slashWithheld_revertsWhenNothingIsLeftToSlash() public {
        Params memory p = defaultParams();
        p.slashBps = 10_000;
        _setUpSystem(p, 1);
        (, bytes32[] memory hashes) = _threeLeaves();
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitLeaves(node, hashes);
        bytes[] memory second = _withheldVerdicts(_oneKey(verifierKeys[0]), batchId, 1);
        assertEq(claimAndSlashWithheld(batchId, header, 0, _oneKey(verifierKeys[0])), NODE_STAKE, "everything");
        _claimWithheld(_oneKey(verifierKeys[0]), batchId, 1);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNothingToSlash.selector, node));
        slasher.slashWithheld(batchId, header, 1, second, SECRET);
    }

    // ---- verdicts ----------------------------------------------------------------------------

    function test_slashWithheld_revertsWithoutVerdicts() public {
        _expectWithheldRevert(
            0, new bytes[](0), abi.encodeWithSelector(ISlasher.SlasherWrongVerdictCount.selector, 0, 1)
        );
    }

    function test_slashWithheld_revertsOnMoreVerdictsThanTheQuorum() public {
        _expectWithheldRevert(
            0,
            _withheldVerdicts(_firstKeys(2), _batchId, 0),
            abi.encodeWithSelector(ISlasher.SlasherWrongVerdictCount.selector, 2, 1)
        );
    }

    function test_slashWithheld_revertsWithoutAClaim() public {
        bytes32 claimHash = slasher.claimHash(
            slasher.withheldDigest(node, _batchId, 0), addressesOf(_oneKey(verifierKeys[0])), SECRET
        );
        _expectWithheldRevert(
            0, _verdict(verifierKeys[0], 0), abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash)
        );
    }

    function test_slashWithheld_revertsOnAClaimOfAnotherPosition() public {
        _claimWithheld(_oneKey(verifierKeys[0]), _batchId, 1);
        bytes32 claimHash = slasher.claimHash(
            slasher.withheldDigest(node, _batchId, 0), addressesOf(_oneKey(verifierKeys[0])), SECRET
        );
        _expectWithheldRevert(
            0, _verdict(verifierKeys[0], 0), abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash)
        );
    }

    function test_slashWithheld_revertsOnShortSignature() public {
        bytes[] memory verdicts = new bytes[](1);
        verdicts[0] = hex"00";
        _expectWithheldRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherInvalidVerdictSignature.selector, 0));
    }

    function test_slashWithheld_revertsOnMalleableVerdict() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0);
        verdicts[0] = malleate(verdicts[0]);
        bytes32 digest = slasher.withheldDigest(node, _batchId, 0);
        assertEq(ecrecoverSignature(digest, verdicts[0]), vm.addr(verifierKeys[0]), "ecrecover accepts it");
        _expectWithheldRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherInvalidVerdictSignature.selector, 0));
    }

    function test_slashWithheld_revertsOnVerdictOfANonVerifier() public {
        _expectWithheldRevert(
            0,
            _verdict(STRANGER_PK, 0),
            abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, vm.addr(STRANGER_PK))
        );
    }

    function test_slashWithheld_revertsOnVerdictOfAVerifierWhoLeft() public {
        address verifier = vm.addr(verifierKeys[0]);
        _claimWithheld(_oneKey(verifierKeys[0]), _batchId, 0);
        vm.prank(verifier);
        verifierRegistry.unbond(1_000e18);
        _expectWithheldRevert(
            0, _verdict(verifierKeys[0], 0), abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, verifier)
        );
    }

    /// @dev A signature by verifier 0 over `digest`, expected to recover to someone else under
    /// the real digest of leaf 0, which is the error the slash must give.
    function _expectRecoveredStranger(bytes32 digest) internal {
        bytes[] memory verdicts = new bytes[](1);
        verdicts[0] = sign(verifierKeys[0], digest);
        address recovered = ecrecoverSignature(slasher.withheldDigest(node, _batchId, 0), verdicts[0]);
        assertTrue(recovered != vm.addr(verifierKeys[0]), "signed something else");
        _expectWithheldRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, recovered));
    }

    function test_withheldDigest_isTheEip712Digest() public view {
        assertEq(
            slasher.withheldDigest(node, _batchId, 2),
            _withheldDigest(block.chainid, address(slasher), node, _batchId, 2),
            "digest matches an independent EIP-712 computation"
        );
    }

    function test_slashWithheld_revertsOnVerdictForOtherChain() public {
        _expectRecoveredStranger(_withheldDigest(1, address(slasher), node, _batchId, 0));
    }

    function test_slashWithheld_revertsOnVerdictForOtherContract() public {
        _expectRecoveredStranger(_withheldDigest(block.chainid, address(commitments), node, _batchId, 0));
    }

    function test_slashWithheld_revertsOnVerdictForAnotherIndex() public {
        _expectRecoveredStranger(slasher.withheldDigest(node, _batchId, 1));
    }

    function test_slashWithheld_revertsOnVerdictForAnotherBatch() public {
        (uint256 other,) = commitRoot(node, keccak256("another batch"), uint32(_hashes.length));
        _expectRecoveredStranger(slasher.withheldDigest(node, other, 0));
    }

    function test_slashWithheld_revertsOnVerdictAgainstAnotherNode() public {
        _expectRecoveredStranger(slasher.withheldDigest(vm.addr(STRANGER_PK), _batchId, 0));
    }

    function test_slashWithheld_revertsOnAMismatchVerdictOfTheSameLeaf() public {
        // a Verdict signature is not a Withheld signature: the type hashes differ
        _expectRecoveredStranger(slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Withheld));
    }

    // ---- the two rules about one sampled leaf ------------------------------------------------

    function test_slash_revertsOnAPositionSlashedAsWithheld() public {
        // Proofs bind positions: a leaf proven at a position already slashed as withheld is the
        // same offence and is not slashed again.
        _slashWithheldBy(_oneKey(verifierKeys[0]), 0);
        _claimVerdicts(_oneKey(verifierKeys[1]), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        bytes[] memory verdicts = _verdicts(_oneKey(verifierKeys[1]), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherWithheldAlreadySlashed.selector, _batchId, uint32(0)));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
        assertFalse(slasher.isLeafSlashed(node, _hashes[0]), "the leaf is not marked");
    }

    function test_slash_marksThePositionForSlashWithheld() public {
        claimAndSlash(
            _leaves[2], leafProof(_batchId, _header, _hashes, 2), ISlasher.Reason.Mismatch, _oneKey(verifierKeys[0])
        );
        assertTrue(slasher.isWithheldSlashed(_batchId, 2), "position marked by slash");
        assertFalse(slasher.isWithheldSlashed(_batchId, 1), "other positions untouched");
        _claimWithheld(_oneKey(verifierKeys[1]), _batchId, 2);
        _expectWithheldRevert(
            2,
            _verdict(verifierKeys[1], 2),
            abi.encodeWithSelector(ISlasher.SlasherWithheldAlreadySlashed.selector, _batchId, uint32(2))
        );
    }
}

/// @title Slasher.slashWithheld with quorum 3: verdict lists, ordering, bounty split.
contract SlasherWithheldQuorumTest is WithheldSetup {
    function setUp() public {
        Params memory p = defaultParams();
        p.quorum = 3;
        _setUpSystem(p, 4);
        _commitThreeLeaves();
    }

    function _sorted(uint256 count) internal view returns (bytes[] memory) {
        return _withheldVerdicts(_firstKeys(count), _batchId, 0);
    }

    function test_slashWithheld_splitsTheBountyAcrossTheQuorum() public {
        bytes[] memory verdicts = _sorted(3);
        uint256 perVerifier = uint256(100e18) / 3;
        _claimWithheld(_firstKeys(3), _batchId, 0);
        vm.expectEmit(address(slasher));
        emit ISlasher.LeafWithheldSlashed(node, _batchId, 0, 500e18, perVerifier);
        uint256 slashed = slasher.slashWithheld(_batchId, _header, 0, verdicts, SECRET);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.slashWithheld quorum 3");

        assertEq(slashed, 500e18, "slashed");
        for (uint256 i = 0; i < 3; ++i) {
            assertEq(token.balanceOf(vm.addr(verifierKeys[i])), perVerifier, "each signer's share");
        }
        assertEq(token.balanceOf(vm.addr(verifierKeys[3])), 0, "non-signer gets nothing");
        assertEq(slasher.rewardPool(), 400e18 + 1, "pool gets the rest and the dust");
        assertEq(token.balanceOf(address(slasher)), slasher.rewardPool(), "slasher balance == pool");
    }

    function test_slashWithheld_revertsBelowQuorum() public {
        _expectWithheldRevert(0, _sorted(2), abi.encodeWithSelector(ISlasher.SlasherWrongVerdictCount.selector, 2, 3));
    }

    function test_slashWithheld_revertsOnSignersBeyondTheQuorum() public {
        _claimWithheld(_firstKeys(4), _batchId, 0);
        _expectWithheldRevert(0, _sorted(4), abi.encodeWithSelector(ISlasher.SlasherWrongVerdictCount.selector, 4, 3));
    }

    function test_slashWithheld_revertsOnUnsortedSigners() public {
        bytes[] memory verdicts = _sorted(3);
        (verdicts[0], verdicts[1]) = (verdicts[1], verdicts[0]);
        _expectWithheldRevert(
            0,
            verdicts,
            abi.encodeWithSelector(
                ISlasher.SlasherVerdictSignersNotSorted.selector, vm.addr(verifierKeys[1]), vm.addr(verifierKeys[0])
            )
        );
    }

    function test_slashWithheld_revertsOnARepeatedSigner() public {
        bytes[] memory verdicts = _sorted(3);
        verdicts[2] = verdicts[1];
        _expectWithheldRevert(
            0,
            verdicts,
            abi.encodeWithSelector(
                ISlasher.SlasherVerdictSignersNotSorted.selector, vm.addr(verifierKeys[1]), vm.addr(verifierKeys[1])
            )
        );
    }

    function test_slashWithheld_revertsOnANonVerifierAmongTheQuorum() public {
        bytes[] memory verdicts = _sorted(3);
        verdicts[2] = signWithheld(STRANGER_PK, node, _batchId, 0);
        _expectWithheldRevert(
            0, verdicts, abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, vm.addr(STRANGER_PK))
        );
    }

    function test_slashWithheld_revertsOnABadSignatureAmongTheQuorum() public {
        bytes[] memory verdicts = _sorted(3);
        verdicts[1] = malleate(verdicts[1]);
        _expectWithheldRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherInvalidVerdictSignature.selector, 1));
    }
}

/// @title Slasher.slashWithheld fuzz tests: any position of any batch size, nothing beyond it.
contract SlasherWithheldFuzzTest is SlasherSetup {
    function testFuzz_slashWithheld_acceptsExactlyThePositionsOfTheBatch(uint32 leafCount, uint32 leafIndex)
        public
    {
        _setUpSystem(defaultParams(), 1);
        leafCount = uint32(bound(leafCount, 1, MAX_LEAVES));
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitRoot(node, keccak256("any root"), leafCount);
        bytes[] memory verdicts = _withheldVerdicts(_oneKey(verifierKeys[0]), batchId, leafIndex);
        _claimWithheld(_oneKey(verifierKeys[0]), batchId, leafIndex);
        if (leafIndex >= leafCount) {
            vm.expectRevert(
                abi.encodeWithSelector(ISlasher.SlasherLeafIndexOutOfRange.selector, batchId, leafIndex, leafCount)
            );
            slasher.slashWithheld(batchId, header, leafIndex, verdicts, SECRET);
            assertFalse(slasher.isWithheldSlashed(batchId, leafIndex), "nothing marked");
        } else {
            assertEq(slasher.slashWithheld(batchId, header, leafIndex, verdicts, SECRET), NODE_STAKE / 2, "slashed");
            assertTrue(slasher.isWithheldSlashed(batchId, leafIndex), "marked");
        }
    }
}
