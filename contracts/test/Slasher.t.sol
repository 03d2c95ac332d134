// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Commitments} from "../Commitments.sol";
import {NodeRegistry} from "../NodeRegistry.sol";
import {Slasher} from "../Slasher.sol";
import {StakeToken} from "../StakeToken.sol";
import {VerifierRegistry} from "../VerifierRegistry.sol";
import {ICommitments} from "../interfaces/ICommitments.sol";
import {INodeRegistry} from "../interfaces/INodeRegistry.sol";
import {ISlasher} from "../interfaces/ISlasher.sol";

import {SystemFixture} from "./helpers/Fixture.sol";
import {Merkle} from "./helpers/Merkle.sol";
import {SlasherSetup} from "./helpers/SlasherSetup.sol";

/// @title Slasher tests with quorum 1: claim, slash, equivocation, reward pool, views, deployment checks.
contract SlasherTest is SlasherSetup {
    ISlasher.Leaf[] internal _leaves;
    bytes32[] internal _hashes;
    uint256 internal _batchId;
    ICommitments.BatchHeader internal _header;

    function setUp() public {
        _setUpSystem(defaultParams(), 2);
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        for (uint256 i = 0; i < leaves.length; ++i) {
            _leaves.push(leaves[i]);
        }
        _hashes = hashes;
        (_batchId, _header) = commitLeaves(node, hashes);
    }

    function _verdict(uint256 key, uint256 leafIndex, ISlasher.Reason reason) internal view returns (bytes[] memory) {
        return _verdicts(_oneKey(key), _batchId, _hashes[leafIndex], reason);
    }

    /// @dev Verifier `key` finds leaf `leafIndex` a mismatch: claim, one block, slash.
    function _slashBy(uint256 key, uint256 leafIndex) internal returns (uint256) {
        return claimAndSlash(
            _leaves[leafIndex], leafProof(_batchId, _header, _hashes, leafIndex), ISlasher.Reason.Mismatch, _oneKey(key)
        );
    }

    /// @dev A slash of leaf `leafIndex` with `verdicts` (and whatever claim exists) reverts with `error`.
    function _expectSlashRevert(uint256 leafIndex, bytes[] memory verdicts, bytes memory error) internal {
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, leafIndex);
        ISlasher.Leaf memory leaf = _leaves[leafIndex];
        vm.expectRevert(error);
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    // ---- deployment --------------------------------------------------------------------------

    function test_constructor_setsParameters() public view {
        assertEq(address(slasher.registry()), address(registry), "registry");
        assertEq(address(slasher.commitments()), address(commitments), "commitments");
        assertEq(address(slasher.verifiers()), address(verifierRegistry), "verifiers");
        assertEq(uint256(slasher.quorum()), 1, "quorum");
        assertEq(uint256(slasher.slashBps()), 5_000, "slashBps");
        assertEq(uint256(slasher.bountyBps()), 2_000, "bountyBps");
        assertEq(uint256(slasher.challengeWindow()), 3 days, "challengeWindow");
        assertEq(slasher.rewardRecipient(), REWARD_RECIPIENT, "rewardRecipient");
        assertEq(uint256(slasher.commitDeadline()), 2 hours, "commitDeadline");
        assertEq(uint256(slasher.receiptChallengePeriod()), 1 days, "receiptChallengePeriod");
        assertEq(uint256(slasher.responseWindow()), 6 hours, "responseWindow");
        assertEq(slasher.challengeBond(), 1e18, "challengeBond");
        assertEq(slasher.challengeCount(), 0, "challengeCount");
        assertEq(registry.slasher(), address(slasher), "registry names the slasher");
        assertEq(registry.commitments(), address(commitments), "registry names the commitments");
        assertEq(slasher.rewardPool(), 0, "rewardPool");
    }

    /// @dev A registry + commitments pair whose slasher is the next contract this test deploys.
    function _pairForNextDeployment() internal returns (NodeRegistry r, Commitments c) {
        (address predictedCommitments, address predictedSlasher) = predictNextPair();
        r = new NodeRegistry(token, 100e18, 7 days, predictedCommitments, predictedSlasher);
        c = new Commitments(r, MAX_LEAVES);
    }

    function _deploySlasher(NodeRegistry r, Commitments c, ISlasher.Params memory p) internal returns (Slasher) {
        return new Slasher(r, c, verifierRegistry, p, DOMAIN_SALT);
    }

    /// @dev The fixture's Slasher parameters, to change one at a time.
    function _params() internal pure returns (ISlasher.Params memory) {
        return slasherParams(defaultParams());
    }

    function test_constructor_revertsWhenRegistryNamesAnotherSlasher() public {
        address predictedCommitments = vm.computeCreateAddress(address(this), vm.getNonce(address(this)) + 1);
        NodeRegistry r = new NodeRegistry(token, 100e18, 7 days, predictedCommitments, address(0xDEAD));
        Commitments c = new Commitments(r, MAX_LEAVES);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNotRegistrySlasher.selector, address(0xDEAD)));
        _deploySlasher(r, c, _params());
    }

    function test_constructor_revertsWhenCommitmentsFollowAnotherRegistry() public {
        (NodeRegistry r,) = _pairForNextDeployment();
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherRegistryMismatch.selector, address(registry), address(r))
        );
        _deploySlasher(r, commitments, _params());
    }

    function test_constructor_revertsOnZeroQuorum() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        ISlasher.Params memory p = _params();
        p.quorum = 0;
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidQuorum.selector, uint8(0)));
        _deploySlasher(r, c, p);
    }

    function test_constructor_revertsOnSlashBpsAboveOne() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        ISlasher.Params memory p = _params();
        p.slashBps = 10_001;
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidBps.selector, uint16(10_001)));
        _deploySlasher(r, c, p);
    }

    function test_constructor_revertsOnBountyBpsAboveOne() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        ISlasher.Params memory p = _params();
        p.bountyBps = 10_001;
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidBps.selector, uint16(10_001)));
        _deploySlasher(r, c, p);
    }

    function test_constructor_revertsWhenWindowOutlastsUnbonding() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        ISlasher.Params memory p = _params();
        p.challengeWindow = 7 days + 1;
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherChallengeWindowTooLong.selector, uint64(7 days + 1), uint64(7 days))
        );
        _deploySlasher(r, c, p);
    }

    function test_constructor_revertsWhenReceiptWindowsOutlastUnbonding() public {
        // A node could unbond right after signing a receipt and withdraw before the response
        // window of the receipt's challenge closes.
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        ISlasher.Params memory p = _params();
        p.receiptChallengePeriod = 7 days - 2 hours - 6 hours + 1;
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherReceiptWindowsTooLong.selector, uint64(7 days + 1), uint64(7 days))
        );
        _deploySlasher(r, c, p);
    }

    function test_constructor_acceptsReceiptWindowsOfExactlyTheUnbondingDelay() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        ISlasher.Params memory p = _params();
        p.receiptChallengePeriod = 7 days - 2 hours - 6 hours;
        Slasher deployed = _deploySlasher(r, c, p);
        assertEq(uint256(deployed.receiptChallengePeriod()), 7 days - 8 hours, "receiptChallengePeriod");
    }

    function test_constructor_revertsOnZeroRewardRecipient() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        ISlasher.Params memory p = _params();
        p.rewardRecipient = address(0);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherZeroRewardRecipient.selector));
        _deploySlasher(r, c, p);
    }

    // ---- claim -------------------------------------------------------------------------------

    function test_claim_recordsTheBlock() public {
        bytes32 claimHash =
            slasher.claimHash(keccak256("evidence"), addressesOf(_oneKey(verifierKeys[0])), SECRET);
        vm.expectEmit(address(slasher));
        emit ISlasher.SlashClaimed(claimHash, address(this));
        slasher.claim(claimHash);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.claim");
        assertEq(slasher.claimedAt(claimHash), block.number, "claimed at this block");
    }

    function test_claim_revertsWhenTaken() public {
        bytes32 claimHash = keccak256("any claim");
        slasher.claim(claimHash);
        vm.roll(block.number + 1);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherClaimTaken.selector, claimHash));
        vm.prank(address(0xBAD));
        slasher.claim(claimHash);
    }

    function test_claimHash_isKeccakOfEvidenceBeneficiariesAndSecret() public view {
        address[] memory beneficiaries = addressesOf(_firstKeys(2));
        assertEq(
            slasher.claimHash(keccak256("e"), beneficiaries, SECRET),
            keccak256(abi.encode(keccak256("e"), beneficiaries, SECRET)),
            "claimHash"
        );
    }

    function test_slash_consumesTheClaim() public {
        bytes32 digest = slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        bytes32 claimHash = slasher.claimHash(digest, addressesOf(_oneKey(verifierKeys[0])), SECRET);
        _slashBy(verifierKeys[0], 0);
        assertEq(slasher.claimedAt(claimHash), 0, "the claim is used up");
    }

    function test_slash_revertsWithoutAClaim() public {
        bytes32 digest = slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        bytes32 claimHash = slasher.claimHash(digest, addressesOf(_oneKey(verifierKeys[0])), SECRET);
        _expectSlashRevert(
            0,
            _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash)
        );
    }

    function test_slash_revertsOnAClaimOfTheSameBlock() public {
        bytes32 digest = slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        bytes32 claimHash = slasher.claimHash(digest, addressesOf(_oneKey(verifierKeys[0])), SECRET);
        slasher.claim(claimHash);
        _expectSlashRevert(
            0,
            _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash)
        );
        vm.roll(block.number + 1);
        assertEq(
            slasher.slash(
                _leaves[0],
                leafProof(_batchId, _header, _hashes, 0),
                ISlasher.Reason.Mismatch,
                _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch),
                SECRET
            ),
            500e18,
            "one block later the claim is mature"
        );
    }

    function test_slash_revertsOnAClaimWithAnotherSecret() public {
        _claimVerdicts(_oneKey(verifierKeys[0]), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        bytes32 digest = slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        bytes32 other = keccak256("another secret");
        bytes32 claimHash = slasher.claimHash(digest, addressesOf(_oneKey(verifierKeys[0])), other);
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, other);
    }

    function test_slash_revertsOnAClaimForAnotherReason() public {
        // A claim binds the verdict digest, reason included.
        _claimVerdicts(_oneKey(verifierKeys[0]), _batchId, _hashes[0], ISlasher.Reason.Withheld);
        bytes32 digest = slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        bytes32 claimHash = slasher.claimHash(digest, addressesOf(_oneKey(verifierKeys[0])), SECRET);
        _expectSlashRevert(
            0,
            _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash)
        );
    }

    // ---- slash -------------------------------------------------------------------------------

    function test_slash_takesStakePaysVerifierAndPoolsTheRest() public {
        address verifier = vm.addr(verifierKeys[0]);
        bytes[] memory verdicts = _verdict(verifierKeys[0], 1, ISlasher.Reason.Mismatch);
        uint256 verifierBefore = token.balanceOf(verifier);
        _claimVerdicts(_oneKey(verifierKeys[0]), _batchId, _hashes[1], ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 1);

        vm.expectEmit(address(slasher));
        emit ISlasher.LeafSlashed(node, _batchId, _hashes[1], ISlasher.Reason.Mismatch, 500e18, 100e18);
        vm.prank(address(0x5B));
        uint256 slashed = slasher.slash(_leaves[1], proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.slash quorum 1");

        assertEq(slashed, 500e18, "half the stake");
        assertEq(token.balanceOf(verifier), verifierBefore + 100e18, "bounty: 20% of the slash");
        assertEq(token.balanceOf(address(0x5B)), 0, "the submitter is not paid for submitting");
        assertEq(slasher.rewardPool(), 400e18, "reward pool: the rest");
        assertEq(token.balanceOf(address(slasher)), 400e18, "slasher balance == pool");
        assertEq(registry.getNode(node).stake, 500e18, "node stake");
        assertEq(registry.totalStaked(), 500e18, "registry totalStaked");
        assertTrue(slasher.isLeafSlashed(node, _hashes[1]), "leaf marked");
        assertFalse(slasher.isLeafSlashed(node, _hashes[0]), "other leaf untouched");
        assertFalse(slasher.isLeafSlashed(vm.addr(STRANGER_PK), _hashes[1]), "marked for this node only");
        assertFalse(registry.isActive(node), "node fell below its span's stake");
    }

    function test_slash_provesEveryLeafOfAThreeLeafTree() public {
        // Tree: root = H(H(l0, l1), l2); the odd leaf l2 has a one-element proof.
        assertEq(Merkle.proof(_hashes, 2).length, 1, "odd leaf proof length");
        assertEq(Merkle.proof(_hashes, 0).length, 2, "paired leaf proof length");
        assertEq(_header.root, Merkle.hashPair(Merkle.hashPair(_hashes[0], _hashes[1]), _hashes[2]), "root shape");
        assertEq(commitments.batchHash(_batchId), keccak256(abi.encode(_header)), "stored header hash");
        uint256 remaining = NODE_STAKE;
        for (uint256 i = 0; i < 3; ++i) {
            assertTrue(slasher.verifyLeaf(_leaves[i], leafProof(_batchId, _header, _hashes, i)), "verifyLeaf");
            uint256 slashed = _slashBy(verifierKeys[0], i);
            assertEq(slashed, remaining / 2, "each slash takes half of what is left");
            remaining -= slashed;
        }
        assertEq(registry.getNode(node).stake, remaining, "stake left");
    }

    function test_slash_acceptsWithheldVerdicts() public {
        uint256 slashed = claimAndSlash(
            _leaves[0], leafProof(_batchId, _header, _hashes, 0), ISlasher.Reason.Withheld, _oneKey(verifierKeys[0])
        );
        assertEq(slashed, 500e18, "slashed");
    }

    function test_slash_reachesUnbondingStakeInsideTheWindow() public {
        vm.prank(node);
        registry.unbond(NODE_STAKE);
        vm.warp(T0 + 3 days);
        uint256 slashed = _slashBy(verifierKeys[0], 0);
        assertEq(slashed, 500e18, "half of the unbonding stake");
        assertEq(registry.getNode(node).unbonding, 500e18, "unbonding left");
    }

    function test_slash_revertsOnUnknownBatch() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        ISlasher.Leaf memory leaf = _leaves[0];
        proof.batchId = 0;
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherUnknownBatch.selector, 0));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
        proof.batchId = 2;
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherUnknownBatch.selector, 2));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    function test_slash_revertsOnAHeaderThatIsNotTheBatchs() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        ISlasher.Leaf memory leaf = _leaves[0];
        for (uint256 i = 0; i < 4; ++i) {
            ICommitments.BatchHeader memory forged = _header; // a fresh copy each time
            if (i == 0) forged.node = vm.addr(STRANGER_PK);
            if (i == 1) forged.root = keccak256("another root");
            if (i == 2) forged.leafCount = 4;
            if (i == 3) forged.committedAt = uint64(block.timestamp + 1 days); // would reopen the window
            proof.header = forged;
            vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherHeaderMismatch.selector, _batchId));
            slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
        }
    }

    function test_slash_allowedAtTheLastSecondOfTheWindow() public {
        vm.warp(T0 + 3 days);
        assertEq(_slashBy(verifierKeys[0], 0), 500e18, "slashed");
    }

    function test_slash_revertsAfterTheChallengeWindow() public {
        _claimVerdicts(_oneKey(verifierKeys[0]), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        vm.warp(T0 + 3 days + 1);
        _expectSlashRevert(
            0,
            _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherChallengeWindowClosed.selector, _batchId, T0 + 3 days)
        );
    }

    function test_slash_revertsOnLeafOfAnotherModel() public {
        ISlasher.Leaf memory leaf = _leaves[0];
        leaf.modelId = keccak256("other model");
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherModelMismatch.selector, leaf.modelId, MODEL));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    function test_slash_revertsOnWrongProof() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proofOfOther = leafProof(_batchId, _header, _hashes, 2);
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, 2, _hashes[0]));
        slasher.slash(leaf, proofOfOther, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    function test_slash_revertsOnLeafNotInTheBatch() public {
        ISlasher.Leaf memory forged = makeLeaf(SESSION, 1, 99);
        bytes32 forgedHash = slasher.leafHash(forged);
        bytes[] memory verdicts = _verdicts(_oneKey(verifierKeys[0]), _batchId, forgedHash, ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 1);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, 1, forgedHash));
        slasher.slash(forged, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    function test_slash_revertsOnTheRightSiblingsAtAnotherPosition() public {
        // The index is part of the proof: leaf 1's siblings do not prove it at position 0.
        bytes[] memory verdicts = _verdict(verifierKeys[0], 1, ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 1);
        proof.leafIndex = 0;
        ISlasher.Leaf memory leaf = _leaves[1];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, 0, _hashes[1]));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    function test_slash_revertsOnAPositionBeyondTheLeafCount() public {
        // Position 4 walks the same left/right path as position 0 in a tree of three leaves.
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        proof.leafIndex = 4;
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, 4, _hashes[0]));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    function test_slash_revertsOnAShortOrLongProof() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        ISlasher.Leaf memory leaf = _leaves[0];
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        bytes32[] memory full = proof.siblings;
        proof.siblings = new bytes32[](1);
        proof.siblings[0] = full[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, 0, _hashes[0]));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
        proof.siblings = new bytes32[](3);
        (proof.siblings[0], proof.siblings[1], proof.siblings[2]) = (full[0], full[1], bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, 0, _hashes[0]));
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    function test_slash_revertsOnReasonNone() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.None);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReason.selector, uint8(0)));
        slasher.slash(leaf, proof, ISlasher.Reason.None, verdicts, SECRET);
    }

    function test_slash_revertsOnTheSameLeafTwice() public {
        _slashBy(verifierKeys[0], 0);
        _claimVerdicts(_oneKey(verifierKeys[1]), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        _expectSlashRevert(
            0,
            _verdict(verifierKeys[1], 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherAlreadySlashed.selector, _hashes[0])
        );
    }

    function test_slash_revertsWithoutVerdicts() public {
        _expectSlashRevert(
            0, new bytes[](0), abi.encodeWithSelector(ISlasher.SlasherWrongVerdictCount.selector, 0, 1)
        );
    }

    function test_slash_revertsOnMoreVerdictsThanTheQuorum() public {
        _expectSlashRevert(
            0,
            _verdicts(_firstKeys(2), _batchId, _hashes[0], ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherWrongVerdictCount.selector, 2, 1)
        );
    }

    function test_slash_revertsOnShortVerdictSignature() public {
        bytes[] memory verdicts = new bytes[](1);
        verdicts[0] = hex"00";
        _expectSlashRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherInvalidVerdictSignature.selector, 0));
    }

    function test_slash_revertsOnMalleableVerdict() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        bytes32 digest = slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        verdicts[0] = malleate(verdicts[0]);
        assertEq(ecrecoverSignature(digest, verdicts[0]), vm.addr(verifierKeys[0]), "ecrecover accepts it");
        _expectSlashRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherInvalidVerdictSignature.selector, 0));
    }

    function test_slash_revertsOnVerdictOfANonVerifier() public {
        _expectSlashRevert(
            0,
            _verdict(STRANGER_PK, 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, vm.addr(STRANGER_PK))
        );
    }

    function test_slash_revertsOnVerdictOfAVerifierWhoLeft() public {
        address verifier = vm.addr(verifierKeys[0]);
        _claimVerdicts(_oneKey(verifierKeys[0]), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        vm.prank(verifier);
        verifierRegistry.unbond(1_000e18);
        _expectSlashRevert(
            0,
            _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, verifier)
        );
    }

    /// @dev The salted EIP-712 domain separator as any signer computes it.
    function _domain(uint256 chainId, address verifyingContract, bytes32 salt) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256(
                    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract,bytes32 salt)"
                ),
                keccak256("stakeswarm Slasher"),
                keccak256("1"),
                chainId,
                verifyingContract,
                salt
            )
        );
    }

    /// @dev The verdict digest as any EIP-712 signer computes it, for any chain, contract and salt.
    function _verdictDigest(uint256 chainId, address verifyingContract, bytes32 salt, bytes32 leaf)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Verdict(address node,uint256 batchId,bytes32 leaf,uint8 reason)"),
                node,
                _batchId,
                leaf,
                uint8(ISlasher.Reason.Mismatch)
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", _domain(chainId, verifyingContract, salt), structHash));
    }

    function test_verdictDigest_isTheEip712Digest() public view {
        assertEq(
            slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch),
            _verdictDigest(block.chainid, address(slasher), DOMAIN_SALT, _hashes[0]),
            "digest matches an independent EIP-712 computation"
        );
    }

    function test_eip712Domain_reportsAllFiveFieldsWithTheSalt() public view {
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        ) = slasher.eip712Domain();
        assertEq(uint256(uint8(fields)), 0x1f, "fields: name, version, chainId, verifyingContract, salt");
        assertEq(keccak256(bytes(name)), keccak256("stakeswarm Slasher"), "name");
        assertEq(keccak256(bytes(version)), keccak256("1"), "version");
        assertEq(chainId, block.chainid, "chainId");
        assertEq(verifyingContract, address(slasher), "verifyingContract");
        assertEq(salt, DOMAIN_SALT, "salt");
        assertEq(extensions.length, 0, "extensions");
    }

    function test_slash_revertsOnVerdictForOtherChain() public {
        bytes[] memory verdicts = new bytes[](1);
        verdicts[0] = sign(verifierKeys[0], _verdictDigest(1, address(slasher), DOMAIN_SALT, _hashes[0]));
        address recovered = ecrecoverSignature(
            slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch), verdicts[0]
        );
        _expectSlashRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, recovered));
    }

    function test_slash_revertsOnVerdictForOtherContract() public {
        bytes[] memory verdicts = new bytes[](1);
        verdicts[0] =
            sign(verifierKeys[0], _verdictDigest(block.chainid, address(commitments), DOMAIN_SALT, _hashes[0]));
        address recovered = ecrecoverSignature(
            slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch), verdicts[0]
        );
        _expectSlashRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, recovered));
    }

    function test_slash_revertsOnVerdictForOtherSalt() public {
        bytes[] memory verdicts = new bytes[](1);
        verdicts[0] =
            sign(verifierKeys[0], _verdictDigest(block.chainid, address(slasher), keccak256("old"), _hashes[0]));
        address recovered = ecrecoverSignature(
            slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch), verdicts[0]
        );
        _expectSlashRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, recovered));
    }

    function test_slash_revertsOnVerdictForAnotherLeaf() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 1, ISlasher.Reason.Mismatch);
        address recovered = ecrecoverSignature(
            slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch), verdicts[0]
        );
        _expectSlashRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, recovered));
    }

    function test_slash_revertsWhenNothingIsLeftToSlash() public {
        Params memory p = defaultParams();
        p.slashBps = 10_000;
        _setUpSystem(p, 1);
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitLeaves(node, hashes);

        uint256 slashed = claimAndSlash(
            leaves[0], leafProof(batchId, header, hashes, 0), ISlasher.Reason.Mismatch, _oneKey(verifierKeys[0])
        );
        assertEq(slashed, NODE_STAKE, "everything");
        bytes[] memory verdicts1 = _verdicts(_oneKey(verifierKeys[0]), batchId, hashes[1], ISlasher.Reason.Mismatch);
        _claimVerdicts(_oneKey(verifierKeys[0]), batchId, hashes[1], ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof1 = leafProof(batchId, header, hashes, 1);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNothingToSlash.selector, node));
        slasher.slash(leaves[1], proof1, ISlasher.Reason.Mismatch, verdicts1, SECRET);
    }

    function test_slash_ofACopiedRootShieldsNoOtherNode() public {
        // Slash records are per node: a leaf slashed for one node stays slashable for another.
        address other = vm.addr(STRANGER_PK);
        registerNode(other, 0, 8, NODE_STAKE);
        (uint256 copyId, ICommitments.BatchHeader memory copy) = commitLeaves(other, _hashes);
        claimAndSlash(
            _leaves[0], leafProof(copyId, copy, _hashes, 0), ISlasher.Reason.Mismatch, _oneKey(verifierKeys[0])
        );
        assertTrue(slasher.isLeafSlashed(other, _hashes[0]), "slashed for the copier");
        assertFalse(slasher.isLeafSlashed(node, _hashes[0]), "not for the node");
        assertEq(_slashBy(verifierKeys[0], 0), 500e18, "the node is still slashed");
    }

    // ---- slashEquivocation -------------------------------------------------------------------

    address internal constant REPORTER = address(0xF00D);

    function _equivocation() internal pure returns (ISlasher.Leaf memory a, ISlasher.Leaf memory b) {
        a = makeLeaf(SESSION, 5, 1);
        b = makeLeaf(SESSION, 5, 2);
    }

    function test_slashEquivocation_paysTheReporter() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = signReceipt(NODE_PK, b);
        claimAndRoll(slasher.equivocationEvidence(node, a, b), only(REPORTER), SECRET);
        vm.expectEmit(address(slasher));
        emit ISlasher.EquivocationSlashed(node, SESSION, 5, REPORTER, 500e18, 100e18);
        vm.prank(REPORTER);
        uint256 slashed = slasher.slashEquivocation(node, a, ra, b, rb, SECRET);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.slashEquivocation");

        assertEq(slashed, 500e18, "half the stake");
        assertEq(token.balanceOf(REPORTER), 100e18, "bounty to the reporter");
        assertEq(slasher.rewardPool(), 400e18, "reward pool");
        assertEq(token.balanceOf(address(slasher)), 400e18, "slasher balance == pool");
    }

    function test_slashEquivocation_revertsWithoutAClaim() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = signReceipt(NODE_PK, b);
        bytes32 claimHash = slasher.claimHash(slasher.equivocationEvidence(node, a, b), only(REPORTER), SECRET);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash));
        vm.prank(REPORTER);
        slasher.slashEquivocation(node, a, ra, b, rb, SECRET);
    }

    function test_slashEquivocation_revertsForACallerTheClaimDoesNotName() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = signReceipt(NODE_PK, b);
        bytes32 evidence = slasher.equivocationEvidence(node, a, b);
        claimAndRoll(evidence, only(REPORTER), SECRET);
        address copier = address(0xC0C0);
        bytes32 copierClaim = slasher.claimHash(evidence, only(copier), SECRET);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, copierClaim));
        vm.prank(copier);
        slasher.slashEquivocation(node, a, ra, b, rb, SECRET);
    }

    function test_slashEquivocation_revertsOnTheSameLeaf() public {
        (ISlasher.Leaf memory a,) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNotEquivocation.selector));
        slasher.slashEquivocation(node, a, ra, a, ra, SECRET);
    }

    function test_slashEquivocation_revertsOnDifferentSlots() public {
        for (uint256 i = 0; i < 5; ++i) {
            (ISlasher.Leaf memory a, ISlasher.Leaf memory other) = _equivocation(); // fresh copies each time
            if (i == 0) other.step = a.step + 1;
            if (i == 1) other.sessionId = keccak256("session 2");
            if (i == 2) other.modelId = keccak256("other model");
            if (i == 3) other.spanStart = a.spanStart + 1;
            if (i == 4) other.spanEnd = a.spanEnd + 1;
            bytes memory ra = signReceipt(NODE_PK, a);
            bytes memory rb = signReceipt(NODE_PK, other);
            vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNotEquivocation.selector));
            slasher.slashEquivocation(node, a, ra, other, rb, SECRET);
        }
    }

    function test_slashEquivocation_revertsOnReceiptOfAnotherSigner() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory forged = signReceipt(STRANGER_PK, b);
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, vm.addr(STRANGER_PK), node)
        );
        slasher.slashEquivocation(node, a, ra, b, forged, SECRET);
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, vm.addr(STRANGER_PK), node)
        );
        slasher.slashEquivocation(node, b, forged, a, ra, SECRET);
    }

    function _receiptDigest(uint256 chainId, address verifyingContract, bytes32 salt, ISlasher.Leaf memory leaf)
        internal
        pure
        returns (bytes32)
    {
        bytes32 typehash = keccak256(
            "Receipt(bytes32 sessionId,bytes32 modelId,uint16 spanStart,uint16 spanEnd,uint32 step,uint32 tokens,"
            "bytes32 inputHash,bytes32 outputHash,bytes32 sketchHash,uint64 issuedAt)"
        );
        return keccak256(
            abi.encodePacked(
                "\x19\x01", _domain(chainId, verifyingContract, salt), keccak256(abi.encode(typehash, leaf))
            )
        );
    }

    function test_receiptDigest_isTheEip712Digest() public view {
        (ISlasher.Leaf memory a,) = _equivocation();
        assertEq(
            slasher.receiptDigest(a),
            _receiptDigest(block.chainid, address(slasher), DOMAIN_SALT, a),
            "digest matches an independent EIP-712 computation"
        );
    }

    function test_slashEquivocation_revertsOnReceiptForOtherChain() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = sign(NODE_PK, _receiptDigest(1, address(slasher), DOMAIN_SALT, b));
        address recovered = ecrecoverSignature(slasher.receiptDigest(b), rb);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, recovered, node));
        slasher.slashEquivocation(node, a, ra, b, rb, SECRET);
    }

    function test_slashEquivocation_revertsOnReceiptForOtherContract() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = sign(NODE_PK, _receiptDigest(block.chainid, address(registry), DOMAIN_SALT, b));
        address recovered = ecrecoverSignature(slasher.receiptDigest(b), rb);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, recovered, node));
        slasher.slashEquivocation(node, a, ra, b, rb, SECRET);
    }

    function test_slashEquivocation_revertsOnReceiptForOtherSalt() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = sign(NODE_PK, _receiptDigest(block.chainid, address(slasher), keccak256("old"), b));
        address recovered = ecrecoverSignature(slasher.receiptDigest(b), rb);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, recovered, node));
        slasher.slashEquivocation(node, a, ra, b, rb, SECRET);
    }

    function test_slashEquivocation_revertsOnMalleableReceipt() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = malleate(signReceipt(NODE_PK, b));
        assertEq(ecrecoverSignature(slasher.receiptDigest(b), rb), node, "ecrecover accepts it");
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, address(0), node));
        slasher.slashEquivocation(node, a, ra, b, rb, SECRET);
    }

    function test_slashEquivocation_revertsOnTheSameSlotTwice() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        ISlasher.Leaf memory c = makeLeaf(SESSION, 5, 3);
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = signReceipt(NODE_PK, b);
        bytes memory rc = signReceipt(NODE_PK, c);
        claimAndSlashEquivocation(REPORTER, node, a, ra, b, rb);
        claimAndRoll(slasher.equivocationEvidence(node, a, c), only(REPORTER), SECRET);
        bytes32 key = keccak256(abi.encode(node, a.sessionId, a.modelId, a.spanStart, a.spanEnd, a.step));
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherAlreadySlashed.selector, key));
        vm.prank(REPORTER);
        slasher.slashEquivocation(node, a, ra, c, rc, SECRET);
    }

    function test_slashEquivocation_revertsForANodeWithoutStake() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        address stranger = vm.addr(STRANGER_PK);
        bytes memory ra = signReceipt(STRANGER_PK, a);
        bytes memory rb = signReceipt(STRANGER_PK, b);
        claimAndRoll(slasher.equivocationEvidence(stranger, a, b), only(REPORTER), SECRET);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNothingToSlash.selector, stranger));
        vm.prank(REPORTER);
        slasher.slashEquivocation(stranger, a, ra, b, rb, SECRET);
    }

    // ---- releaseRewardPool -------------------------------------------------------------------

    function test_releaseRewardPool_paysTheWholePoolToTheRecipient() public {
        _slashBy(verifierKeys[0], 0);
        vm.expectEmit(address(slasher));
        emit ISlasher.RewardPoolReleased(REWARD_RECIPIENT, 400e18);
        vm.prank(address(0xCA11));
        assertEq(slasher.releaseRewardPool(), 400e18, "released");
        assertEq(token.balanceOf(REWARD_RECIPIENT), 400e18, "recipient");
        assertEq(slasher.rewardPool(), 0, "pool emptied");
        assertEq(token.balanceOf(address(slasher)), 0, "slasher balance");
    }

    function test_releaseRewardPool_revertsWhenEmpty() public {
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherEmptyRewardPool.selector));
        slasher.releaseRewardPool();
    }

    // ---- views -------------------------------------------------------------------------------

    function test_leafHash_isKeccakOfTheAbiEncodedFields() public view {
        ISlasher.Leaf memory l = _leaves[1];
        bytes32 expected = keccak256(
            abi.encode(
                l.sessionId,
                l.modelId,
                l.spanStart,
                l.spanEnd,
                l.step,
                l.tokens,
                l.inputHash,
                l.outputHash,
                l.sketchHash,
                l.issuedAt
            )
        );
        assertEq(slasher.leafHash(l), expected, "leafHash");
    }

    function test_verifyLeaf_falseForWrongProofLeafHeaderOrBatch() public view {
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        ICommitments.BatchHeader memory wrong = _header;
        wrong.root = keccak256("another root");
        ISlasher.Leaf memory otherModel = _leaves[0];
        otherModel.modelId = keccak256("other model");
        assertTrue(slasher.verifyLeaf(_leaves[0], proof), "valid");
        assertFalse(slasher.verifyLeaf(_leaves[1], proof), "proof of another leaf");
        assertFalse(slasher.verifyLeaf(makeLeaf(SESSION, 0, 99), proof), "foreign leaf");
        assertFalse(slasher.verifyLeaf(otherModel, proof), "leaf of another model");
        ISlasher.LeafProof memory changed = leafProof(_batchId, wrong, _hashes, 0);
        assertFalse(slasher.verifyLeaf(_leaves[0], changed), "header of another batch");
        changed = leafProof(_batchId + 1, _header, _hashes, 0);
        assertFalse(slasher.verifyLeaf(_leaves[0], changed), "unknown batch");
        changed = leafProof(0, _header, _hashes, 0);
        assertFalse(slasher.verifyLeaf(_leaves[0], changed), "batch 0");
        changed = leafProof(_batchId, _header, _hashes, 0);
        changed.leafIndex = 1;
        assertFalse(slasher.verifyLeaf(_leaves[0], changed), "the right siblings at another position");
        changed.leafIndex = 3;
        assertFalse(slasher.verifyLeaf(_leaves[0], changed), "a position beyond the leaf count");
    }
}

