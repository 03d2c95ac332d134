// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {ICommitments} from "../interfaces/ICommitments.sol";
import {ISlasher} from "../interfaces/ISlasher.sol";

import {Merkle} from "./helpers/Merkle.sol";
import {SlasherSetup} from "./helpers/SlasherSetup.sol";

/// @notice A node that served three leaves of SESSION at T0, signed their receipts and
/// committed them as one batch at T0; a funded challenger holding the receipts.
abstract contract ReceiptChallengeSetup is SlasherSetup {
    address internal constant CHALLENGER = address(0xC4A1);
    uint256 internal constant CHALLENGER_BONDS = 10;

    ISlasher.Leaf[] internal _leaves;
    bytes32[] internal _hashes;
    uint256 internal _batchId;
    ICommitments.BatchHeader internal _header;

    function _serveAndCommit() internal {
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        for (uint256 i = 0; i < leaves.length; ++i) {
            _leaves.push(leaves[i]);
        }
        _hashes = hashes;
        (_batchId, _header) = commitLeaves(node, hashes);
        fundChallenger(CHALLENGER, CHALLENGER_BONDS);
    }

    /// @dev The commit deadline of a receipt issued at `issuedAt`: the last second a commit of
    /// its leaf is in time.
    function _deadline(uint64 issuedAt) internal pure returns (uint64) {
        return issuedAt + COMMIT_DEADLINE;
    }

    /// @dev The first second a receipt issued at `issuedAt` may be challenged: the one after its
    /// deadline (the deadline's own second still belongs to the node).
    function _opensAt(uint64 issuedAt) internal pure returns (uint64) {
        return _deadline(issuedAt) + 1;
    }

    /// @dev The last second it may be challenged.
    function _closesAt(uint64 issuedAt) internal pure returns (uint64) {
        return _deadline(issuedAt) + RECEIPT_CHALLENGE_PERIOD;
    }

    /// @dev CHALLENGER challenges the node's receipt of `leaf` as soon as it may; returns the id.
    function _challenge(ISlasher.Leaf memory leaf) internal returns (uint256) {
        if (block.timestamp < _opensAt(leaf.issuedAt)) vm.warp(_opensAt(leaf.issuedAt));
        return claimAndChallenge(CHALLENGER, node, leaf, signReceipt(NODE_PK, leaf));
    }

    /// @dev Leaf `index` of the committed batch, with its proof.
    function _proof(uint256 index) internal view returns (ISlasher.LeafProof memory) {
        return leafProof(_batchId, _header, _hashes, index);
    }

    /// @dev The slasher's balance is its pool plus one bond per open challenge.
    function _assertBalanceIsPoolPlusBonds(uint256 open) internal view {
        assertEq(
            token.balanceOf(address(slasher)),
            slasher.rewardPool() + open * CHALLENGE_BOND,
            "slasher balance == pool + open bonds"
        );
    }
}

