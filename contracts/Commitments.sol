// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ICommitments} from "./interfaces/ICommitments.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";

/// @title Commitments: one Merkle root per batch of served leaves.
/// @notice Only an active node registered for the committed model may commit; the sender is the
/// node the Slasher later holds to the batch. Two storage slots per batch: the hash of its header,
/// and its id under (node, root), so a node commits each root once. Holds no funds.
contract Commitments is ICommitments {
    INodeRegistry private immutable _registry;
    uint32 private immutable _maxLeaves;

    mapping(uint256 batchId => bytes32 headerHash) private _batchHashes;
    uint256 private _batchCount;
    /// @dev Each node commits a root once: a second batch under the same root would be a batch
    /// the node's ledger knows nothing of (see `commit`).
    mapping(address node => mapping(bytes32 root => uint256 batchId)) private _rootBatches;

    /// @param registry_ The node registry that decides who is an active node; its
    /// `commitments()` must be this contract.
    /// @param maxLeaves_ The most leaves one batch may hold (at least 1): a verifier samples
    /// positions below `leafCount` and rebuilds the batch's tree, so the cap bounds its work.
    constructor(INodeRegistry registry_, uint32 maxLeaves_) {
        address registryCommitments = registry_.commitments();
        if (registryCommitments != address(this)) revert CommitmentsNotRegistryCommitments(registryCommitments);
        if (maxLeaves_ == 0) revert CommitmentsInvalidMaxLeaves(maxLeaves_);
        _registry = registry_;
        _maxLeaves = maxLeaves_;
    }

    /// @inheritdoc ICommitments
    function commit(bytes32 modelId, bytes32 root, uint32 leafCount) external returns (uint256 batchId) {
        if (leafCount == 0) revert CommitmentsEmptyBatch();
        if (leafCount > _maxLeaves) revert CommitmentsTooManyLeaves(leafCount, _maxLeaves);
        if (root == bytes32(0)) revert CommitmentsZeroRoot();
        uint256 earlier = _rootBatches[msg.sender][root];
        if (earlier != 0) revert CommitmentsRootAlreadyCommitted(msg.sender, root, earlier);

        uint64 committedAt = uint64(block.timestamp);
        batchId = ++_batchCount;
        _rootBatches[msg.sender][root] = batchId;
        _batchHashes[batchId] = keccak256(abi.encode(msg.sender, modelId, root, leafCount, committedAt));
        emit BatchCommitted(batchId, msg.sender, modelId, root, leafCount, committedAt);

        // The registry (fixed at deployment) reverts all of the above unless the sender is an
        // active node of `modelId`, and holds the sender's stake for this commit's window.
        _registry.recordCommit(msg.sender, modelId);
    }

    /// @inheritdoc ICommitments
    function checkBatch(uint256 batchId, BatchHeader calldata header) external view {
        bytes32 stored = _batchHashes[batchId];
        // slither-disable-next-line incorrect-equality (zero: no batch; a hash is never zero)
        if (stored == bytes32(0)) revert CommitmentsUnknownBatch(batchId);
        if (stored != hashHeader(header)) revert CommitmentsHeaderMismatch(batchId);
    }

    /// @inheritdoc ICommitments
    function batchHash(uint256 batchId) external view returns (bytes32) {
        return _batchHashes[batchId];
    }

    /// @inheritdoc ICommitments
    function hashHeader(BatchHeader calldata header) public pure returns (bytes32) {
        // A static struct ABI-encodes as its fields in order, as `commit` hashes them.
        return keccak256(abi.encode(header));
    }

    /// @inheritdoc ICommitments
    function batchOfRoot(address node, bytes32 root) external view returns (uint256) {
        return _rootBatches[node][root];
    }

    /// @inheritdoc ICommitments
    function batchCount() external view returns (uint256) {
        return _batchCount;
    }

    /// @inheritdoc ICommitments
    function maxLeaves() external view returns (uint32) {
        return _maxLeaves;
    }

    /// @inheritdoc ICommitments
    function registry() external view returns (INodeRegistry) {
        return _registry;
    }
}
