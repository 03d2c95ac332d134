// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ICommitments} from "./ICommitments.sol";
import {INodeRegistry} from "./INodeRegistry.sol";
import {IVerifierRegistry} from "./IVerifierRegistry.sol";

/// @title Slasher: the only way stake leaves a node against its will.
/// @notice Four rules; the first two against a batch given by its id and its header (checked
/// against the hash `ICommitments` stored). (1) A quorum of active verifiers signs an EIP-712
/// `Verdict(address node,uint256 batchId,bytes32 leaf,uint8 reason)` against a leaf proven
/// (`IndexedMerkle`, at its position) under a root the node committed, within the challenge
/// window.
/// (2) A quorum of active verifiers signs an EIP-712
/// `Withheld(address node,uint256 batchId,uint32 leafIndex)`: each asked the node to reveal
/// leaf `leafIndex` of a batch it committed and got no usable answer before its deadline. No
/// leaf is shown (only the node has it): the rule rests on the quorum's word, within the
/// challenge window. (3) Anyone shows two EIP-712 `Receipt`s signed by one node for the same
/// (sessionId, modelId, spanStart, spanEnd, step) with different content (equivocation).
/// (4) A receipt holder challenges a receipt after its commit deadline and the node does not
/// prove, within the response window, that it committed the leaf by that deadline.
/// EIP-712 domain: name "stakeswarm Slasher", version "1", and the deployment's salt (see
/// `SaltedEIP712`), so receipts and verdicts of another deployment never count here.
/// A slash takes `slashBps` of the node's active + unbonding stake; `bountyBps` of that goes to
/// the verifiers of the quorum (or the equivocation reporter), the rest to the reward pool,
/// which anyone may release to the `rewardRecipient` fixed at deployment.
/// Every slash needs exactly `quorum` verdicts and a matured claim: whoever will be paid first
/// `claim`s `claimHash(evidence, beneficiaries, secret)` (a hash that shows nothing), and the
/// slash, in a later block, reveals the evidence and the secret. The bounty goes to the
/// beneficiaries bound in the claim, so copying a pending slash's evidence from the mempool pays
/// the copier nothing: its own claim would mature only after the original slash has landed.
interface ISlasher {
    /// @notice What a node commits per served step (DESIGN.md "Commitments"); also the body of
    /// the EIP-712 `Receipt(bytes32 sessionId,bytes32 modelId,uint16 spanStart,uint16 spanEnd,
    /// uint32 step,uint32 tokens,bytes32 inputHash,bytes32 outputHash,bytes32 sketchHash,
    /// uint64 issuedAt)`. A signed receipt is an obligation: the node commits its leaf by
    /// `issuedAt + commitDeadline`, and proves it on demand (`challengeReceipt`).
    struct Leaf {
        bytes32 sessionId;
        bytes32 modelId;
        uint16 spanStart;
        uint16 spanEnd;
        uint32 step;
        uint32 tokens;
        bytes32 inputHash; // keccak256 of the exact input tensor bytes
        bytes32 outputHash; // keccak256 of the exact output tensor bytes
        bytes32 sketchHash; // keccak256 of the encoded output sketch
        uint64 issuedAt; // unix seconds the node signed the receipt: its commit deadline counts from here
    }

    /// @notice Where a leaf sits: its batch (id and header) and its position, proven by the
    /// siblings of an `IndexedMerkle` proof.
    struct LeafProof {
        uint256 batchId;
        ICommitments.BatchHeader header;
        uint32 leafIndex;
        bytes32[] siblings;
    }

    /// @notice The Slasher's parameters, fixed at deployment.
    struct Params {
        uint8 quorum; // verdicts per slash (at least 1)
        uint16 slashBps; // share of a node's active + unbonding stake one slash takes
        uint16 bountyBps; // share of a slash paid to its verifiers, reporter or challenger
        uint64 challengeWindow; // seconds after a commit during which its leaves may be slashed
        address rewardRecipient; // receives the reward pool
        uint64 commitDeadline; // seconds after a receipt's issuedAt by which its leaf is committed
        uint64 receiptChallengePeriod; // seconds after the commit deadline a receipt may be challenged
        uint64 responseWindow; // seconds a node has to answer a receipt challenge
        uint256 challengeBond; // stake tokens a challenger puts up; the node gets them if it answers
    }

    /// @notice Where a receipt challenge stands.
    enum ChallengeStatus {
        None,
        Open,
        Answered,
        Slashed
    }