/// @title Slasher receipt challenges: challengeReceipt, answerChallenge, slashUnanswered.
contract SlasherReceiptChallengeTest is ReceiptChallengeSetup {
    function setUp() public {
        _setUpSystem(defaultParams(), 2);
        _serveAndCommit();
    }

    function _expectChallengeRevert(ISlasher.Leaf memory leaf, bytes memory receipt, bytes memory error) internal {
        vm.expectRevert(error);
        vm.prank(CHALLENGER);
        slasher.challengeReceipt(node, leaf, receipt, SECRET);
    }

    function _expectAnswerRevert(
        uint256 id,
        ISlasher.Leaf memory leaf,
        ISlasher.LeafProof memory proof,
        bytes memory error
    ) internal {
        vm.expectRevert(error);
        vm.prank(node);
        slasher.answerChallenge(id, leaf, proof);
    }

    // ---- challengeReceipt --------------------------------------------------------------------

    function test_challengeReceipt_opensAChallengeAndTakesTheBond() public {
        ISlasher.Leaf memory leaf = _leaves[1];
        bytes memory receipt = signReceipt(NODE_PK, leaf);
        vm.warp(_opensAt(T0));
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        uint64 answerBy = _opensAt(T0) + RESPONSE_WINDOW;

        vm.expectEmit(address(slasher));
        emit ISlasher.ReceiptChallenged(1, node, CHALLENGER, _hashes[1], answerBy);
        vm.prank(CHALLENGER);
        uint256 id = slasher.challengeReceipt(node, leaf, receipt, SECRET);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.challengeReceipt");

        assertEq(id, 1, "ids start at 1");
        assertEq(slasher.challengeCount(), 1, "challengeCount");
        ISlasher.ReceiptChallenge memory c = slasher.getChallenge(id);
        assertEq(c.node, node, "node");
        assertEq(uint256(c.issuedAt), T0, "issuedAt");
        assertEq(c.challenger, CHALLENGER, "challenger");
        assertEq(uint256(c.answerBy), answerBy, "answerBy");
        assertEq(c.leaf, _hashes[1], "leaf");
        assertEq(uint256(c.status), uint256(ISlasher.ChallengeStatus.Open), "status");
        assertEq(token.balanceOf(CHALLENGER), (CHALLENGER_BONDS - 1) * CHALLENGE_BOND, "the bond is pulled");
        _assertBalanceIsPoolPlusBonds(1);
        bytes32 claimHash = slasher.claimHash(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        assertEq(slasher.claimedAt(claimHash), 0, "the claim is used up");
    }

    function test_challengeReceipt_allowedAtTheLastSecondOfThePeriod() public {
        vm.warp(_closesAt(T0));
        uint256 id = claimAndChallenge(CHALLENGER, node, _leaves[0], signReceipt(NODE_PK, _leaves[0]));
        assertEq(uint256(slasher.getChallenge(id).answerBy), _closesAt(T0) + RESPONSE_WINDOW, "answerBy");
    }

    function test_challengeReceipt_revertsBeforeTheCommitDeadline() public {
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.warp(_deadline(T0) - 1);
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        _expectChallengeRevert(
            leaf,
            signReceipt(NODE_PK, leaf),
            abi.encodeWithSelector(ISlasher.SlasherChallengeTooEarly.selector, _opensAt(T0))
        );
    }

    function test_challengeReceipt_revertsInTheDeadlineSecondAndOpensTheNext() public {
        // The deadline's own second is still the node's to commit in: too early to challenge.
        ISlasher.Leaf memory leaf = _leaves[0];
        bytes memory receipt = signReceipt(NODE_PK, leaf);
        vm.warp(_deadline(T0));
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        assertEq(block.timestamp, _deadline(T0), "still the deadline's second");
        _expectChallengeRevert(
            leaf, receipt, abi.encodeWithSelector(ISlasher.SlasherChallengeTooEarly.selector, _deadline(T0) + 1)
        );
        assertEq(slasher.challengeCount(), 0, "nothing opened");

        vm.warp(_deadline(T0) + 1);
        vm.prank(CHALLENGER);
        uint256 id = slasher.challengeReceipt(node, leaf, receipt, SECRET);
        assertEq(id, 1, "opened the second after");
        assertEq(uint256(slasher.getChallenge(id).answerBy), _deadline(T0) + 1 + RESPONSE_WINDOW, "answerBy");
    }

    function test_challengeReceipt_revertsAfterTheChallengePeriod() public {
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.warp(_closesAt(T0) + 1);
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        _expectChallengeRevert(
            leaf,
            signReceipt(NODE_PK, leaf),
            abi.encodeWithSelector(ISlasher.SlasherChallengeTooLate.selector, _closesAt(T0))
        );
    }

    function test_challengeReceipt_countsFromTheReceiptsIssuedAt() public {
        // A receipt issued a day later opens a day later.
        ISlasher.Leaf memory later = makeLeaf(SESSION, 7, 0, T0 + 1 days);
        vm.warp(_opensAt(T0));
        claimAndRoll(slasher.receiptDigest(later), only(CHALLENGER), SECRET);
        _expectChallengeRevert(
            later,
            signReceipt(NODE_PK, later),
            abi.encodeWithSelector(ISlasher.SlasherChallengeTooEarly.selector, _opensAt(T0 + 1 days))
        );
        vm.warp(_opensAt(T0 + 1 days));
        bytes memory receipt = signReceipt(NODE_PK, later);
        vm.prank(CHALLENGER);
        assertEq(slasher.challengeReceipt(node, later, receipt, SECRET), 1, "opened");
    }

    function test_challengeReceipt_revertsOnTheSameReceiptTwice() public {
        _challenge(_leaves[0]);
        ISlasher.Leaf memory leaf = _leaves[0];
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        _expectChallengeRevert(
            leaf,
            signReceipt(NODE_PK, leaf),
            abi.encodeWithSelector(ISlasher.SlasherReceiptAlreadyChallenged.selector, node, _hashes[0])
        );
    }

    function test_challengeReceipt_allowsEachReceiptOnce() public {
        assertEq(_challenge(_leaves[0]), 1, "first");
        uint256 second = _challenge(_leaves[1]);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.challengeReceipt later challenge");
        assertEq(second, 2, "second");
        assertEq(_challenge(_leaves[2]), 3, "third");
        assertEq(slasher.challengeCount(), 3, "challengeCount");
        _assertBalanceIsPoolPlusBonds(3);
    }

    function test_challengeReceipt_revertsWithoutAClaim() public {
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.warp(_opensAt(T0));
        bytes32 claimHash = slasher.claimHash(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        _expectChallengeRevert(
            leaf,
            signReceipt(NODE_PK, leaf),
            abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash)
        );
    }

    function test_challengeReceipt_revertsOnAClaimOfTheSameBlock() public {
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.warp(_opensAt(T0));
        bytes32 claimHash = slasher.claimHash(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        slasher.claim(claimHash);
        _expectChallengeRevert(
            leaf,
            signReceipt(NODE_PK, leaf),
            abi.encodeWithSelector(ISlasher.SlasherClaimNotMatured.selector, claimHash)
        );
    }

    function test_challengeReceipt_revertsOnAReceiptOfAnotherSigner() public {
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.warp(_opensAt(T0));
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        _expectChallengeRevert(
            leaf,
            signReceipt(STRANGER_PK, leaf),
            abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, vm.addr(STRANGER_PK), node)
        );
    }

    function test_challengeReceipt_revertsOnAReceiptOfAnotherLeaf() public {
        // The node's signature over leaf 1 does not make it answer for leaf 0.
        ISlasher.Leaf memory leaf = _leaves[0];
        bytes memory receiptOfOther = signReceipt(NODE_PK, _leaves[1]);
        vm.warp(_opensAt(T0));
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        address recovered = ecrecoverSignature(slasher.receiptDigest(leaf), receiptOfOther);
        _expectChallengeRevert(
            leaf,
            receiptOfOther,
            abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, recovered, node)
        );
    }

    function test_challengeReceipt_revertsOnAMalleableReceipt() public {
        ISlasher.Leaf memory leaf = _leaves[0];
        bytes memory malleable = malleate(signReceipt(NODE_PK, leaf));
        assertEq(ecrecoverSignature(slasher.receiptDigest(leaf), malleable), node, "ecrecover accepts it");
        vm.warp(_opensAt(T0));
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        _expectChallengeRevert(
            leaf,
            malleable,
            abi.encodeWithSelector(ISlasher.SlasherInvalidReceiptSignature.selector, address(0), node)
        );
    }

    function test_challengeReceipt_revertsWithoutTheBond() public {
        address poor = address(0xB0B0);
        ISlasher.Leaf memory leaf = _leaves[0];
        vm.warp(_opensAt(T0));
        claimAndRoll(slasher.receiptDigest(leaf), only(poor), SECRET);
        bytes memory receipt = signReceipt(NODE_PK, leaf);
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(slasher), 0, CHALLENGE_BOND
            )
        );
        vm.prank(poor);
        slasher.challengeReceipt(node, leaf, receipt, SECRET);
        assertEq(slasher.challengeCount(), 0, "nothing opened");
    }

    function test_challengeReceipt_isPerNode() public {
        // The same leaf signed by a second node is that node's obligation too.
        address other = vm.addr(STRANGER_PK);
        registerNode(other, 0, 8, NODE_STAKE);
        ISlasher.Leaf memory leaf = _leaves[0];
        _challenge(leaf);
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        bytes memory receipt = signReceipt(STRANGER_PK, leaf);
        vm.prank(CHALLENGER);
        uint256 id = slasher.challengeReceipt(other, leaf, receipt, SECRET);
        assertEq(slasher.getChallenge(id).node, other, "a challenge of the other node");
    }

    // ---- answerChallenge ---------------------------------------------------------------------

    function test_answerChallenge_paysTheBondToTheNode() public {
        uint256 id = _challenge(_leaves[1]);
        uint256 nodeBefore = token.balanceOf(node);
        ISlasher.Leaf memory leaf = _leaves[1];
        ISlasher.LeafProof memory proof = _proof(1);

        vm.expectEmit(address(slasher));
        emit ISlasher.ReceiptChallengeAnswered(id, node, _batchId, 1);
        vm.prank(node);
        slasher.answerChallenge(id, leaf, proof);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.answerChallenge");

        assertEq(uint256(slasher.getChallenge(id).status), uint256(ISlasher.ChallengeStatus.Answered), "answered");
        assertEq(token.balanceOf(node), nodeBefore + CHALLENGE_BOND, "the bond goes to the node");
        assertEq(registry.getNode(node).stake, NODE_STAKE, "no stake taken");
        _assertBalanceIsPoolPlusBonds(0);
    }

    function test_answerChallenge_anyoneMayAnswerForTheNode() public {
        uint256 id = _challenge(_leaves[2]);
        vm.prank(address(0xA5));
        slasher.answerChallenge(id, _leaves[2], _proof(2));
        assertEq(token.balanceOf(node), CHALLENGE_BOND, "the bond goes to the node, not the sender");
        assertEq(token.balanceOf(address(0xA5)), 0, "the sender gets nothing");
    }

    function test_answerChallenge_acceptsACommitInTheDeadlineSecond() public {
        // The node commits in the deadline's own second; a challenge in that second is too
        // early, one the next second opens, and the commit answers it in time.
        ISlasher.Leaf memory leaf = makeLeaf(SESSION, 5, 0);
        bytes32[] memory hashes = new bytes32[](1);
        hashes[0] = slasher.leafHash(leaf);
        bytes memory receipt = signReceipt(NODE_PK, leaf);
        vm.warp(_deadline(T0));
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitLeaves(node, hashes);
        assertEq(uint256(header.committedAt), _deadline(T0), "committed in the deadline's second");
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        _expectChallengeRevert(
            leaf, receipt, abi.encodeWithSelector(ISlasher.SlasherChallengeTooEarly.selector, _opensAt(T0))
        );
        vm.warp(_opensAt(T0));
        vm.prank(CHALLENGER);
        uint256 id = slasher.challengeReceipt(node, leaf, receipt, SECRET);
        vm.prank(node);
        slasher.answerChallenge(id, leaf, leafProof(batchId, header, hashes, 0));
        assertEq(uint256(slasher.getChallenge(id).status), uint256(ISlasher.ChallengeStatus.Answered), "answered");
        assertEq(token.balanceOf(node), CHALLENGE_BOND, "the node takes the bond");
    }

    function test_answerChallenge_revertsOnACommitAfterTheDeadline() public {
        // One second after the deadline is late, even though the challenge comes later still.
        ISlasher.Leaf memory leaf = makeLeaf(SESSION, 5, 0);
        bytes32[] memory hashes = new bytes32[](1);
        hashes[0] = slasher.leafHash(leaf);
        vm.warp(_deadline(T0) + 1);
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitLeaves(node, hashes);
        uint256 id = _challenge(leaf);
        _expectAnswerRevert(
            id,
            leaf,
            leafProof(batchId, header, hashes, 0),
            abi.encodeWithSelector(ISlasher.SlasherCommittedTooLate.selector, batchId, _deadline(T0) + 1, _deadline(T0))
        );
    }

    function test_answerChallenge_acceptsAnAnswerAtAnswerBy() public {
        // answerBy is inclusive: the node may answer in its very second.
        uint256 id = _challenge(_leaves[0]);
        vm.warp(slasher.getChallenge(id).answerBy);
        vm.prank(node);
        slasher.answerChallenge(id, _leaves[0], _proof(0));
        assertEq(uint256(slasher.getChallenge(id).status), uint256(ISlasher.ChallengeStatus.Answered), "answered");
        assertEq(token.balanceOf(node), CHALLENGE_BOND, "the node takes the bond");
    }

    function test_answerChallenge_revertsAfterAnswerByAndTheNodeIsSlashed() public {
        // A valid proof shown one second after answerBy is refused: the window is over, and the
        // challenge can only end in a slash (a late answer cannot take the bond from it).
        uint256 id = _challenge(_leaves[0]);
        uint64 answerBy = slasher.getChallenge(id).answerBy;
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        vm.warp(answerBy + 1);
        _expectAnswerRevert(
            id, _leaves[0], _proof(0), abi.encodeWithSelector(ISlasher.SlasherAnswerTooLate.selector, id, answerBy)
        );
        assertEq(uint256(slasher.getChallenge(id).status), uint256(ISlasher.ChallengeStatus.Open), "still open");
        assertEq(token.balanceOf(node), 0, "no bond for a late answer");

        assertEq(slasher.slashUnanswered(id), 500e18, "slashed");
        assertEq(uint256(slasher.getChallenge(id).status), uint256(ISlasher.ChallengeStatus.Slashed), "slashed");
        assertEq(token.balanceOf(CHALLENGER), challengerBefore + 100e18 + CHALLENGE_BOND, "bounty + bond back");
        _assertBalanceIsPoolPlusBonds(0);
        _expectAnswerRevert(
            id, _leaves[0], _proof(0), abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, id)
        );
    }

    function test_answerChallenge_revertsOnAnotherLeaf() public {
        uint256 id = _challenge(_leaves[0]);
        _expectAnswerRevert(
            id, _leaves[1], _proof(1), abi.encodeWithSelector(ISlasher.SlasherWrongLeaf.selector, id, _hashes[1])
        );
    }

    function test_answerChallenge_revertsOnTheLeafWithAnotherIssuedAt() public {
        // issuedAt is part of the leaf: the same content with another time is another leaf.
        uint256 id = _challenge(_leaves[0]);
        ISlasher.Leaf memory earlier = _leaves[0];
        earlier.issuedAt = T0 - 1 days;
        _expectAnswerRevert(
            id,
            earlier,
            _proof(0),
            abi.encodeWithSelector(ISlasher.SlasherWrongLeaf.selector, id, slasher.leafHash(earlier))
        );
    }

    function test_answerChallenge_revertsOnABatchOfAnotherNode() public {
        // Another node's copy of the batch does not show that this node committed the leaf.
        address other = vm.addr(STRANGER_PK);
        registerNode(other, 0, 8, NODE_STAKE);
        (uint256 copyId, ICommitments.BatchHeader memory copy) = commitLeaves(other, _hashes);
        uint256 id = _challenge(_leaves[0]);
        _expectAnswerRevert(
            id,
            _leaves[0],
            leafProof(copyId, copy, _hashes, 0),
            abi.encodeWithSelector(ISlasher.SlasherNotTheNodesBatch.selector, copyId, node)
        );
        // Nor does a header that names the node on the copy's batch id.
        copy.node = node;
        _expectAnswerRevert(
            id,
            _leaves[0],
            leafProof(copyId, copy, _hashes, 0),
            abi.encodeWithSelector(ICommitments.CommitmentsHeaderMismatch.selector, copyId)
        );
    }

    function test_answerChallenge_revertsOnAHeaderThatIsNotTheBatchs() public {
        uint256 id = _challenge(_leaves[0]);
        for (uint256 i = 0; i < 3; ++i) {
            ICommitments.BatchHeader memory forged = _header; // a fresh copy each time
            if (i == 0) forged.root = keccak256("another root");
            if (i == 1) forged.leafCount = 4;
            if (i == 2) forged.committedAt = T0 - 1; // would look earlier
            _expectAnswerRevert(
                id,
                _leaves[0],
                leafProof(_batchId, forged, _hashes, 0),
                abi.encodeWithSelector(ICommitments.CommitmentsHeaderMismatch.selector, _batchId)
            );
        }
    }

    function test_answerChallenge_revertsOnAnUnknownBatch() public {
        uint256 id = _challenge(_leaves[0]);
        _expectAnswerRevert(
            id,
            _leaves[0],
            leafProof(_batchId + 1, _header, _hashes, 0),
            abi.encodeWithSelector(ICommitments.CommitmentsUnknownBatch.selector, _batchId + 1)
        );
    }

    function test_answerChallenge_revertsOnTheRightSiblingsAtAnotherPosition() public {
        uint256 id = _challenge(_leaves[0]);
        ISlasher.LeafProof memory proof = _proof(0);
        proof.leafIndex = 1;
        _expectAnswerRevert(
            id,
            _leaves[0],
            proof,
            abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, 1, _hashes[0])
        );
    }

    function test_answerChallenge_revertsOnAPositionBeyondTheLeafCount() public {
        uint256 id = _challenge(_leaves[0]);
        ISlasher.LeafProof memory proof = _proof(0);
        proof.leafIndex = 4; // the same path as position 0, beyond the three leaves
        _expectAnswerRevert(
            id,
            _leaves[0],
            proof,
            abi.encodeWithSelector(ISlasher.SlasherInvalidProof.selector, _batchId, 4, _hashes[0])
        );
    }

    function test_answerChallenge_revertsOnABatchOfAnotherModel() public {
        // The node moves to another model and commits the leaf's hash under it.
        bytes32 otherModel = keccak256("Qwen2-0.5B");
        vm.prank(node);
        registry.updateService(otherModel, 0, 8, 1e12, PEER_ID);
        ISlasher.Leaf memory leaf = makeLeaf(SESSION, 5, 0);
        bytes32[] memory hashes = new bytes32[](1);
        hashes[0] = slasher.leafHash(leaf);
        vm.prank(node);
        uint256 batchId = commitments.commit(otherModel, hashes[0], 1);
        ICommitments.BatchHeader memory header = ICommitments.BatchHeader({
            node: node,
            modelId: otherModel,
            root: hashes[0],
            leafCount: 1,
            committedAt: uint64(block.timestamp)
        });
        uint256 id = _challenge(leaf);
        _expectAnswerRevert(
            id,
            leaf,
            leafProof(batchId, header, hashes, 0),
            abi.encodeWithSelector(ISlasher.SlasherModelMismatch.selector, MODEL, otherModel)
        );
    }

    function test_answerChallenge_revertsOnAnUnknownChallenge() public {
        _expectAnswerRevert(
            1, _leaves[0], _proof(0), abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, 1)
        );
        _challenge(_leaves[0]);
        _expectAnswerRevert(
            2, _leaves[0], _proof(0), abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, 2)
        );
    }

    function test_answerChallenge_revertsWhenAnswered() public {
        uint256 id = _challenge(_leaves[0]);
        vm.prank(node);
        slasher.answerChallenge(id, _leaves[0], _proof(0));
        _expectAnswerRevert(
            id, _leaves[0], _proof(0), abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, id)
        );
        assertEq(token.balanceOf(node), CHALLENGE_BOND, "the bond is paid once");
    }

    function test_answerChallenge_revertsAfterTheSlash() public {
        uint256 id = _challenge(_leaves[0]);
        vm.warp(slasher.getChallenge(id).answerBy + 1);
        slasher.slashUnanswered(id);
        _expectAnswerRevert(
            id, _leaves[0], _proof(0), abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, id)
        );
    }

    // ---- slashUnanswered ---------------------------------------------------------------------

    function test_slashUnanswered_slashesAndPaysTheChallengerBountyAndBond() public {
        ISlasher.Leaf memory unserved = makeLeaf(SESSION, 9, 0); // signed, never committed
        uint256 id = _challenge(unserved);
        uint64 answerBy = slasher.getChallenge(id).answerBy;
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        vm.warp(answerBy + 1);

        vm.expectEmit(address(slasher));
        emit ISlasher.ReceiptChallengeSlashed(id, node, 500e18, 100e18);
        vm.prank(address(0x5B));
        uint256 slashed = slasher.slashUnanswered(id);
        vm.snapshotGasLastCall("stakeswarm", "Slasher.slashUnanswered");

        assertEq(slashed, 500e18, "slashBps of the stake");
        assertEq(token.balanceOf(CHALLENGER), challengerBefore + 100e18 + CHALLENGE_BOND, "bounty + bond back");
        assertEq(token.balanceOf(address(0x5B)), 0, "the sender is not paid for sending");
        assertEq(slasher.rewardPool(), 400e18, "the rest to the pool");
        assertEq(registry.getNode(node).stake, 500e18, "node stake");
        assertEq(uint256(slasher.getChallenge(id).status), uint256(ISlasher.ChallengeStatus.Slashed), "slashed");
        _assertBalanceIsPoolPlusBonds(0);
    }

    function test_slashUnanswered_revertsUntilAnswerByHasPassed() public {
        uint256 id = _challenge(_leaves[0]);
        uint64 answerBy = slasher.getChallenge(id).answerBy;
        vm.warp(answerBy);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherChallengeStillOpen.selector, id, answerBy));
        slasher.slashUnanswered(id);
        vm.warp(answerBy + 1);
        assertEq(slasher.slashUnanswered(id), 500e18, "one second later");
    }

    function test_slashUnanswered_revertsOnAnAnsweredChallenge() public {
        uint256 id = _challenge(_leaves[0]);
        vm.prank(node);
        slasher.answerChallenge(id, _leaves[0], _proof(0));
        vm.warp(slasher.getChallenge(id).answerBy + 1);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, id));
        slasher.slashUnanswered(id);
    }

    function test_slashUnanswered_revertsTwice() public {
        uint256 id = _challenge(_leaves[0]);
        vm.warp(slasher.getChallenge(id).answerBy + 1);
        slasher.slashUnanswered(id);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, id));
        slasher.slashUnanswered(id);
        assertEq(registry.getNode(node).stake, 500e18, "slashed once");
    }

    function test_slashUnanswered_revertsOnAnUnknownChallenge() public {
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, 0));
        slasher.slashUnanswered(0);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, 1));
        slasher.slashUnanswered(1);
    }

    function test_slashUnanswered_reachesStakeUnbondedAfterTheReceipt() public {
        // The node unbonds everything the moment it signs; the receipt is enforced before release.
        vm.prank(node);
        registry.unbond(NODE_STAKE);
        uint256 id = _challenge(makeLeaf(SESSION, 9, 0));
        vm.warp(slasher.getChallenge(id).answerBy + 1);
        assertTrue(block.timestamp <= registry.withdrawableAt(node), "still locked");
        assertEq(slasher.slashUnanswered(id), 500e18, "half of the unbonding stake");
        assertEq(registry.getNode(node).unbonding, 500e18, "unbonding left");
    }

    function test_slashUnanswered_splitsByBasisPointsWithoutABounty() public {
        Params memory p = defaultParams();
        p.bountyBps = 0;
        _setUpSystem(p, 1);
        fundChallenger(CHALLENGER, 1);
        uint256 id = _challenge(makeLeaf(SESSION, 9, 0));
        vm.warp(slasher.getChallenge(id).answerBy + 1);
        assertEq(slasher.slashUnanswered(id), 500e18, "slashed");
        assertEq(token.balanceOf(CHALLENGER), CHALLENGE_BOND, "only the bond back");
        assertEq(slasher.rewardPool(), 500e18, "all of it to the pool");
    }

    function test_slashUnanswered_endsTheChallengeOfANodeWithNoStakeLeft() public {
        // Two unanswered challenges; with slashBps 10000 the first takes everything. The second
        // slashes nothing but still ends, and the challenger gets its bond back.
        Params memory p = defaultParams();
        p.slashBps = 10_000;
        _setUpSystem(p, 1);
        fundChallenger(CHALLENGER, 2);
        uint256 first = _challenge(makeLeaf(SESSION, 9, 0));
        uint256 second = _challenge(makeLeaf(SESSION, 10, 0));
        vm.warp(slasher.getChallenge(second).answerBy + 1);
        assertEq(slasher.slashUnanswered(first), NODE_STAKE, "the first takes everything");
        assertEq(registry.slashableStake(node), 0, "nothing left");
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        uint256 poolBefore = slasher.rewardPool();

        vm.expectEmit(address(slasher));
        emit ISlasher.ReceiptChallengeSlashed(second, node, 0, 0);
        assertEq(slasher.slashUnanswered(second), 0, "nothing to take");

        assertEq(uint256(slasher.getChallenge(second).status), uint256(ISlasher.ChallengeStatus.Slashed), "ended");
        assertEq(token.balanceOf(CHALLENGER), challengerBefore + CHALLENGE_BOND, "the bond back, no bounty");
        assertEq(slasher.rewardPool(), poolBefore, "the pool unchanged");
        _assertBalanceIsPoolPlusBonds(0);
        vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherChallengeNotOpen.selector, second));
        slasher.slashUnanswered(second);
    }

    function test_slashUnanswered_endsTheChallengeOfAnUnregisteredSigner() public {
        // A key that never staked signs a receipt: the challenge ends with nothing taken and the
        // bond back, rather than locking the challenger's bond for good.
        address stranger = vm.addr(STRANGER_PK);
        ISlasher.Leaf memory leaf = makeLeaf(SESSION, 9, 0);
        vm.warp(_opensAt(T0));
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        uint256 id = claimAndChallenge(CHALLENGER, stranger, leaf, signReceipt(STRANGER_PK, leaf));
        vm.warp(slasher.getChallenge(id).answerBy + 1);
        assertEq(slasher.slashUnanswered(id), 0, "nothing to take");
        assertEq(uint256(slasher.getChallenge(id).status), uint256(ISlasher.ChallengeStatus.Slashed), "ended");
        assertEq(token.balanceOf(CHALLENGER), challengerBefore, "the bond back");
        _assertBalanceIsPoolPlusBonds(0);
    }

    // ---- the pot -----------------------------------------------------------------------------

    function test_rewardPool_plusTheOpenBondsIsTheBalance() public {
        uint256 answered = _challenge(_leaves[0]);
        uint256 unanswered = _challenge(makeLeaf(SESSION, 9, 0));
        _challenge(_leaves[2]);
        _assertBalanceIsPoolPlusBonds(3);
        vm.prank(node);
        slasher.answerChallenge(answered, _leaves[0], _proof(0));
        _assertBalanceIsPoolPlusBonds(2);
        vm.warp(slasher.getChallenge(unanswered).answerBy + 1);
        slasher.slashUnanswered(unanswered);
        _assertBalanceIsPoolPlusBonds(1);
        slasher.releaseRewardPool();
        assertEq(slasher.rewardPool(), 0, "released");
        _assertBalanceIsPoolPlusBonds(1);
    }

    // ---- views -------------------------------------------------------------------------------

    function test_getChallenge_isZeroForAnUnknownId() public view {
        ISlasher.ReceiptChallenge memory c = slasher.getChallenge(1);
        assertEq(c.node, address(0), "node");
        assertEq(c.challenger, address(0), "challenger");
        assertEq(c.leaf, bytes32(0), "leaf");
        assertEq(uint256(c.status), uint256(ISlasher.ChallengeStatus.None), "status");
        assertEq(slasher.challengeCount(), 0, "challengeCount");
    }
}

