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

/// @title Slasher tests with quorum 1: slash, equivocation, reward pool, views, deployment checks.
contract SlasherTest is SlasherSetup {
    ISlasher.Leaf[] internal _leaves;
    bytes32[] internal _hashes;
    uint256 internal _batchId;

    function setUp() public {
        _setUpSystem(defaultParams(), 2);
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        for (uint256 i = 0; i < leaves.length; ++i) {
            _leaves.push(leaves[i]);
        }
        _hashes = hashes;
        _batchId = commitLeaves(node, hashes);
    }

    function _verdict(uint256 key, uint256 leafIndex, ISlasher.Reason reason) internal view returns (bytes[] memory) {
        return _verdicts(_oneKey(key), _batchId, _hashes[leafIndex], reason);
    }

    function _slash(uint256 leafIndex, bytes[] memory verdicts) internal returns (uint256) {
        return slasher.slash(
            _leaves[leafIndex], _batchId, Merkle.proof(_hashes, leafIndex), ISlasher.Reason.Mismatch, verdicts
        );
    }

    function _expectSlashRevert(uint256 leafIndex, bytes[] memory verdicts, bytes memory error) internal {
        bytes32[] memory proof = Merkle.proof(_hashes, leafIndex);
        ISlasher.Leaf memory leaf = _leaves[leafIndex];
        vm.expectRevert(error);
        slasher.slash(leaf, _batchId, proof, ISlasher.Reason.Mismatch, verdicts);
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
        assertEq(registry.slasher(), address(slasher), "registry names the slasher");
        assertEq(slasher.rewardPool(), 0, "rewardPool");
    }

    /// @dev A registry + commitments pair whose slasher is the next contract this test deploys.
    function _pairForNextDeployment() internal returns (NodeRegistry r, Commitments c) {
        address predicted = vm.computeCreateAddress(address(this), vm.getNonce(address(this)) + 2);
        r = new NodeRegistry(token, 100e18, 7 days, predicted);
        c = new Commitments(r);
    }

    function test_constructor_revertsWhenRegistryNamesAnotherSlasher() public {
        NodeRegistry r = new NodeRegistry(token, 100e18, 7 days, address(0xDEAD));
        Commitments c = new Commitments(r);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNotRegistrySlasher.selector, address(0xDEAD)));
        new Slasher(r, c, verifierRegistry, 1, 5_000, 2_000, 3 days, REWARD_RECIPIENT);
    }

    function test_constructor_revertsWhenCommitmentsFollowAnotherRegistry() public {
        (NodeRegistry r,) = _pairForNextDeployment();
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherRegistryMismatch.selector, address(registry), address(r))
        );
        new Slasher(r, commitments, verifierRegistry, 1, 5_000, 2_000, 3 days, REWARD_RECIPIENT);
    }

    function test_constructor_revertsOnZeroQuorum() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidQuorum.selector, uint8(0)));
        new Slasher(r, c, verifierRegistry, 0, 5_000, 2_000, 3 days, REWARD_RECIPIENT);
    }

    function test_constructor_revertsOnSlashBpsAboveOne() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidBps.selector, uint16(10_001)));
        new Slasher(r, c, verifierRegistry, 1, 10_001, 2_000, 3 days, REWARD_RECIPIENT);
    }

    function test_constructor_revertsOnBountyBpsAboveOne() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidBps.selector, uint16(10_001)));
        new Slasher(r, c, verifierRegistry, 1, 5_000, 10_001, 3 days, REWARD_RECIPIENT);
    }

    function test_constructor_revertsWhenWindowOutlastsUnbonding() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherChallengeWindowTooLong.selector, uint64(7 days + 1), uint64(7 days))
        );
        new Slasher(r, c, verifierRegistry, 1, 5_000, 2_000, 7 days + 1, REWARD_RECIPIENT);
    }

    function test_constructor_revertsOnZeroRewardRecipient() public {
        (NodeRegistry r, Commitments c) = _pairForNextDeployment();
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherZeroRewardRecipient.selector));
        new Slasher(r, c, verifierRegistry, 1, 5_000, 2_000, 3 days, address(0));
    }

    // ---- slash -------------------------------------------------------------------------------

    function test_slash_takesStakePaysVerifierAndPoolsTheRest() public {
        address verifier = vm.addr(verifierKeys[0]);
        bytes[] memory verdicts = _verdict(verifierKeys[0], 1, ISlasher.Reason.Mismatch);
        uint256 verifierBefore = token.balanceOf(verifier);

        vm.expectEmit(address(slasher));
        emit ISlasher.LeafSlashed(node, _batchId, _hashes[1], ISlasher.Reason.Mismatch, 500e18, 100e18);
        uint256 slashed = _slash(1, verdicts);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.slash quorum 1");

        assertEq(slashed, 500e18, "half the stake");
        assertEq(token.balanceOf(verifier), verifierBefore + 100e18, "bounty: 20% of the slash");
        assertEq(slasher.rewardPool(), 400e18, "reward pool: the rest");
        assertEq(token.balanceOf(address(slasher)), 400e18, "slasher balance == pool");
        assertEq(registry.getNode(node).stake, 500e18, "node stake");
        assertEq(registry.totalStaked(), 500e18, "registry totalStaked");
        assertTrue(slasher.isLeafSlashed(_hashes[1]), "leaf marked");
        assertFalse(slasher.isLeafSlashed(_hashes[0]), "other leaf untouched");
        assertFalse(registry.isActive(node), "node fell below its span's stake");
    }

    function test_slash_provesEveryLeafOfAThreeLeafTree() public {
        // Tree: root = H(H(l0, l1), l2); the odd leaf l2 has a one-element proof.
        assertEq(Merkle.proof(_hashes, 2).length, 1, "odd leaf proof length");
        assertEq(Merkle.proof(_hashes, 0).length, 2, "paired leaf proof length");
        assertEq(
            commitments.getBatch(_batchId).root,
            Merkle.hashPair(Merkle.hashPair(_hashes[0], _hashes[1]), _hashes[2]),
            "root shape"
        );
        uint256 remaining = NODE_STAKE;
        for (uint256 i = 0; i < 3; ++i) {
            assertTrue(slasher.verifyLeaf(_batchId, _hashes[i], Merkle.proof(_hashes, i)), "verifyLeaf");
            uint256 slashed = _slash(i, _verdict(verifierKeys[0], i, ISlasher.Reason.Mismatch));
            assertEq(slashed, remaining / 2, "each slash takes half of what is left");
            remaining -= slashed;
        }
        assertEq(registry.getNode(node).stake, remaining, "stake left");
    }

    function test_slash_acceptsWithheldVerdicts() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Withheld);
        uint256 slashed = slasher.slash(
            _leaves[0], _batchId, Merkle.proof(_hashes, 0), ISlasher.Reason.Withheld, verdicts
        );
        assertEq(slashed, 500e18, "slashed");
    }

    function test_slash_reachesUnbondingStakeInsideTheWindow() public {
        vm.prank(node);
        registry.unbond(NODE_STAKE);
        vm.warp(T0 + 3 days);
        uint256 slashed = _slash(0, _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch));
        assertEq(slashed, 500e18, "half of the unbonding stake");
        assertEq(registry.getNode(node).unbonding, 500e18, "unbonding left");
    }

    function test_slash_revertsOnUnknownBatch() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        bytes32[] memory proof = Merkle.proof(_hashes, 0);
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherUnknownBatch.selector, 0));
        slasher.slash(leaf, 0, proof, ISlasher.Reason.Mismatch, verdicts);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherUnknownBatch.selector, 2));
        slasher.slash(leaf, 2, proof, ISlasher.Reason.Mismatch, verdicts);
    }

    function test_slash_allowedAtTheLastSecondOfTheWindow() public {
        vm.warp(T0 + 3 days);
        assertEq(_slash(0, _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch)), 500e18, "slashed");
    }

    function test_slash_revertsAfterTheChallengeWindow() public {
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
        bytes32[] memory proof = Merkle.proof(_hashes, 0);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherModelMismatch.selector, leaf.modelId, MODEL));
        slasher.slash(leaf, _batchId, proof, ISlasher.Reason.Mismatch, verdicts);
    }

    function test_slash_revertsOnWrongProof() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch);
        bytes32[] memory proofOfOther = Merkle.proof(_hashes, 2);
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, _hashes[0]));
        slasher.slash(leaf, _batchId, proofOfOther, ISlasher.Reason.Mismatch, verdicts);
    }

    function test_slash_revertsOnLeafNotInTheBatch() public {
        ISlasher.Leaf memory forged = makeLeaf(SESSION, 1, 99);
        bytes32 forgedHash = slasher.leafHash(forged);
        bytes[] memory verdicts = _verdicts(_oneKey(verifierKeys[0]), _batchId, forgedHash, ISlasher.Reason.Mismatch);
        bytes32[] memory proof = Merkle.proof(_hashes, 1);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, forgedHash));
        slasher.slash(forged, _batchId, proof, ISlasher.Reason.Mismatch, verdicts);
    }

    function test_slash_revertsOnReasonNone() public {
        bytes[] memory verdicts = _verdict(verifierKeys[0], 0, ISlasher.Reason.None);
        bytes32[] memory proof = Merkle.proof(_hashes, 0);
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReason.selector, uint8(0)));
        slasher.slash(leaf, _batchId, proof, ISlasher.Reason.None, verdicts);
    }

    function test_slash_revertsOnTheSameLeafTwice() public {
        _slash(0, _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch));
        _expectSlashRevert(
            0,
            _verdict(verifierKeys[1], 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherAlreadySlashed.selector, _hashes[0])
        );
    }

    function test_slash_revertsWithoutVerdicts() public {
        _expectSlashRevert(
            0, new bytes[](0), abi.encodeWithSelector(ISlasher.SlasherNotEnoughVerdicts.selector, 0, 1)
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
        vm.prank(verifier);
        verifierRegistry.unbond(1_000e18);
        _expectSlashRevert(
            0,
            _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch),
            abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, verifier)
        );
    }

    /// @dev The verdict digest as any EIP-712 signer computes it, for any chain and contract.
    function _verdictDigest(uint256 chainId, address verifyingContract, bytes32 leaf) internal view returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("stakeswarm Slasher"),
                keccak256("1"),
                chainId,
                verifyingContract
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Verdict(address node,uint256 batchId,bytes32 leaf,uint8 reason)"),
                node,
                _batchId,
                leaf,
                uint8(ISlasher.Reason.Mismatch)
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function test_verdictDigest_isTheEip712Digest() public view {
        assertEq(
            slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch),
            _verdictDigest(block.chainid, address(slasher), _hashes[0]),
            "digest matches an independent EIP-712 computation"
        );
    }

    function test_slash_revertsOnVerdictForOtherChain() public {
        bytes[] memory verdicts = new bytes[](1);
        verdicts[0] = sign(verifierKeys[0], _verdictDigest(1, address(slasher), _hashes[0]));
        address recovered = ecrecoverSignature(
            slasher.verdictDigest(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch), verdicts[0]
        );
        _expectSlashRevert(0, verdicts, abi.encodeWithSelector(ISlasher.SlasherNotAVerifier.selector, recovered));
    }

    function test_slash_revertsOnVerdictForOtherContract() public {
        bytes[] memory verdicts = new bytes[](1);
        verdicts[0] = sign(verifierKeys[0], _verdictDigest(block.chainid, address(commitments), _hashes[0]));
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
        (, bytes32[] memory hashes) = _threeLeaves();
        uint256 batchId = commitLeaves(node, hashes);
        ISlasher.Leaf memory leaf0 = makeLeaf(SESSION, 0, 0);
        ISlasher.Leaf memory leaf1 = makeLeaf(SESSION, 1, 0);
        bytes[] memory verdicts0 = _verdicts(_oneKey(verifierKeys[0]), batchId, hashes[0], ISlasher.Reason.Mismatch);
        bytes[] memory verdicts1 = _verdicts(_oneKey(verifierKeys[0]), batchId, hashes[1], ISlasher.Reason.Mismatch);
        bytes32[] memory proof1 = Merkle.proof(hashes, 1);

        uint256 slashed =
            slasher.slash(leaf0, batchId, Merkle.proof(hashes, 0), ISlasher.Reason.Mismatch, verdicts0);
        assertEq(slashed, NODE_STAKE, "everything");
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNothingToSlash.selector, node));
        slasher.slash(leaf1, batchId, proof1, ISlasher.Reason.Mismatch, verdicts1);
    }

    // ---- slashEquivocation -------------------------------------------------------------------

    function _equivocation() internal pure returns (ISlasher.Leaf memory a, ISlasher.Leaf memory b) {
        a = makeLeaf(SESSION, 5, 1);
        b = makeLeaf(SESSION, 5, 2);
    }

    function test_slashEquivocation_paysTheReporter() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = signReceipt(NODE_PK, b);
        address reporter = address(0xF00D);
        vm.expectEmit(address(slasher));
        emit ISlasher.EquivocationSlashed(node, SESSION, 5, reporter, 500e18, 100e18);
        vm.prank(reporter);
        uint256 slashed = slasher.slashEquivocation(node, a, ra, b, rb);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.slashEquivocation");

        assertEq(slashed, 500e18, "half the stake");
        assertEq(token.balanceOf(reporter), 100e18, "bounty to the reporter");
        assertEq(slasher.rewardPool(), 400e18, "reward pool");
        assertEq(token.balanceOf(address(slasher)), 400e18, "slasher balance == pool");
    }

    function test_slashEquivocation_revertsOnTheSameLeaf() public {
        (ISlasher.Leaf memory a,) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNotEquivocation.selector));
        slasher.slashEquivocation(node, a, ra, a, ra);
    }

    function test_slashEquivocation_revertsOnDifferentSlots() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        ISlasher.Leaf[5] memory others = [b, b, b, b, b];
        others[0].step = a.step + 1;
        others[1].sessionId = keccak256("session 2");
        others[2].modelId = keccak256("other model");
        others[3].spanStart = a.spanStart + 1;
        others[4].spanEnd = a.spanEnd + 1;
        for (uint256 i = 0; i < others.length; ++i) {
            bytes memory rb = signReceipt(NODE_PK, others[i]);
            vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNotEquivocation.selector));
            slasher.slashEquivocation(node, a, ra, others[i], rb);
        }
    }

    function test_slashEquivocation_revertsOnReceiptOfAnotherSigner() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory forged = signReceipt(STRANGER_PK, b);
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, vm.addr(STRANGER_PK), node)
        );
        slasher.slashEquivocation(node, a, ra, b, forged);
        vm.expectRevert(
            abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, vm.addr(STRANGER_PK), node)
        );
        slasher.slashEquivocation(node, b, forged, a, ra);
    }

    function _receiptDigest(uint256 chainId, address verifyingContract, ISlasher.Leaf memory leaf)
        internal
        pure
        returns (bytes32)
    {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("stakeswarm Slasher"),
                keccak256("1"),
                chainId,
                verifyingContract
            )
        );
        bytes32 typehash = keccak256(
            "Receipt(bytes32 sessionId,bytes32 modelId,uint16 spanStart,uint16 spanEnd,uint32 step,uint32 tokens,"
            "bytes32 inputHash,bytes32 outputHash,bytes32 sketchHash)"
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, keccak256(abi.encode(typehash, leaf))));
    }

    function test_receiptDigest_isTheEip712Digest() public view {
        (ISlasher.Leaf memory a,) = _equivocation();
        assertEq(
            slasher.receiptDigest(a),
            _receiptDigest(block.chainid, address(slasher), a),
            "digest matches an independent EIP-712 computation"
        );
    }

    function test_slashEquivocation_revertsOnReceiptForOtherChain() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = sign(NODE_PK, _receiptDigest(1, address(slasher), b));
        address recovered = ecrecoverSignature(slasher.receiptDigest(b), rb);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, recovered, node));
        slasher.slashEquivocation(node, a, ra, b, rb);
    }

    function test_slashEquivocation_revertsOnReceiptForOtherContract() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = sign(NODE_PK, _receiptDigest(block.chainid, address(registry), b));
        address recovered = ecrecoverSignature(slasher.receiptDigest(b), rb);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, recovered, node));
        slasher.slashEquivocation(node, a, ra, b, rb);
    }

    function test_slashEquivocation_revertsOnMalleableReceipt() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = malleate(signReceipt(NODE_PK, b));
        assertEq(ecrecoverSignature(slasher.receiptDigest(b), rb), node, "ecrecover accepts it");
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, address(0), node));
        slasher.slashEquivocation(node, a, ra, b, rb);
    }

    function test_slashEquivocation_revertsOnTheSameSlotTwice() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        ISlasher.Leaf memory c = makeLeaf(SESSION, 5, 3);
        bytes memory ra = signReceipt(NODE_PK, a);
        bytes memory rb = signReceipt(NODE_PK, b);
        bytes memory rc = signReceipt(NODE_PK, c);
        slasher.slashEquivocation(node, a, ra, b, rb);
        bytes32 key = keccak256(abi.encode(node, a.sessionId, a.modelId, a.spanStart, a.spanEnd, a.step));
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherAlreadySlashed.selector, key));
        slasher.slashEquivocation(node, a, ra, c, rc);
    }

    function test_slashEquivocation_revertsForANodeWithoutStake() public {
        (ISlasher.Leaf memory a, ISlasher.Leaf memory b) = _equivocation();
        bytes memory ra = signReceipt(STRANGER_PK, a);
        bytes memory rb = signReceipt(STRANGER_PK, b);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherNothingToSlash.selector, vm.addr(STRANGER_PK)));
        slasher.slashEquivocation(vm.addr(STRANGER_PK), a, ra, b, rb);
    }

    // ---- releaseRewardPool -------------------------------------------------------------------

    function test_releaseRewardPool_paysTheWholePoolToTheRecipient() public {
        _slash(0, _verdict(verifierKeys[0], 0, ISlasher.Reason.Mismatch));
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
                l.sketchHash
            )
        );
        assertEq(slasher.leafHash(l), expected, "leafHash");
    }

    function test_verifyLeaf_falseForWrongProofLeafOrBatch() public view {
        bytes32[] memory proof = Merkle.proof(_hashes, 0);
        assertTrue(slasher.verifyLeaf(_batchId, _hashes[0], proof), "valid");
        assertFalse(slasher.verifyLeaf(_batchId, _hashes[1], proof), "proof of another leaf");
        assertFalse(slasher.verifyLeaf(_batchId, keccak256("x"), proof), "foreign leaf");
        assertFalse(slasher.verifyLeaf(_batchId + 1, _hashes[0], proof), "unknown batch");
        assertFalse(slasher.verifyLeaf(0, _hashes[0], proof), "batch 0");
    }
}

