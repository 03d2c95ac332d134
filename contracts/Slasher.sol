// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {ICommitments} from "./interfaces/ICommitments.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {ISlasher} from "./interfaces/ISlasher.sol";
import {IVerifierRegistry} from "./interfaces/IVerifierRegistry.sol";
import {IndexedMerkle} from "./IndexedMerkle.sol";
import {SaltedEIP712} from "./SaltedEIP712.sol";

/// @title Slasher: takes a node's stake on evidence, pays the verifiers, pools the rest.
/// @notice The NodeRegistry's only slasher (fixed there at deployment). Holds only the reward
/// pool and the bonds of open receipt challenges: the token balance of this contract always
/// equals `rewardPool` plus `challengeBond` per open challenge, because bounties are paid out in
/// the same transaction as the slash. All parameters are fixed at deployment.
contract Slasher is ISlasher, SaltedEIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The EIP-712 type hash of a node's receipt for one leaf.
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 sessionId,bytes32 modelId,uint16 spanStart,uint16 spanEnd,uint32 step,uint32 tokens,"
        "bytes32 inputHash,bytes32 outputHash,bytes32 sketchHash,uint64 issuedAt)"
    );
    /// @notice The EIP-712 type hash of a verifier's verdict.
    bytes32 public constant VERDICT_TYPEHASH = keccak256("Verdict(address node,uint256 batchId,bytes32 leaf,uint8 reason)");
    /// @notice The EIP-712 type hash of a verifier's finding that a node withheld a sampled leaf.
    bytes32 public constant WITHHELD_TYPEHASH = keccak256("Withheld(address node,uint256 batchId,uint32 leafIndex)");

    uint256 private constant BPS = 10_000;

    INodeRegistry private immutable _registry;
    ICommitments private immutable _commitments;
    IVerifierRegistry private immutable _verifiers;
    IERC20 private immutable _token;
    uint8 private immutable _quorum;
    uint16 private immutable _slashBps;
    uint16 private immutable _bountyBps;
    uint64 private immutable _challengeWindow;
    address private immutable _rewardRecipient;
    uint64 private immutable _commitDeadline;
    uint64 private immutable _receiptChallengePeriod;
    uint64 private immutable _responseWindow;
    uint256 private immutable _challengeBond;

    mapping(address node => mapping(bytes32 leaf => bool)) private _slashedLeaves;
    mapping(bytes32 slot => bool) private _slashedSlots;
    mapping(uint256 batchId => mapping(uint32 leafIndex => bool)) private _withheldSlashed;
    mapping(bytes32 claimHash => uint256 blockNumber) private _claims;
    mapping(uint256 challengeId => ReceiptChallenge) private _challenges;
    mapping(address node => mapping(bytes32 leaf => bool)) private _challengedReceipts;
    uint256 private _challengeCount;
    uint256 private _rewardPool;

    /// @param registry_ The node registry; its `slasher()` must be this contract.
    /// @param commitments_ Where batches are committed; must follow `registry_`.
    /// @param verifiers_ Who may sign verdicts.
    /// @param p The parameters (`ISlasher.Params`): quorum at least 1, basis points at most
    /// 10000, the challenge window and commit deadline + receipt challenge period + response
    /// window each at most the registry's `unbondingDelay`, a non-zero reward recipient.
    /// @param domainSalt_ The EIP-712 domain's salt: a value no earlier deployment used (random).
    constructor(
        INodeRegistry registry_,
        ICommitments commitments_,
        IVerifierRegistry verifiers_,
        Params memory p,
        bytes32 domainSalt_
    ) SaltedEIP712("stakeswarm Slasher", "1", domainSalt_) {
        address registrySlasher = registry_.slasher();
        if (registrySlasher != address(this)) revert SlasherNotRegistrySlasher(registrySlasher);
        address commitmentsRegistry = address(commitments_.registry());
        if (commitmentsRegistry != address(registry_)) {
            revert SlasherRegistryMismatch(commitmentsRegistry, address(registry_));
        }
        if (p.quorum == 0) revert SlasherInvalidQuorum(p.quorum);
        if (p.slashBps > BPS) revert SlasherInvalidBps(p.slashBps);
        if (p.bountyBps > BPS) revert SlasherInvalidBps(p.bountyBps);
        uint64 unbondingDelay = registry_.unbondingDelay();
        if (p.challengeWindow > unbondingDelay) revert SlasherChallengeWindowTooLong(p.challengeWindow, unbondingDelay);
        // A receipt is enforceable until its deadline + period + response window: the stake that
        // backed it must not be withdrawable before (an unbond after the receipt waits the delay).
        uint64 receiptWindows = p.commitDeadline + p.receiptChallengePeriod + p.responseWindow;
        if (receiptWindows > unbondingDelay) revert SlasherReceiptWindowsTooLong(receiptWindows, unbondingDelay);
        if (p.rewardRecipient == address(0)) revert SlasherZeroRewardRecipient();

        _registry = registry_;
        _commitments = commitments_;
        _verifiers = verifiers_;
        _token = registry_.stakeToken();
        _quorum = p.quorum;
        _slashBps = p.slashBps;
        _bountyBps = p.bountyBps;
        _challengeWindow = p.challengeWindow;
        _rewardRecipient = p.rewardRecipient;
        _commitDeadline = p.commitDeadline;
        _receiptChallengePeriod = p.receiptChallengePeriod;
        _responseWindow = p.responseWindow;
        _challengeBond = p.challengeBond;
    }

    /// @inheritdoc ISlasher
    function claim(bytes32 claimed) external {
        if (_claims[claimed] != 0) revert SlasherClaimTaken(claimed);
        _claims[claimed] = block.number;
        emit SlashClaimed(claimed, msg.sender);
    }

    /// @inheritdoc ISlasher
    function slash(
        Leaf calldata leaf,
        LeafProof calldata proof,
        Reason reason,
        bytes[] calldata verdicts,
        bytes32 secret
    ) external nonReentrant returns (uint256 slashed) {
        _openBatch(proof.batchId, proof.header);
        bytes32 hash = _provenLeaf(leaf, proof);
        address node = proof.header.node;
        uint256 batchId = proof.batchId;
        if (reason != Reason.Mismatch && reason != Reason.Withheld) revert SlasherInvalidReason(uint8(reason));
        if (_slashedLeaves[node][hash]) revert SlasherAlreadySlashed(hash);
        // the position is proven, so a position already slashed as withheld is not slashed again
        if (_withheldSlashed[batchId][proof.leafIndex]) {
            revert SlasherWithheldAlreadySlashed(batchId, proof.leafIndex);
        }
        address[] memory signers = _claimedSigners(verdictDigest(node, batchId, hash, reason), verdicts, secret);
        uint256 amount = _slashAmount(node);

        _slashedLeaves[node][hash] = true;
        _withheldSlashed[batchId][proof.leafIndex] = true;
        uint256 bountyPerVerifier;
        (slashed, bountyPerVerifier) = _takeStake(node, amount);
        emit LeafSlashed(node, batchId, hash, reason, slashed, bountyPerVerifier);

        _payBounties(signers, bountyPerVerifier);
    }

    /// @inheritdoc ISlasher
    function slashWithheld(
        uint256 batchId,
        ICommitments.BatchHeader calldata header,
        uint32 leafIndex,
        bytes[] calldata verdicts,
        bytes32 secret
    ) external nonReentrant returns (uint256 slashed) {
        _openBatch(batchId, header);
        if (leafIndex >= header.leafCount) revert SlasherLeafIndexOutOfRange(batchId, leafIndex, header.leafCount);
        if (_withheldSlashed[batchId][leafIndex]) revert SlasherWithheldAlreadySlashed(batchId, leafIndex);
        address node = header.node;
        address[] memory signers = _claimedSigners(withheldDigest(node, batchId, leafIndex), verdicts, secret);
        uint256 amount = _slashAmount(node);

        _withheldSlashed[batchId][leafIndex] = true;
        uint256 bountyPerVerifier;
        (slashed, bountyPerVerifier) = _takeStake(node, amount);
        emit LeafWithheldSlashed(node, batchId, leafIndex, slashed, bountyPerVerifier);

        _payBounties(signers, bountyPerVerifier);
    }

    /// @inheritdoc ISlasher
    /// @dev The slot key is keccak256(abi.encode(node, sessionId, modelId, spanStart, spanEnd, step)).
    /// Receipts need not be committed: signing two is the offence.
    function slashEquivocation(
        address node,
        Leaf calldata a,
        bytes calldata receiptA,
        Leaf calldata b,
        bytes calldata receiptB,
        bytes32 secret
    ) external nonReentrant returns (uint256 slashed) {
        if (
            a.sessionId != b.sessionId || a.modelId != b.modelId || a.spanStart != b.spanStart
                || a.spanEnd != b.spanEnd || a.step != b.step || leafHash(a) == leafHash(b)
        ) revert SlasherNotEquivocation();
        _checkReceipt(node, a, receiptA);
        _checkReceipt(node, b, receiptB);
        bytes32 key = keccak256(abi.encode(node, a.sessionId, a.modelId, a.spanStart, a.spanEnd, a.step));
        if (_slashedSlots[key]) revert SlasherAlreadySlashed(key);
        address[] memory reporter = new address[](1);
        reporter[0] = msg.sender;
        _useClaim(claimHash(equivocationEvidence(node, a, b), reporter, secret));
        uint256 amount = _slashAmount(node);

        _slashedSlots[key] = true;
        // slither-disable-next-line reentrancy-benign (the registry is fixed and trusted; nonReentrant)
        slashed = _registry.slash(node, amount, address(this));
        // bountyBps <= BPS, so bounty <= slashed.
        uint256 bounty = slashed * _bountyBps / BPS;
        _rewardPool += slashed - bounty;
        emit EquivocationSlashed(node, a.sessionId, a.step, msg.sender, slashed, bounty);

        if (bounty != 0) _token.safeTransfer(msg.sender, bounty);
    }

    /// @inheritdoc ISlasher
    function challengeReceipt(address node, Leaf calldata leaf, bytes calldata receipt, bytes32 secret)
        external
        nonReentrant
        returns (uint256 challengeId)
    {
        _checkReceipt(node, leaf, receipt);
        // strictly after the deadline: a commit in the deadline's second still counts as in time
        uint64 deadline = leaf.issuedAt + _commitDeadline;
        if (block.timestamp <= deadline) revert SlasherChallengeTooEarly(deadline + 1);
        uint64 closedAt = deadline + _receiptChallengePeriod;
        if (block.timestamp > closedAt) revert SlasherChallengeTooLate(closedAt);
        bytes32 hash = leafHash(leaf);
        if (_challengedReceipts[node][hash]) revert SlasherReceiptAlreadyChallenged(node, hash);
        address[] memory challenger = new address[](1);
        challenger[0] = msg.sender;
        _useClaim(claimHash(receiptDigest(leaf), challenger, secret));

        _challengedReceipts[node][hash] = true;
        challengeId = ++_challengeCount;
        uint64 answerBy = uint64(block.timestamp) + _responseWindow;
        _challenges[challengeId] = ReceiptChallenge({
            node: node,
            issuedAt: leaf.issuedAt,
            status: ChallengeStatus.Open,
            challenger: msg.sender,
            answerBy: answerBy,
            leaf: hash
        });
        emit ReceiptChallenged(challengeId, node, msg.sender, hash, answerBy);

        if (_challengeBond != 0) _token.safeTransferFrom(msg.sender, address(this), _challengeBond);
    }

    /// @inheritdoc ISlasher
    /// @dev The challenge window of the batch does not matter: an old batch still shows the leaf
    /// was committed (and was auditable) in time.
    function answerChallenge(uint256 challengeId, Leaf calldata leaf, LeafProof calldata proof)
        external
        nonReentrant
    {
        ReceiptChallenge storage c = _challenges[challengeId];
        if (c.status != ChallengeStatus.Open) revert SlasherChallengeNotOpen(challengeId);
        if (block.timestamp > c.answerBy) revert SlasherAnswerTooLate(challengeId, c.answerBy);
        bytes32 hash = leafHash(leaf);
        if (hash != c.leaf) revert SlasherWrongLeaf(challengeId, hash);
        address node = c.node;
        if (proof.header.node != node) revert SlasherNotTheNodesBatch(proof.batchId, node);
        _commitments.checkBatch(proof.batchId, proof.header);
        uint64 deadline = leaf.issuedAt + _commitDeadline;
        if (proof.header.committedAt > deadline) {
            revert SlasherCommittedTooLate(proof.batchId, proof.header.committedAt, deadline);
        }
        _provenLeaf(leaf, proof);

        c.status = ChallengeStatus.Answered;
        emit ReceiptChallengeAnswered(challengeId, node, proof.batchId, proof.leafIndex);

        if (_challengeBond != 0) _token.safeTransfer(node, _challengeBond);
    }

    /// @inheritdoc ISlasher
    function slashUnanswered(uint256 challengeId) external nonReentrant returns (uint256 slashed) {
        ReceiptChallenge storage c = _challenges[challengeId];
        if (c.status != ChallengeStatus.Open) revert SlasherChallengeNotOpen(challengeId);
        if (block.timestamp <= c.answerBy) revert SlasherChallengeStillOpen(challengeId, c.answerBy);
        address node = c.node;
        address challenger = c.challenger;
        // may be zero (a node with nothing left): the challenge still ends and the bond goes back
        uint256 amount = _registry.slashableStake(node) * _slashBps / BPS;

        c.status = ChallengeStatus.Slashed;
        // slither-disable-next-line reentrancy-benign (the registry is fixed and trusted; nonReentrant)
        slashed = _registry.slash(node, amount, address(this));
        // bountyBps <= BPS, so bounty <= slashed.
        uint256 bounty = slashed * _bountyBps / BPS;
        _rewardPool += slashed - bounty;
        emit ReceiptChallengeSlashed(challengeId, node, slashed, bounty);

        _token.safeTransfer(challenger, bounty + _challengeBond);
    }

    /// @inheritdoc ISlasher
    function getChallenge(uint256 challengeId) external view returns (ReceiptChallenge memory) {
        return _challenges[challengeId];
    }

    /// @inheritdoc ISlasher
    function challengeCount() external view returns (uint256) {
        return _challengeCount;
    }

    /// @inheritdoc ISlasher
    function isReceiptChallenged(address node, bytes32 leaf) external view returns (bool) {
        return _challengedReceipts[node][leaf];
    }

    /// @inheritdoc ISlasher
    function releaseRewardPool() external nonReentrant returns (uint256 amount) {
        amount = _rewardPool;
        if (amount == 0) revert SlasherEmptyRewardPool();

        _rewardPool = 0;
        emit RewardPoolReleased(_rewardRecipient, amount);

        _token.safeTransfer(_rewardRecipient, amount);
    }

    /// @inheritdoc ISlasher
    function leafHash(Leaf calldata leaf) public pure returns (bytes32) {
        // A static struct ABI-encodes as its fields in order.
        return keccak256(abi.encode(leaf));
    }

    /// @inheritdoc ISlasher
    function receiptDigest(Leaf calldata leaf) public view returns (bytes32) {
        return _hashTypedData(keccak256(abi.encode(RECEIPT_TYPEHASH, leaf)));
    }

    /// @inheritdoc ISlasher
    function verdictDigest(address node, uint256 batchId, bytes32 leaf, Reason reason) public view returns (bytes32) {
        return _hashTypedData(keccak256(abi.encode(VERDICT_TYPEHASH, node, batchId, leaf, uint8(reason))));
    }

    /// @inheritdoc ISlasher
    function withheldDigest(address node, uint256 batchId, uint32 leafIndex) public view returns (bytes32) {
        return _hashTypedData(keccak256(abi.encode(WITHHELD_TYPEHASH, node, batchId, leafIndex)));
    }

    /// @inheritdoc ISlasher
    function equivocationEvidence(address node, Leaf calldata a, Leaf calldata b) public pure returns (bytes32) {
        return keccak256(abi.encode(node, leafHash(a), leafHash(b)));
    }

    /// @inheritdoc ISlasher
    function claimHash(bytes32 evidence, address[] memory beneficiaries, bytes32 secret) public pure returns (bytes32) {
        return keccak256(abi.encode(evidence, beneficiaries, secret));
    }

    /// @inheritdoc ISlasher
    function claimedAt(bytes32 claimed) external view returns (uint256) {
        return _claims[claimed];
    }

    /// @inheritdoc ISlasher
    /// @dev False for a batch that does not exist or a header that is not the batch's.
    function verifyLeaf(Leaf calldata leaf, LeafProof calldata proof) external view returns (bool) {
        bytes32 stored = _commitments.batchHash(proof.batchId);
        if (stored == bytes32(0) || stored != keccak256(abi.encode(proof.header))) return false;
        return leaf.modelId == proof.header.modelId
            && IndexedMerkle.verify(
                proof.siblings, proof.header.root, leafHash(leaf), proof.leafIndex, proof.header.leafCount
            );
    }

    /// @inheritdoc ISlasher
    function isLeafSlashed(address node, bytes32 leaf) external view returns (bool) {
        return _slashedLeaves[node][leaf];
    }

    /// @inheritdoc ISlasher
    function isWithheldSlashed(uint256 batchId, uint32 leafIndex) external view returns (bool) {
        return _withheldSlashed[batchId][leafIndex];
    }

    /// @inheritdoc ISlasher
    function rewardPool() external view returns (uint256) {
        return _rewardPool;
    }

    /// @inheritdoc ISlasher
    function registry() external view returns (INodeRegistry) {
        return _registry;
    }

    /// @inheritdoc ISlasher
    function commitments() external view returns (ICommitments) {
        return _commitments;
    }

    /// @inheritdoc ISlasher
    function verifiers() external view returns (IVerifierRegistry) {
        return _verifiers;
    }

    /// @inheritdoc ISlasher
    function quorum() external view returns (uint8) {
        return _quorum;
    }

    /// @inheritdoc ISlasher
    function slashBps() external view returns (uint16) {
        return _slashBps;
    }

    /// @inheritdoc ISlasher
    function bountyBps() external view returns (uint16) {
        return _bountyBps;
    }

    /// @inheritdoc ISlasher
    function challengeWindow() external view returns (uint64) {
        return _challengeWindow;
    }

    /// @inheritdoc ISlasher
    function rewardRecipient() external view returns (address) {
        return _rewardRecipient;
    }

    /// @inheritdoc ISlasher
    function commitDeadline() external view returns (uint64) {
        return _commitDeadline;
    }

    /// @inheritdoc ISlasher
    function receiptChallengePeriod() external view returns (uint64) {
        return _receiptChallengePeriod;
    }

    /// @inheritdoc ISlasher
    function responseWindow() external view returns (uint64) {
        return _responseWindow;
    }

    /// @inheritdoc ISlasher
    function challengeBond() external view returns (uint256) {
        return _challengeBond;
    }

    /// @dev Reverts unless `header` is batch `batchId`'s and the batch is inside its challenge window.
    function _openBatch(uint256 batchId, ICommitments.BatchHeader calldata header) private view {
        bytes32 stored = _commitments.batchHash(batchId);
        if (stored == bytes32(0)) revert SlasherUnknownBatch(batchId);
        if (stored != keccak256(abi.encode(header))) revert SlasherHeaderMismatch(batchId);
        uint64 closedAt = header.committedAt + _challengeWindow;
        if (block.timestamp > closedAt) revert SlasherChallengeWindowClosed(batchId, closedAt);
    }

    /// @dev Checks that `leaf` is of the batch's model and lies at `proof.leafIndex` (below the
    /// batch's `leafCount`) under the root of `proof.header` (the caller checked the header);
    /// returns the leaf hash.
    function _provenLeaf(Leaf calldata leaf, LeafProof calldata proof) private pure returns (bytes32 hash) {
        ICommitments.BatchHeader calldata header = proof.header;
        if (leaf.modelId != header.modelId) revert SlasherModelMismatch(leaf.modelId, header.modelId);
        hash = leafHash(leaf);
        if (!IndexedMerkle.verify(proof.siblings, header.root, hash, proof.leafIndex, header.leafCount)) {
            revert SlasherInvalidProof(proof.batchId, proof.leafIndex, hash);
        }
    }

    /// @dev The signers of exactly `quorum` verdicts over `digest` (each an active verifier, in
    /// strictly increasing order, so distinct), after using their matured claim.
    function _claimedSigners(bytes32 digest, bytes[] calldata verdicts, bytes32 secret)
        private
        returns (address[] memory signers)
    {
        uint256 count = verdicts.length;
        if (count != _quorum) revert SlasherWrongVerdictCount(count, _quorum);
        signers = new address[](count);
        address previous = address(0);
        for (uint256 i = 0; i < count; ++i) {
            // slither-disable-next-line unused-return (only the error's argument is dropped)
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, verdicts[i]);
            if (err != ECDSA.RecoverError.NoError) revert SlasherInvalidVerdictSignature(i);
            // slither-disable-next-line calls-loop (a view of the fixed registry; quorum-bounded)
            if (!_verifiers.isActive(signer)) revert SlasherNotAVerifier(signer);
            if (signer <= previous) revert SlasherVerdictSignersNotSorted(previous, signer);
            signers[i] = signer;
            previous = signer;
        }
        _useClaim(claimHash(digest, signers, secret));
    }

    /// @dev Consumes `claimHash_`, which must have been claimed in an earlier block.
    function _useClaim(bytes32 claimHash_) private {
        uint256 claimedBlock = _claims[claimHash_];
        // slither-disable-next-line incorrect-equality (zero: never claimed)
        if (claimedBlock == 0 || claimedBlock >= block.number) revert SlasherClaimNotMatured(claimHash_);
        delete _claims[claimHash_];
    }

    /// @dev Reverts unless `signature` is `node`'s valid receipt for `leaf`.
    function _checkReceipt(address node, Leaf calldata leaf, bytes calldata signature) private view {
        // slither-disable-next-line unused-return (only the error's argument is dropped)
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(receiptDigest(leaf), signature);
        if (err != ECDSA.RecoverError.NoError || signer != node) revert SlasherInvalidReceiptSignature(signer, node);
    }

    /// @dev Takes `amount` of `node`'s stake into this contract and pools what the `quorum`
    /// verdict signers are not paid; returns what was taken and each signer's bounty (the caller
    /// pays them with `_payBounties` after its event).
    function _takeStake(address node, uint256 amount) private returns (uint256 slashed, uint256 bountyPerVerifier) {
        // slither-disable-next-line reentrancy-benign (the registry is fixed and trusted; nonReentrant)
        slashed = _registry.slash(node, amount, address(this));
        // quorum >= 1; the bounty is at most `slashed` since bountyBps <= BPS.
        bountyPerVerifier = slashed * _bountyBps / BPS / _quorum;
        // slither-disable-next-line divide-before-multiply (the rounding remainder goes to the pool)
        _rewardPool += slashed - bountyPerVerifier * _quorum;
    }

    /// @dev Pays each of `signers` its bounty (the interactions, after the slash's event).
    function _payBounties(address[] memory signers, uint256 bountyPerVerifier) private {
        if (bountyPerVerifier == 0) return;
        for (uint256 i = 0; i < signers.length; ++i) {
            _token.safeTransfer(signers[i], bountyPerVerifier);
        }
    }

    /// @dev `slashBps` of the node's active + unbonding stake; reverts if that is zero.
    function _slashAmount(address node) private view returns (uint256 amount) {
        amount = _registry.slashableStake(node) * _slashBps / BPS;
        if (amount == 0) revert SlasherNothingToSlash(node);
    }
}