/// @title Slasher tests with quorum 3: verdict lists, ordering, bounty split.
contract SlasherQuorumTest is SlasherSetup {
    bytes32[] internal _hashes;
    uint256 internal _batchId;
    ICommitments.BatchHeader internal _header;
    ISlasher.Leaf internal _leaf;

    function setUp() public {
        Params memory p = defaultParams();
        p.quorum = 3;
        _setUpSystem(p, 4);
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        _hashes = hashes;
        _leaf = leaves[0];
        (_batchId, _header) = commitLeaves(node, hashes);
    }

    function _expectSlashRevert(bytes[] memory verdicts, bytes memory error) internal {
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        ISlasher.Leaf memory leaf = _leaf;
        vm.expectRevert(error);
        slasher.slash(leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
    }

    function _sorted(uint256 count) internal view returns (bytes[] memory) {
        return _verdicts(_firstKeys(count), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
    }

    function test_slash_splitsTheBountyAcrossTheQuorum() public {
        bytes[] memory verdicts = _sorted(3);
        uint256 perVerifier = uint256(100e18) / 3;
        _claimVerdicts(_firstKeys(3), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        ISlasher.LeafProof memory proof = leafProof(_batchId, _header, _hashes, 0);
        vm.expectEmit(address(slasher));
        emit ISlasher.LeafSlashed(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch, 500e18, perVerifier);
        uint256 slashed = slasher.slash(_leaf, proof, ISlasher.Reason.Mismatch, verdicts, SECRET);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.slash quorum 3");

        assertEq(slashed, 500e18, "slashed");
        for (uint256 i = 0; i < 3; ++i) {
            assertEq(token.balanceOf(vm.addr(verifierKeys[i])), perVerifier, "each signer's share");
        }
        assertEq(token.balanceOf(vm.addr(verifierKeys[3])), 0, "non-signer gets nothing");
        // 100e18 / 3 leaves 1 wei of dust, which goes to the pool.
        assertEq(slasher.rewardPool(), 400e18 + 1, "pool gets the rest and the dust");
        assertEq(token.balanceOf(address(slasher)), slasher.rewardPool(), "slasher balance == pool");
    }

    function test_slash_revertsOnSignersBeyondTheQuorum() public {
        // A fourth signer would dilute the bounty of the three who audited.
        _claimVerdicts(_firstKeys(4), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        _expectSlashRevert(_sorted(4), abi.encodeWithSelector(ISlasher.SlasherWrongVerdictCount.selector, 4, 3));
    }

    function test_slash_revertsBelowQuorum() public {
        _expectSlashRevert(_sorted(2), abi.encodeWithSelector(ISlasher.SlasherWrongVerdictCount.selector, 2, 3));
    }

    function test_slash_revertsOnAClaimForOtherSigners() public {
        // The claim names signers 0, 1, 2; the slash brings 0, 1, 3: their claim was never made.
        _claimVerdicts(_firstKeys(3), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        uint256[] memory keys = _firstKeys(4);
        keys[2] = keys[3];
        uint256[] memory three = new uint256[](3);
        for (uint256 i = 0; i < 3; ++i) {
            three[i] = keys[i];
        }
        bytes32 digest = slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        bytes32 claimHash = slasher.claimHash(digest, addressesOf(three), SECRET);
        _expectSlashRevert(
            _verdicts(three, _batchId, _hashes[0], ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash)
        );
    }

    function test_slash_revertsOnUnsortedSigners() public {
        bytes[] memory verdicts = _sorted(3);
        (verdicts[1], verdicts[2]) = (verdicts[2], verdicts[1]);
        _expectSlashRevert(
            verdicts,
            abi.encodeWithSelector(
                ISlasher.SlasherVerdictSignersNotSorted.selector, vm.addr(verifierKeys[2]), vm.addr(verifierKeys[1])
            )
        );
    }

    function test_slash_revertsOnARepeatedSigner() public {
        bytes[] memory verdicts = _sorted(3);
        verdicts[2] = verdicts[1];
        _expectSlashRevert(
            verdicts,
            abi.encodeWithSelector(
                ISlasher.SlasherVerdictSignersNotSorted.selector, vm.addr(verifierKeys[1]), vm.addr(verifierKeys[1])
            )
        );
    }

    function test_slash_revertsOnANonVerifierAmongTheQuorum() public {
        bytes[] memory verdicts = _sorted(3);
        verdicts[2] = signVerdict(STRANGER_PK, node, _batchId, _hashes[0], ISlasher.Reason.Mismatch);
        _expectSlashRevert(
            verdicts, abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, vm.addr(STRANGER_PK))
        );
    }

    function test_slash_revertsOnABadSignatureAmongTheQuorum() public {
        bytes[] memory verdicts = _sorted(3);
        verdicts[1] = malleate(verdicts[1]);
        _expectSlashRevert(verdicts, abi.encodeWithSelector(ISlasher.SlasherInvalidVerdictSignature.selector, 1));
    }
}

/// @title Slasher fuzz tests: amounts split by the basis points, for any stake.
contract SlasherFuzzTest is SlasherSetup {
    function testFuzz_slash_splitsByBasisPoints(uint256 stake, uint16 slashBps, uint16 bountyBps) public {
        Params memory p = defaultParams();
        p.slashBps = uint16(bound(slashBps, 1, 10_000));
        p.bountyBps = uint16(bound(bountyBps, 0, 10_000));
        p.quorum = 2;
        _setUpSystem(p, 2);
        stake = bound(stake, 1, 10_000_000e18);
        token.transfer(node, stake);
        vm.startPrank(node);
        token.approve(address(registry), stake);
        registry.addStake(stake);
        vm.stopPrank();
        uint256 total = NODE_STAKE + stake;

        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitLeaves(node, hashes);
        uint256 slashed =
            claimAndSlash(leaves[1], leafProof(batchId, header, hashes, 1), ISlasher.Reason.Mismatch, _firstKeys(2));

        uint256 expected = total * p.slashBps / 10_000;
        uint256 perVerifier = expected * p.bountyBps / 10_000 / 2;
        assertEq(slashed, expected, "slashBps of the stake");
        assertEq(token.balanceOf(vm.addr(verifierKeys[0])), perVerifier, "verifier 0");
        assertEq(token.balanceOf(vm.addr(verifierKeys[1])), perVerifier, "verifier 1");
        assertEq(slasher.rewardPool(), expected - 2 * perVerifier, "pool");
        assertEq(token.balanceOf(address(slasher)), slasher.rewardPool(), "slasher balance == pool");
        INodeRegistry.Node memory n = registry.getNode(node);
        assertEq(n.stake + n.unbonding, total - expected, "stake left");
    }
}

/// @notice Random commit / claim + slash / claim + slashWithheld / claim + slashEquivocation /
/// serve (sign a receipt, commit its leaf or not) / claim + challengeReceipt / answerChallenge /
/// slashUnanswered / stray claims / releaseRewardPool / addStake / unbond / withdraw / warp / roll
/// sequences over a few nodes, with valid verdicts from a quorum of verifiers; every slash and
/// challenge claims first and mines a block, as a real bounty hunter must.
contract SlasherHandler is SystemFixture {
    address public constant REPORTER = address(0xF00D);
    /// @notice The client that holds every receipt and challenges them (funded and approved by the test).
    address public constant CHALLENGER = address(0xC4A1);

    /// @dev A receipt a node signed, and where its leaf was committed (batchId 0: nowhere).
    struct Served {
        uint256 nodeKey;
        ISlasher.Leaf leaf;
        uint256 batchId;
        uint32 leafIndex;
        bytes32[3] batch; // the leaf hashes of its batch
    }

    uint256[] internal _nodeKeys;
    uint256[] internal _verifierKeys; // sorted by address
    mapping(uint256 batchId => uint256 salt) internal _batchSalt;
    mapping(uint256 batchId => ICommitments.BatchHeader) internal _headers;
    Served[] internal _served;
    mapping(uint256 challengeId => uint256 servedIndex) internal _challenged;

    /// @notice Everything the slasher took from nodes so far.
    uint256 public ghostSlashed;
    /// @notice How many slashes landed (each through a matured claim).
    uint256 public ghostSlashes;

    constructor(SlasherInvariantTest fixture, uint256[] memory nodeKeys_, uint256[] memory verifierKeys_) {
        (token, verifierRegistry, registry, commitments, slasher) = fixture.system();
        _nodeKeys = nodeKeys_;
        _verifierKeys = verifierKeys_;
    }

    function _nodeKey(uint256 seed) internal view returns (uint256) {
        return _nodeKeys[seed % _nodeKeys.length];
    }

    /// @dev The two leaves of a batch committed with `salt`: steps 0 and 1 of session keccak(salt).
    function _batchLeaves(uint256 salt) internal pure returns (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) {
        leaves = new ISlasher.Leaf[](2);
        hashes = new bytes32[](2);
        for (uint256 i = 0; i < 2; ++i) {
            leaves[i] = makeLeaf(keccak256(abi.encode(salt)), uint32(i), salt);
            hashes[i] = keccak256(abi.encode(leaves[i]));
        }
    }

    /// @dev The first `quorum` verifier keys (sorted by address).
    function _quorumKeys() internal view returns (uint256[] memory keys) {
        keys = new uint256[](slasher.quorum());
        for (uint256 i = 0; i < keys.length; ++i) {
            keys[i] = _verifierKeys[i];
        }
    }

    function _pickBatch(uint256 batchSeed) internal view returns (uint256 batchId, bool any) {
        uint256 count = commitments.batchCount();
        if (count == 0) return (0, false);
        return (1 + batchSeed % count, true);
    }

    function commit(uint256 nodeSeed, uint256 salt) external {
        (, bytes32[] memory hashes) = _batchLeaves(salt);
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitLeaves(vm.addr(_nodeKey(nodeSeed)), hashes);
        _batchSalt[batchId] = salt;
        _headers[batchId] = header;
    }

    function slash(uint256 batchSeed, uint256 leafIndex, bool withheld) external {
        (uint256 batchId, bool any) = _pickBatch(batchSeed);
        if (!any) return;
        leafIndex %= 2;
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _batchLeaves(_batchSalt[batchId]);
        ISlasher.Reason reason = withheld ? ISlasher.Reason.Withheld : ISlasher.Reason.Mismatch;
        ISlasher.LeafProof memory proof = leafProof(batchId, _headers[batchId], hashes, leafIndex);
        uint256 slashed = claimAndSlash(leaves[leafIndex], proof, reason, _quorumKeys());
        ghostSlashed += slashed;
        ++ghostSlashes;
    }

    function slashWithheld(uint256 batchSeed, uint32 leafIndex) external {
        (uint256 batchId, bool any) = _pickBatch(batchSeed);
        if (!any) return;
        leafIndex %= 2;
        ghostSlashed += claimAndSlashWithheld(batchId, _headers[batchId], leafIndex, _quorumKeys());
        ++ghostSlashes;
    }

    function slashEquivocation(uint256 nodeSeed, uint32 step, uint256 saltA, uint256 saltB) external {
        uint256 key = _nodeKey(nodeSeed);
        bytes32 session = keccak256(abi.encode("equivocation", step % 4));
        ISlasher.Leaf memory a = makeLeaf(session, step % 4, saltA);
        ISlasher.Leaf memory b = makeLeaf(session, step % 4, saltB);
        bytes memory ra = signReceipt(key, a);
        bytes memory rb = signReceipt(key, b);
        ghostSlashed += claimAndSlashEquivocation(REPORTER, vm.addr(key), a, ra, b, rb);
        ++ghostSlashes;
    }

    /// @notice A node signs a receipt now for a leaf of session `salt`; if `commitIt`, it commits
    /// the leaf at position `position % 3` of a batch of three (the others decoys) right away.
    function serve(uint256 nodeSeed, uint256 salt, bool commitIt, uint256 position) external {
        uint256 key = _nodeKey(nodeSeed);
        Served storage served = _served.push();
        served.nodeKey = key;
        served.leaf = makeLeaf(keccak256(abi.encode("served", salt)), 0, salt, uint64(block.timestamp));
        if (!commitIt) return;
        uint32 index = uint32(position % 3);
        bytes32[] memory hashes = new bytes32[](3);
        for (uint256 i = 0; i < 3; ++i) {
            hashes[i] = i == index
                ? keccak256(abi.encode(served.leaf))
                : keccak256(abi.encode(makeLeaf(keccak256(abi.encode("decoy", salt)), uint32(i), salt)));
            served.batch[i] = hashes[i];
        }
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitLeaves(vm.addr(key), hashes);
        served.batchId = batchId;
        served.leafIndex = index;
        _headers[batchId] = header;
    }

    /// @notice The client challenges a served receipt once its commit deadline has passed
    /// (waiting for it if need be; a receipt whose period is over is left alone).
    function challengeReceipt(uint256 servedSeed) external {
        if (_served.length == 0) return;
        uint256 index = servedSeed % _served.length;
        Served storage served = _served[index];
        ISlasher.Leaf memory leaf = served.leaf;
        uint64 deadline = leaf.issuedAt + slasher.commitDeadline();
        if (block.timestamp > deadline + slasher.receiptChallengePeriod()) return;
        if (block.timestamp <= deadline) vm.warp(deadline + 1); // opens the second after the deadline
        uint256 id = claimAndChallenge(CHALLENGER, vm.addr(served.nodeKey), leaf, signReceipt(served.nodeKey, leaf));
        _challenged[id] = index;
    }

    /// @notice The node answers a challenge with its batch (when it committed the leaf and its
    /// response window is still open: a late answer is refused).
    function answerChallenge(uint256 challengeSeed) external {
        uint256 count = slasher.challengeCount();
        if (count == 0) return;
        uint256 id = 1 + challengeSeed % count;
        Served storage served = _served[_challenged[id]];
        if (served.batchId == 0) return;
        if (block.timestamp > slasher.getChallenge(id).answerBy) return;
        bytes32[] memory hashes = new bytes32[](3);
        for (uint256 i = 0; i < 3; ++i) {
            hashes[i] = served.batch[i];
        }
        ISlasher.LeafProof memory proof = leafProof(served.batchId, _headers[served.batchId], hashes, served.leafIndex);
        vm.prank(vm.addr(served.nodeKey));
        slasher.answerChallenge(id, served.leaf, proof);
    }

    /// @notice Anyone slashes a challenge left unanswered (waiting out its response window).
    function slashUnanswered(uint256 challengeSeed) external {
        uint256 count = slasher.challengeCount();
        if (count == 0) return;
        uint256 id = 1 + challengeSeed % count;
        uint64 answerBy = slasher.getChallenge(id).answerBy;
        if (block.timestamp <= answerBy) vm.warp(answerBy + 1);
        ghostSlashed += slasher.slashUnanswered(id);
        ++ghostSlashes;
    }

    /// @notice A claim nobody will use (or a front-runner's claim): it moves no tokens.
    function claim(bytes32 claimHash) external {
        slasher.claim(claimHash);
    }

    function releaseRewardPool() external {
        slasher.releaseRewardPool();
    }

    function addStake(uint256 nodeSeed, uint256 amount) external {
        address node = vm.addr(_nodeKey(nodeSeed));
        amount = bound(amount, 1, token.balanceOf(node) + 1);
        vm.prank(node);
        registry.addStake(amount);
    }

    function unbond(uint256 nodeSeed, uint256 amount) external {
        address node = vm.addr(_nodeKey(nodeSeed));
        amount = bound(amount, 1, registry.getNode(node).stake + 1);
        vm.prank(node);
        registry.unbond(amount);
    }

    function withdraw(uint256 nodeSeed) external {
        vm.prank(vm.addr(_nodeKey(nodeSeed)));
        registry.withdraw();
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 2 days));
    }

    function roll(uint256 blocks) external {
        vm.roll(block.number + bound(blocks, 1, 100));
    }
}

/// @title Slasher invariants: the balance is the reward pool plus the bonds of open challenges;
/// every slashed token is pooled, released or paid as a bounty, and every bond is held or paid
/// back to its challenger or to the node that answered; stake pots match their balances; the
/// supply is conserved.
contract SlasherInvariantTest is SlasherSetup {
    uint256 internal constant CHALLENGER_FUNDS = 1_000e18;

    SlasherHandler internal handler;
    address[] internal _nodes;
    address[] internal _verifiers;

    function system() external view returns (StakeToken, VerifierRegistry, NodeRegistry, Commitments, Slasher) {
        return (token, verifierRegistry, registry, commitments, slasher);
    }

    function setUp() public {
        Params memory p = defaultParams();
        p.quorum = 2;
        _setUpSystem(p, 3);
        uint256[] memory nodeKeys = new uint256[](3);
        nodeKeys[0] = NODE_PK;
        nodeKeys[1] = 0xB0B;
        nodeKeys[2] = 0xCA7;
        for (uint256 i = 0; i < nodeKeys.length; ++i) {
            address n = vm.addr(nodeKeys[i]);
            if (i != 0) registerNode(n, 0, 8, NODE_STAKE);
            token.transfer(n, 5_000e18);
            vm.prank(n);
            token.approve(address(registry), type(uint256).max);
            _nodes.push(n);
        }
        for (uint256 i = 0; i < verifierKeys.length; ++i) {
            _verifiers.push(vm.addr(verifierKeys[i]));
        }
        handler = new SlasherHandler(this, nodeKeys, verifierKeys);
        address challenger = handler.CHALLENGER();
        token.transfer(challenger, CHALLENGER_FUNDS);
        vm.prank(challenger);
        token.approve(address(slasher), type(uint256).max);
        targetContract(address(handler));
    }

    /// @dev How many receipt challenges are open and how many were answered, as the Slasher tells it.
    function _challenges() internal view returns (uint256 open, uint256 answered) {
        uint256 count = slasher.challengeCount();
        for (uint256 id = 1; id <= count; ++id) {
            ISlasher.ChallengeStatus status = slasher.getChallenge(id).status;
            if (status == ISlasher.ChallengeStatus.Open) ++open;
            if (status == ISlasher.ChallengeStatus.Answered) ++answered;
        }
    }

    function invariant_balanceEqualsRewardPoolPlusOpenBonds() public view {
        (uint256 open,) = _challenges();
        assertEq(
            token.balanceOf(address(slasher)),
            slasher.rewardPool() + open * slasher.challengeBond(),
            "slasher balance == rewardPool + open bonds"
        );
    }

    function invariant_everySlashedTokenIsAccountedFor() public view {
        // In: the slashed stake and the bonds. Out: bounties (verifiers, reporter, challenger),
        // released pool, bonds back to the challenger or to answering nodes. What stays: the
        // pool and the open bonds. The challenger's net gain is its bounties minus lost bonds.
        (, uint256 answered) = _challenges();
        uint256 paid = token.balanceOf(address(slasher)) + token.balanceOf(REWARD_RECIPIENT)
            + token.balanceOf(handler.REPORTER()) + token.balanceOf(handler.CHALLENGER())
            + answered * slasher.challengeBond();
        for (uint256 i = 0; i < _verifiers.length; ++i) {
            paid += token.balanceOf(_verifiers[i]);
        }
        assertEq(
            paid,
            handler.ghostSlashed() + CHALLENGER_FUNDS,
            "pool + open bonds + released + bounties + bonds paid out == slashed + challenger funds"
        );
    }

    function invariant_bountiesGoOnlyToClaimedBeneficiaries() public view {
        // Claims (and stray claims) move no tokens; the handler, which claims and submits every
        // slash, is never paid: bounties go to the verdict signers or the reporter bound in the claim.
        assertEq(token.balanceOf(address(handler)), 0, "the submitter holds nothing");
    }

    function invariant_stakePotsEqualBalances() public view {
        uint256 sum = 0;
        for (uint256 i = 0; i < _nodes.length; ++i) {
            INodeRegistry.Node memory n = registry.getNode(_nodes[i]);
            sum += n.stake + n.unbonding;
        }
        assertEq(registry.totalStaked(), sum, "node totalStaked == sum");
        assertEq(token.balanceOf(address(registry)), sum, "node registry balance == sum");
        assertEq(
            verifierRegistry.totalStaked(),
            token.balanceOf(address(verifierRegistry)),
            "verifier totalStaked == balance"
        );
    }

    function invariant_supplyIsConserved() public view {
        uint256 held = token.balanceOf(address(this)) + token.balanceOf(address(registry))
            + token.balanceOf(address(verifierRegistry)) + token.balanceOf(address(slasher))
            + token.balanceOf(REWARD_RECIPIENT) + token.balanceOf(handler.REPORTER())
            + token.balanceOf(handler.CHALLENGER());
        for (uint256 i = 0; i < _nodes.length; ++i) {
            held += token.balanceOf(_nodes[i]);
        }
        for (uint256 i = 0; i < _verifiers.length; ++i) {
            held += token.balanceOf(_verifiers[i]);
        }
        assertEq(held, token.totalSupply(), "every token is held by a known account");
        assertEq(token.totalSupply(), SUPPLY, "supply");
    }
}
