// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ICommitments} from "./interfaces/ICommitments.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";

/// @title Commitments: one Merkle root per batch of served leaves.
/// @notice Only an active node registered for the committed model may commit; the sender is the
/// node the Slasher later holds to the batch. Holds no funds.
contract Commitments is ICommitments {
    INodeRegistry private immutable _registry;

    mapping(uint256 batchId => Batch) private _batches;
    uint256 private _batchCount;

    /// @param registry_ The node registry that decides who is an active node.
    constructor(INodeRegistry registry_) {
        _registry = registry_;
    }

    /// @inheritdoc ICommitments
    function commit(bytes32 modelId, bytes32 root, uint32 leafCount, uint64 tokenCount)
        external
        returns (uint256 batchId)
    {
        if (!_registry.isActive(msg.sender)) revert CommitmentsNodeInactive(msg.sender);
        bytes32 registeredModelId = _registry.getNode(msg.sender).modelId;
        if (modelId != registeredModelId) revert CommitmentsModelMismatch(msg.sender, modelId, registeredModelId);
        if (leafCount == 0) revert CommitmentsEmptyBatch();
        if (root == bytes32(0)) revert CommitmentsZeroRoot();

        batchId = ++_batchCount;
        _batches[batchId] = Batch({
            node: msg.sender,
            modelId: modelId,
            root: root,
            leafCount: leafCount,
            tokenCount: tokenCount,
            committedAt: uint64(block.timestamp)
        });
        emit BatchCommitted(batchId, msg.sender, modelId, root, leafCount, tokenCount);
    }

    /// @inheritdoc ICommitments
    function getBatch(uint256 batchId) external view returns (Batch memory) {
        if (batchId == 0 || batchId > _batchCount) revert CommitmentsUnknownBatch(batchId);
        return _batches[batchId];
    }

    /// @inheritdoc ICommitments
    function batchCount() external view returns (uint256) {
        return _batchCount;
    }

    /// @inheritdoc ICommitments
    function registry() external view returns (INodeRegistry) {
        return _registry;
    }
}