    /// @notice A receipt holder's demand that `node` prove it committed the leaf `leaf`.
    struct ReceiptChallenge {
        address node;
        uint64 issuedAt; // the receipt's
        ChallengeStatus status; // packed with `node` and `issuedAt`: one slot
        address challenger; // paid the bounty if the node does not answer
        uint64 answerBy; // the node answers until this time (inclusive)
        bytes32 leaf; // the leaf hash
    }

    /// @notice Why verifiers found a leaf guilty.
    enum Reason {
        None,
        Mismatch, // recomputation disagrees with the committed sketch
        Withheld // the node did not reveal the inputs before the deadline
    }

    event LeafSlashed(
        address indexed node,
        uint256 indexed batchId,
        bytes32 indexed leaf,
        Reason reason,
        uint256 amount,
        uint256 bountyPerVerifier
    );
    /// @notice A quorum found that `node` withheld leaf `leafIndex` of batch `batchId`.
    event LeafWithheldSlashed(
        address indexed node,
        uint256 indexed batchId,
        uint32 indexed leafIndex,
        uint256 amount,
        uint256 bountyPerVerifier
    );
    event EquivocationSlashed(
        address indexed node, bytes32 indexed sessionId, uint32 step, address indexed reporter, uint256 amount, uint256 bounty
    );
    event RewardPoolReleased(address indexed recipient, uint256 amount);
    /// @notice `claimant` claimed `claimHash` at the current block.
    event SlashClaimed(bytes32 indexed claimHash, address indexed claimant);
    /// @notice `challenger` demands that `node` prove its receipt of `leaf` committed by `answerBy`.
    event ReceiptChallenged(
        uint256 indexed challengeId, address indexed node, address indexed challenger, bytes32 leaf, uint64 answerBy
    );
    /// @notice The challenged leaf was shown at `leafIndex` of batch `batchId`, committed in time.
    event ReceiptChallengeAnswered(uint256 indexed challengeId, address indexed node, uint256 batchId, uint32 leafIndex);
    /// @notice `node` did not answer challenge `challengeId` in time and was slashed.
    event ReceiptChallengeSlashed(uint256 indexed challengeId, address indexed node, uint256 amount, uint256 bounty);

    error SlasherUnknownBatch(uint256 batchId);
    /// @notice The header given for batch `batchId` is not the one committed.
    error SlasherHeaderMismatch(uint256 batchId);
    error SlasherChallengeWindowClosed(uint256 batchId, uint64 closedAt);
    error SlasherModelMismatch(bytes32 leafModelId, bytes32 batchModelId);
    error SlasherInvalidProof(uint256 batchId, uint32 leafIndex, bytes32 leaf);
    error SlasherInvalidReason(uint8 reason);
    error SlasherAlreadySlashed(bytes32 key);
    /// @notice A slash takes exactly `quorum` verdicts.
    error SlasherWrongVerdictCount(uint256 provided, uint256 quorum);
    /// @notice `claim`: this claim hash was already claimed.
    error SlasherClaimTaken(bytes32 claimHash);
    /// @notice The slash's claim was never made, or was made in this block (it must be older).
    error SlasherClaimNotMatured(bytes32 claimHash);
    error SlasherInvalidVerdictSignature(uint256 index);
    error SlasherNotAVerifier(address signer);
    error SlasherVerdictSignersNotSorted(address previous, address next);
    error SlasherNotEquivocation();
    /// @notice `slashWithheld`: the batch has only `leafCount` leaves.
    error SlasherLeafIndexOutOfRange(uint256 batchId, uint32 leafIndex, uint32 leafCount);
    /// @notice `slashWithheld`: this leaf position was already slashed as withheld.
    error SlasherWithheldAlreadySlashed(uint256 batchId, uint32 leafIndex);
    error SlasherInvalidReceiptSignature(address signer, address node);
    error SlasherNothingToSlash(address node);
    error SlasherEmptyRewardPool();
    /// @notice `answerChallenge`: the response window closed at `answerBy`.
    error SlasherAnswerTooLate(uint256 challengeId, uint64 answerBy);
    /// @notice `challengeReceipt`: the receipt's commit deadline has not passed yet.
    error SlasherChallengeTooEarly(uint64 opensAt);
    /// @notice `challengeReceipt`: the receipt's challenge period is over.
    error SlasherChallengeTooLate(uint64 closedAt);
    /// @notice `challengeReceipt`: this receipt was challenged before.
    error SlasherReceiptAlreadyChallenged(address node, bytes32 leaf);
    /// @notice No challenge `challengeId` is open.
    error SlasherChallengeNotOpen(uint256 challengeId);
    /// @notice `answerChallenge`: the leaf shown is not the challenged one.
    error SlasherWrongLeaf(uint256 challengeId, bytes32 leaf);
    /// @notice `answerChallenge`: batch `batchId` was committed by another node.
    error SlasherNotTheNodesBatch(uint256 batchId, address node);
    /// @notice `answerChallenge`: the batch was committed after the receipt's deadline.
    error SlasherCommittedTooLate(uint256 batchId, uint64 committedAt, uint64 deadline);
    /// @notice `slashUnanswered`: the node may still answer until `answerBy`.
    error SlasherChallengeStillOpen(uint256 challengeId, uint64 answerBy);
    /// @notice Deployment: commit deadline + challenge period + response window outlast the
    /// registry's unbonding delay, so a node could withdraw before its receipts are enforced.
    error SlasherReceiptWindowsTooLong(uint64 total, uint64 unbondingDelay);
    /// @notice Deployment: the registry does not name this contract as its slasher.
    error SlasherNotRegistrySlasher(address registrySlasher);
    /// @notice Deployment: the commitments contract follows another node registry.
    error SlasherRegistryMismatch(address commitmentsRegistry, address registry);
    /// @notice Deployment: the quorum must be at least 1.
    error SlasherInvalidQuorum(uint8 quorum);
    /// @notice Deployment: a basis-point parameter above 10000.
    error SlasherInvalidBps(uint16 bps);
    /// @notice Deployment: the challenge window outlasts the registry's unbonding delay, so a node
    /// could withdraw stake a verdict should still reach.
    error SlasherChallengeWindowTooLong(uint64 challengeWindow, uint64 unbondingDelay);
    /// @notice Deployment: the reward recipient is the zero address.
    error SlasherZeroRewardRecipient();

