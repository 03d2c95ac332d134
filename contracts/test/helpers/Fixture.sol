// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Commitments} from "../../Commitments.sol";
import {NodeRegistry} from "../../NodeRegistry.sol";
import {Slasher} from "../../Slasher.sol";
import {StakeToken} from "../../StakeToken.sol";
import {VerifierRegistry} from "../../VerifierRegistry.sol";
import {ICommitments} from "../../interfaces/ICommitments.sol";
import {ISlasher} from "../../interfaces/ISlasher.sol";

import {Merkle} from "./Merkle.sol";
import {TestBase} from "./TestBase.sol";

/// @title SystemFixture: deploys the whole system the way the Python deployer does.
/// @notice Order: token, VerifierRegistry, NodeRegistry (it names the predicted CREATE addresses
/// of the Commitments, next, and of the Slasher, two deployments later), Commitments, Slasher.
/// (The Python deployer puts PaymentChannels between Commitments and Slasher; no test here needs
/// channels next to the rest of the system.)
/// The test contract holds the whole token supply and funds actors from it.
abstract contract SystemFixture is TestBase {
    /// @notice Deployment parameters of one system.
    struct Params {
        uint256 minStakePerBlock;
        uint64 unbondingDelay;
        uint256 verifierMinStake;
        uint64 verifierUnbondingDelay;
        uint8 quorum;
        uint16 slashBps;
        uint16 bountyBps;
        uint64 challengeWindow;
        address rewardRecipient;
        bytes32 domainSalt; // the Slasher's EIP-712 domain salt
        uint32 maxLeaves; // the most leaves one batch may hold
        uint64 commitDeadline; // seconds after a receipt's issuedAt by which its leaf is committed
        uint64 receiptChallengePeriod; // seconds after the commit deadline a receipt may be challenged
        uint64 responseWindow; // seconds a node has to answer a receipt challenge
        uint256 challengeBond; // what a challenger puts up
    }

    uint256 internal constant SUPPLY = 1_000_000_000e18;
    bytes32 internal constant MODEL = keccak256("SmolLM2-135M-Instruct");
    bytes internal constant PEER_ID = hex"0024080112203f6b1b6a8c3b0e5e3b9f0c1a2d4e5f60718293a4b5c6d7e8f9";
    address internal constant REWARD_RECIPIENT = address(0x7E5E);
    bytes32 internal constant DOMAIN_SALT = keccak256("stakeswarm test deployment");
    uint32 internal constant MAX_LEAVES = 4096;
    /// @dev The secret a claim hides until its slash reveals it.
    bytes32 internal constant SECRET = keccak256("claim secret");
    /// @dev When the receipts of `makeLeaf(sessionId, step, salt)` are issued (SlasherSetup's start).
    uint64 internal constant ISSUED_AT = 1_700_000_000;
    uint64 internal constant COMMIT_DEADLINE = 2 hours;
    uint64 internal constant RECEIPT_CHALLENGE_PERIOD = 1 days;
    uint64 internal constant RESPONSE_WINDOW = 6 hours;
    uint256 internal constant CHALLENGE_BOND = 1e18;

    StakeToken internal token;
    VerifierRegistry internal verifierRegistry;
    NodeRegistry internal registry;
    Commitments internal commitments;
    Slasher internal slasher;

    function defaultParams() internal pure returns (Params memory) {
        return Params({
            minStakePerBlock: 100e18,
            unbondingDelay: 7 days,
            verifierMinStake: 1_000e18,
            verifierUnbondingDelay: 7 days,
            quorum: 1,
            slashBps: 5_000,
            bountyBps: 2_000,
            challengeWindow: 3 days,
            rewardRecipient: REWARD_RECIPIENT,
            domainSalt: DOMAIN_SALT,
            maxLeaves: MAX_LEAVES,
            commitDeadline: COMMIT_DEADLINE,
            receiptChallengePeriod: RECEIPT_CHALLENGE_PERIOD,
            responseWindow: RESPONSE_WINDOW,
            challengeBond: CHALLENGE_BOND
        });
    }

    function deploySystem(Params memory p) internal {
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        verifierRegistry = new VerifierRegistry(token, p.verifierMinStake, p.verifierUnbondingDelay);
        (address predictedCommitments, address predictedSlasher) = predictNextPair();
        registry =
            new NodeRegistry(token, p.minStakePerBlock, p.unbondingDelay, predictedCommitments, predictedSlasher);
        commitments = new Commitments(registry, p.maxLeaves);
        slasher = new Slasher(registry, commitments, verifierRegistry, slasherParams(p), p.domainSalt);
        require(address(commitments) == predictedCommitments, "fixture: commitments address prediction");
        require(address(slasher) == predictedSlasher, "fixture: slasher address prediction");
    }

    /// @notice The Slasher's share of `p`.
    function slasherParams(Params memory p) internal pure returns (ISlasher.Params memory) {
        return ISlasher.Params({
            quorum: p.quorum,
            slashBps: p.slashBps,
            bountyBps: p.bountyBps,
            challengeWindow: p.challengeWindow,
            rewardRecipient: p.rewardRecipient,
            commitDeadline: p.commitDeadline,
            receiptChallengePeriod: p.receiptChallengePeriod,
            responseWindow: p.responseWindow,
            challengeBond: p.challengeBond
        });
    }

    /// @notice Where the Commitments and the Slasher land when the next deployment of this
    /// contract is a NodeRegistry, then a Commitments, then a Slasher.
    function predictNextPair() internal view returns (address commitments_, address slasher_) {
        uint256 nonce = vm.getNonce(address(this));
        commitments_ = vm.computeCreateAddress(address(this), nonce + 1);
        slasher_ = vm.computeCreateAddress(address(this), nonce + 2);
    }

    /// @notice Fund `node`, approve and register it for `[spanStart, spanEnd)` of MODEL.
    function registerNode(address node, uint16 spanStart, uint16 spanEnd, uint256 stake) internal {
        token.transfer(node, stake);
        vm.startPrank(node);
        token.approve(address(registry), stake);
        registry.register(MODEL, spanStart, spanEnd, 1e12, PEER_ID, stake);
        vm.stopPrank();
    }

    /// @notice Fund, approve and register `verifier` with `stake`.
    function registerVerifier(address verifier, uint256 stake) internal {
        token.transfer(verifier, stake);
        vm.startPrank(verifier);
        token.approve(address(verifierRegistry), stake);
        verifierRegistry.register(stake);
        vm.stopPrank();
    }

    /// @notice `node` commits the Merkle root of `leaves`; returns the batch id and its header
    /// (as the `BatchCommitted` event tells it).
    function commitLeaves(address node, bytes32[] memory leaves)
        internal
        returns (uint256 batchId, ICommitments.BatchHeader memory header)
    {
        return commitRoot(node, Merkle.root(leaves), uint32(leaves.length));
    }

    /// @notice `node` commits `root` over `leafCount` leaves of MODEL; returns the batch id and its header.
    function commitRoot(address node, bytes32 root, uint32 leafCount)
        internal
        returns (uint256 batchId, ICommitments.BatchHeader memory header)
    {
        vm.prank(node);
        batchId = commitments.commit(MODEL, root, leafCount);
        header = ICommitments.BatchHeader({
            node: node,
            modelId: MODEL,
            root: root,
            leafCount: leafCount,
            committedAt: uint64(block.timestamp)
        });
    }

    /// @notice The proof of leaf `index` of `hashes`, committed as batch `batchId` with `header`.
    function leafProof(
        uint256 batchId,
        ICommitments.BatchHeader memory header,
        bytes32[] memory hashes,
        uint256 index
    ) internal pure returns (ISlasher.LeafProof memory) {
        return ISlasher.LeafProof({
            batchId: batchId,
            header: header,
            leafIndex: uint32(index),
            siblings: Merkle.proof(hashes, index)
        });
    }

    /// @notice A leaf of session `sessionId` at `step` over blocks [0, 8) of MODEL, its receipt
    /// issued at `ISSUED_AT`; `salt` varies its content.
    function makeLeaf(bytes32 sessionId, uint32 step, uint256 salt) internal pure returns (ISlasher.Leaf memory) {
        return makeLeaf(sessionId, step, salt, ISSUED_AT);
    }

    /// @notice As `makeLeaf(sessionId, step, salt)`, its receipt issued at `issuedAt`.
    function makeLeaf(bytes32 sessionId, uint32 step, uint256 salt, uint64 issuedAt)
        internal
        pure
        returns (ISlasher.Leaf memory)
    {
        return ISlasher.Leaf({
            sessionId: sessionId,
            modelId: MODEL,
            spanStart: 0,
            spanEnd: 8,
            step: step,
            tokens: 3,
            inputHash: keccak256(abi.encode("input", sessionId, step, salt)),
            outputHash: keccak256(abi.encode("output", sessionId, step, salt)),
            sketchHash: keccak256(abi.encode("sketch", sessionId, step, salt)),
            issuedAt: issuedAt
        });
    }

    function signVerdict(uint256 privateKey, address node, uint256 batchId, bytes32 leaf, ISlasher.Reason reason)
        internal
        view
        returns (bytes memory)
    {
        return sign(privateKey, slasher.verdictDigest(node, batchId, leaf, reason));
    }

    function signWithheld(uint256 privateKey, address node, uint256 batchId, uint32 leafIndex)
        internal
        view
        returns (bytes memory)
    {
        return sign(privateKey, slasher.withheldDigest(node, batchId, leafIndex));
    }

    function signReceipt(uint256 privateKey, ISlasher.Leaf memory leaf) internal view returns (bytes memory) {
        return sign(privateKey, slasher.receiptDigest(leaf));
    }

    // ---- claims ------------------------------------------------------------------------------

    /// @notice The addresses of `keys`, in order: the beneficiaries of verdicts signed by them.
    function addressesOf(uint256[] memory keys) internal pure returns (address[] memory signers) {
        signers = new address[](keys.length);
        for (uint256 i = 0; i < keys.length; ++i) {
            signers[i] = vm.addr(keys[i]);
        }
    }

    /// @notice One beneficiary (the equivocation reporter).
    function only(address beneficiary) internal pure returns (address[] memory beneficiaries) {
        beneficiaries = new address[](1);
        beneficiaries[0] = beneficiary;
    }

    /// @notice Claims `claimHash(evidence, beneficiaries, secret)` and mines one block, so the
    /// claim is mature for the slash that follows.
    function claimAndRoll(bytes32 evidence, address[] memory beneficiaries, bytes32 secret) internal {
        slasher.claim(slasher.claimHash(evidence, beneficiaries, secret));
        vm.roll(block.number + 1);
    }

    /// @notice Claims, mines a block and slashes `leaf`, proven by `proof`, with the verdicts of
    /// `keys` (sorted by address); returns what was slashed.
    function claimAndSlash(
        ISlasher.Leaf memory leaf,
        ISlasher.LeafProof memory proof,
        ISlasher.Reason reason,
        uint256[] memory keys
    ) internal returns (uint256) {
        bytes32 digest = slasher.verdictDigest(proof.header.node, proof.batchId, keccak256(abi.encode(leaf)), reason);
        bytes[] memory verdicts = new bytes[](keys.length);
        for (uint256 i = 0; i < keys.length; ++i) {
            verdicts[i] = sign(keys[i], digest);
        }
        claimAndRoll(digest, addressesOf(keys), SECRET);
        return slasher.slash(leaf, proof, reason, verdicts, SECRET);
    }

    /// @notice Claims, mines a block and slashes position `leafIndex` of batch `batchId` as
    /// withheld with the verdicts of `keys` (sorted by address); returns what was slashed.
    function claimAndSlashWithheld(
        uint256 batchId,
        ICommitments.BatchHeader memory header,
        uint32 leafIndex,
        uint256[] memory keys
    ) internal returns (uint256) {
        bytes32 digest = slasher.withheldDigest(header.node, batchId, leafIndex);
        bytes[] memory verdicts = new bytes[](keys.length);
        for (uint256 i = 0; i < keys.length; ++i) {
            verdicts[i] = sign(keys[i], digest);
        }
        claimAndRoll(digest, addressesOf(keys), SECRET);
        return slasher.slashWithheld(batchId, header, leafIndex, verdicts, SECRET);
    }

    /// @notice `reporter` claims, a block is mined, and `reporter` reports the equivocation.
    function claimAndSlashEquivocation(
        address reporter,
        address node,
        ISlasher.Leaf memory a,
        bytes memory receiptA,
        ISlasher.Leaf memory b,
        bytes memory receiptB
    ) internal returns (uint256) {
        claimAndRoll(slasher.equivocationEvidence(node, a, b), only(reporter), SECRET);
        vm.prank(reporter);
        return slasher.slashEquivocation(node, a, receiptA, b, receiptB, SECRET);
    }

    /// @notice Funds `challenger` with `bonds` challenge bonds and approves the Slasher for them.
    function fundChallenger(address challenger, uint256 bonds) internal {
        uint256 amount = bonds * slasher.challengeBond();
        token.transfer(challenger, amount);
        vm.prank(challenger);
        token.approve(address(slasher), amount);
    }

    /// @notice `challenger` claims the receipt digest of `leaf`, a block is mined, and
    /// `challenger` challenges `node`'s `receipt` (its bond approved before); returns the id.
    function claimAndChallenge(address challenger, address node, ISlasher.Leaf memory leaf, bytes memory receipt)
        internal
        returns (uint256)
    {
        claimAndRoll(slasher.receiptDigest(leaf), only(challenger), SECRET);
        vm.prank(challenger);
        return slasher.challengeReceipt(node, leaf, receipt, SECRET);
    }
}