/// @title Receipt challenges without a bond: nothing to approve, nothing paid back.
contract SlasherReceiptChallengeNoBondTest is ReceiptChallengeSetup {
    function setUp() public {
        Params memory p = defaultParams();
        p.challengeBond = 0;
        _setUpSystem(p, 1);
        (ISlasher.Leaf[] memory leaves, bytes32[] memory hashes) = _threeLeaves();
        for (uint256 i = 0; i < leaves.length; ++i) {
            _leaves.push(leaves[i]);
        }
        _hashes = hashes;
        (_batchId, _header) = commitLeaves(node, hashes);
    }

    function test_challengeReceipt_takesNothingWithoutABond() public {
        uint256 id = _challenge(_leaves[0]);
        assertEq(token.balanceOf(address(slasher)), 0, "no bond held");
        vm.prank(node);
        slasher.answerChallenge(id, _leaves[0], _proof(0));
        assertEq(token.balanceOf(node), 0, "no bond paid");
        uint256 unanswered = _challenge(_leaves[1]);
        vm.warp(slasher.getChallenge(unanswered).answerBy + 1);
        assertEq(slasher.slashUnanswered(unanswered), 500e18, "slashed");
        assertEq(token.balanceOf(CHALLENGER), 100e18, "the bounty alone");
    }
}