    /// @notice Record `claimed` (see `claimHash`) at the current block; a slash may use it from
    /// the next block on. Each claim hash is recorded once.
    function claim(bytes32 claimed) external;

    /// @notice Slash the node that committed batch `proof.batchId` (whose header is
    /// `proof.header`) for `leaf`, proven at `proof.leafIndex` under the batch's root, with
    /// exactly `quorum` `verdicts` from distinct
    /// active verifiers, each a 65-byte signature over `verdictDigest`, ordered by strictly
    /// increasing signer address. Needs the matured claim
    /// `claimHash(verdictDigest(...), signers, secret)`. A leaf is slashed at most once per node.
    function slash(
        Leaf calldata leaf,
        LeafProof calldata proof,
        Reason reason,
        bytes[] calldata verdicts,
        bytes32 secret
    ) external returns (uint256 slashed);

    /// @notice Slash the node that committed batch `batchId` (whose header is `header`) for
    /// withholding its leaf at position `leafIndex` (< the batch's `leafCount`), with exactly
    /// `quorum` `verdicts` from distinct active verifiers, each a 65-byte signature over
    /// `withheldDigest(node, batchId, leafIndex)`, ordered by strictly increasing signer address,
    /// within the batch's challenge window, and the matured claim
    /// `claimHash(withheldDigest(...), signers, secret)`. Amount and bounty split are those of
    /// `slash`. Each (batchId, leafIndex) is slashed at most once, by this rule or by `slash`
    /// (which proves the leaf's position and marks it too: `isWithheldSlashed`).
    function slashWithheld(
        uint256 batchId,
        ICommitments.BatchHeader calldata header,
        uint32 leafIndex,
        bytes[] calldata verdicts,
        bytes32 secret
    ) external returns (uint256 slashed);

    /// @notice Slash `node` for signing two different receipts `a` and `b` for the same
    /// (sessionId, modelId, spanStart, spanEnd, step). Anyone may call with the matured claim
    /// `claimHash(equivocationEvidence(node, a, b), [caller], secret)`; the caller gets the bounty.
    function slashEquivocation(
        address node,
        Leaf calldata a,
        bytes calldata receiptA,
        Leaf calldata b,
        bytes calldata receiptB,
        bytes32 secret
    ) external returns (uint256 slashed);

    /// @notice As the holder of `node`'s `receipt` for `leaf`, demand that the node prove the leaf
    /// committed by `leaf.issuedAt + commitDeadline`. Allowed from the second after that deadline
    /// until `receiptChallengePeriod` after it, once per (node, leaf), with the matured claim
    /// `claimHash(receiptDigest(leaf), [caller], secret)` (so nobody can take the challenger's
    /// place by copying the pending call). Pulls `challengeBond` from the caller (approve first).
    function challengeReceipt(address node, Leaf calldata leaf, bytes calldata receipt, bytes32 secret)
        external
        returns (uint256 challengeId);