/// @title Slasher tests with quorum 3: verdict lists, ordering, bounty split.
contract SlasherQuorumTest is SlasherSetup {
    bytes32[] internal _hashes;
    uint256 internal _batchId;
    ISlasher.Leaf internal _leaf;

    function setUp() public {
        Params memory p = defaultParams();
        p.quorum = 3;
        _setUpSystem(p, 4);
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        _hashes = hashes;
        _leaf = leaves[0];
        _batchId = commitLeaves(node, hashes);
    }

    function _slash(bytes[] memory verdicts) internal returns (uint256) {
        return slasher.slash(_leaf, _batchId, Merkle.proof(_hashes, 0), ISlasher.Reason.Mismatch, verdicts);
    }

    function _expectSlashRevert(bytes[] memory verdicts, bytes memory error) internal {
        bytes32[] memory proof = Merkle.proof(_hashes, 0);
        ISlasher.Leaf memory leaf = _leaf;
        vm.expectRevert(error);
        slasher.slash(leaf, _batchId, proof, ISlasher.Reason.Mismatch, verdicts);
    }

    function _sorted(uint256 count) internal view returns (bytes[] memory) {
        return _verdicts(_firstKeys(count), _batchId, _hashes[0], ISlasher.Reason.Mismatch);
    }

    function test_slash_splitsTheBountyAcrossTheQuorum() public {
        bytes[] memory verdicts = _sorted(3);
        uint256 perVerifier = uint256(100e18) / 3;
        vm.expectEmit(address(slasher));
        emit ISlasher.LeafSlashed(node, _batchId, _hashes[0], ISlasher.Reason.Mismatch, 500e18, perVerifier);
        uint256 slashed = _slash(verdicts);
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

    function test_slash_paysEverySignerBeyondTheQuorum() public {
        uint256 slashed = _slash(_sorted(4));
        uint256 perVerifier = slashed * 2_000 / 10_000 / 4;
        for (uint256 i = 0; i < 4; ++i) {
            assertEq(token.balanceOf(vm.addr(verifierKeys[i])), perVerifier, "each signer's share");
        }
        assertEq(slasher.rewardPool(), slashed - 4 * perVerifier, "pool");
    }

    function test_slash_revertsBelowQuorum() public {
        _expectSlashRevert(_sorted(2), abi.encodeWithSelector(ISlasher.SlasherNotEnoughVerdicts.selector, 2, 3));
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
        uint256 batchId = commitLeaves(node, hashes);
        bytes[] memory verdicts = _verdicts(_firstKeys(2), batchId, hashes[1], ISlasher.Reason.Mismatch);
        uint256 slashed =
            slasher.slash(leaves[1], batchId, Merkle.proof(hashes, 1), ISlasher.Reason.Mismatch, verdicts);

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

/// @notice Random commit / slash / slashWithheld / slashEquivocation / releaseRewardPool / addStake /
/// unbond / withdraw / warp sequences over a few nodes, with valid verdicts from a quorum of verifiers.
contract SlasherHandler is SystemFixture {
    address public constant REPORTER = address(0xF00D);

    uint256[] internal _nodeKeys;
    uint256[] internal _verifierKeys; // sorted by address
    mapping(uint256 batchId => uint256 salt) internal _batchSalt;

    /// @notice Everything the slasher took from nodes so far.
    uint256 public ghostSlashed;

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

    function commit(uint256 nodeSeed, uint256 salt) external {
        (, bytes32[] memory hashes) = _batchLeaves(salt);
        uint256 batchId = commitLeaves(vm.addr(_nodeKey(nodeSeed)), hashes);
        _batchSalt[batchId] = salt;
    }

    function slash(uint256 batchSeed, uint256 leafIndex, bool withheld) external {
        uint256 count = commitments.batchCount();
        if (count == 0) return;
        uint256 batchId = 1 + batchSeed % count;
        leafIndex %= 2;
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _batchLeaves(_batchSalt[batchId]);
        ISlasher.Reason reason = withheld ? ISlasher.Reason.Withheld : ISlasher.Reason.Mismatch;
        bytes[] memory verdicts = _quorumVerdicts(batchId, hashes[leafIndex], reason);
        ghostSlashed +=
            slasher.slash(leaves[leafIndex], batchId, Merkle.proof(hashes, leafIndex), reason, verdicts);
    }

    function _quorumVerdicts(uint256 batchId, bytes32 leaf, ISlasher.Reason reason)
        internal
        view
        returns (bytes[] memory verdicts)
    {
        bytes32 digest = slasher.verdictDigest(commitments.getBatch(batchId).node, batchId, leaf, reason);
        verdicts = new bytes[](slasher.quorum());
        for (uint256 i = 0; i < verdicts.length; ++i) {
            verdicts[i] = sign(_verifierKeys[i], digest);
        }
    }

    function slashWithheld(uint256 batchSeed, uint32 leafIndex) external {
        uint256 count = commitments.batchCount();
        if (count == 0) return;
        uint256 batchId = 1 + batchSeed % count;
        leafIndex %= 2;
        bytes32 digest = slasher.withheldDigest(commitments.getBatch(batchId).node, batchId, leafIndex);
        bytes[] memory verdicts = new bytes[](slasher.quorum());
        for (uint256 i = 0; i < verdicts.length; ++i) {
            verdicts[i] = sign(_verifierKeys[i], digest);
        }
        ghostSlashed += slasher.slashWithheld(batchId, leafIndex, verdicts);
    }

    function slashEquivocation(uint256 nodeSeed, uint32 step, uint256 saltA, uint256 saltB) external {
        uint256 key = _nodeKey(nodeSeed);
        bytes32 session = keccak256(abi.encode("equivocation", step % 4));
        ISlasher.Leaf memory a = makeLeaf(session, step % 4, saltA);
        ISlasher.Leaf memory b = makeLeaf(session, step % 4, saltB);
        bytes memory ra = signReceipt(key, a);
        bytes memory rb = signReceipt(key, b);
        vm.prank(REPORTER);
        ghostSlashed += slasher.slashEquivocation(vm.addr(key), a, ra, b, rb);
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
}

/// @title Slasher invariants: the reward pool matches the balance; every slashed token is pooled,
/// released or paid as a bounty; stake pots match their balances; the supply is conserved.
contract SlasherInvariantTest is SlasherSetup {
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
        targetContract(address(handler));
    }

    function invariant_rewardPoolEqualsBalance() public view {
        assertEq(slasher.rewardPool(), token.balanceOf(address(slasher)), "rewardPool == slasher balance");
    }

    function invariant_everySlashedTokenIsAccountedFor() public view {
        uint256 paid = token.balanceOf(address(slasher)) + token.balanceOf(REWARD_RECIPIENT)
            + token.balanceOf(handler.REPORTER());
        for (uint256 i = 0; i < _verifiers.length; ++i) {
            paid += token.balanceOf(_verifiers[i]);
        }
        assertEq(paid, handler.ghostSlashed(), "pool + released + bounties == slashed");
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
            verifierRegistry.totalStaked(), token.balanceOf(address(verifierRegistry)), "verifier totalStaked == balance"
        );
    }

    function invariant_supplyIsConserved() public view {
        uint256 held = token.balanceOf(address(this)) + token.balanceOf(address(registry))
            + token.balanceOf(address(verifierRegistry)) + token.balanceOf(address(slasher))
            + token.balanceOf(REWARD_RECIPIENT) + token.balanceOf(handler.REPORTER());
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