/// @title Receipt challenge fuzz tests: the challenge period and any position of any batch.
contract SlasherReceiptChallengeFuzzTest is ReceiptChallengeSetup {
    function setUp() public {
        _setUpSystem(defaultParams(), 1);
        fundChallenger(CHALLENGER, 1);
    }

    function testFuzz_challengeReceipt_opensExactlyForThePeriod(uint256 at) public {
        ISlasher.Leaf memory leaf = makeLeaf(SESSION, 0, 0);
        bytes memory receipt = signReceipt(NODE_PK, leaf);
        at = bound(at, T0, T0 + 2 days);
        vm.warp(at);
        claimAndRoll(slasher.receiptDigest(leaf), only(CHALLENGER), SECRET);
        if (at < _opensAt(T0)) {
            vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherChallengeTooEarly.selector, _opensAt(T0)));
        } else if (at > _closesAt(T0)) {
            vm.expectRevert(abi.encodeWithSelector(ISlasher.SlasherChallengeTooLate.selector, _closesAt(T0)));
        }
        vm.prank(CHALLENGER);
        slasher.challengeReceipt(node, leaf, receipt, SECRET);
        bool open = at >= _opensAt(T0) && at <= _closesAt(T0);
        assertEq(slasher.challengeCount(), open ? 1 : 0, "opened only inside the period");
    }

    function testFuzz_answerChallenge_provesAnyPositionOfAnyBatch(uint256 count, uint256 index) public {
        count = bound(count, 1, 64);
        index = bound(index, 0, count - 1);
        bytes32[] memory hashes = new bytes32[](count);
        ISlasher.Leaf memory served;
        for (uint256 i = 0; i < count; ++i) {
            ISlasher.Leaf memory leaf = makeLeaf(SESSION, uint32(i), 0);
            hashes[i] = slasher.leafHash(leaf);
            if (i == index) served = leaf;
        }
        (uint256 batchId, ICommitments.BatchHeader memory header) = commitLeaves(node, hashes);
        uint256 id = _challenge(served);
        ISlasher.LeafProof memory proof = leafProof(batchId, header, hashes, index);
        if (count > 1) {
            ISlasher.LeafProof memory elsewhere = leafProof(batchId, header, hashes, index);
            elsewhere.leafIndex = uint32((index + 1) % count);
            vm.expectRevert(
                abi.encodeWithSelector(
                    ISlasher.SlasherInvalidProof.selector, batchId, elsewhere.leafIndex, hashes[index]
                )
            );
            slasher.answerChallenge(id, served, elsewhere);
        }
        slasher.answerChallenge(id, served, proof);
        assertEq(uint256(slasher.getChallenge(id).status), uint256(ISlasher.ChallengeStatus.Answered), "answered");
        assertEq(header.root, Merkle.root(hashes), "the committed root");
    }
}