    /// @notice Answer challenge `challengeId` (anyone may; the node does): `leaf` is the
    /// challenged leaf, proven at `proof.leafIndex` (< its batch's `leafCount`) of a batch the
    /// challenged node committed by the leaf's commit deadline. The challenge bond goes to the node.
    function answerChallenge(uint256 challengeId, Leaf calldata leaf, LeafProof calldata proof) external;

    /// @notice After challenge `challengeId`'s `answerBy` passed unanswered, slash its node as for
    /// a verdict (nothing if it has no stake left: the challenge still ends); `bountyBps` of it
    /// and the bond go to the challenger. Anyone may call.
    function slashUnanswered(uint256 challengeId) external returns (uint256 slashed);

    /// @notice Challenge `challengeId` (all zero if none).
    function getChallenge(uint256 challengeId) external view returns (ReceiptChallenge memory);

    /// @notice How many receipt challenges were opened (the latest id; ids start at 1).
    function challengeCount() external view returns (uint256);

    /// @notice True once `node`'s receipt of the leaf hash `leaf` was challenged.
    function isReceiptChallenged(address node, bytes32 leaf) external view returns (bool);

    /// @notice Send the whole reward pool to `rewardRecipient`. Anyone may call.
    function releaseRewardPool() external returns (uint256 amount);

    /// @notice keccak256(abi.encode(leaf fields in order)): the Merkle leaf.
    function leafHash(Leaf calldata leaf) external pure returns (bytes32);

    /// @notice The EIP-712 digest a node signs for a receipt of `leaf`.
    function receiptDigest(Leaf calldata leaf) external view returns (bytes32);

    /// @notice The EIP-712 digest a verifier signs for a verdict.
    function verdictDigest(address node, uint256 batchId, bytes32 leaf, Reason reason)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a verifier signs when `node` withheld leaf `leafIndex` of batch
    /// `batchId`: type `Withheld(address node,uint256 batchId,uint32 leafIndex)`.
    function withheldDigest(address node, uint256 batchId, uint32 leafIndex) external view returns (bytes32);

    /// @notice `keccak256(abi.encode(node, leafHash(a), leafHash(b)))`: the evidence an
    /// equivocation claim binds.
    function equivocationEvidence(address node, Leaf calldata a, Leaf calldata b) external pure returns (bytes32);

    /// @notice `keccak256(abi.encode(evidence, beneficiaries, secret))`: what `claim` records.
    /// `evidence` is the verdict or withheld digest, or `equivocationEvidence`; `beneficiaries`
    /// are the verdict signers in the order of the verdicts, or the equivocation reporter alone.
    function claimHash(bytes32 evidence, address[] calldata beneficiaries, bytes32 secret)
        external
        pure
        returns (bytes32);

    /// @notice The block at which `claimed` was claimed (0: never, or already used).
    function claimedAt(bytes32 claimed) external view returns (uint256);

    /// @notice True when `proof.header` is batch `proof.batchId`'s, of `leaf`'s model, and
    /// `proof` proves `leaf` at `proof.leafIndex` (< `leafCount`) under its root.
    function verifyLeaf(Leaf calldata leaf, LeafProof calldata proof) external view returns (bool);

    /// @notice True once `leaf` was slashed for `node` (a leaf slashed for one node shields no other).
    function isLeafSlashed(address node, bytes32 leaf) external view returns (bool);

    /// @notice True once leaf position `leafIndex` of batch `batchId` was slashed (as withheld, or
    /// by `slash` with a proof of that position).
    function isWithheldSlashed(uint256 batchId, uint32 leafIndex) external view returns (bool);

    /// @notice Tokens waiting in the reward pool (this contract's token balance is the pool plus
    /// the bonds of open challenges).
    function rewardPool() external view returns (uint256);

    function registry() external view returns (INodeRegistry);

    function commitments() external view returns (ICommitments);

    function verifiers() external view returns (IVerifierRegistry);

    function quorum() external view returns (uint8);

    function slashBps() external view returns (uint16);

    function bountyBps() external view returns (uint16);

    function challengeWindow() external view returns (uint64);

    function rewardRecipient() external view returns (address);

    function commitDeadline() external view returns (uint64);

    function receiptChallengePeriod() external view returns (uint64);

    function responseWindow() external view returns (uint64);

    function challengeBond() external view returns (uint256);
}
