// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {INodeRegistry} from "./INodeRegistry.sol";

/// @title Commitments: Merkle roots of the leaves a node served.
/// @notice An active node commits one root per batch of leaves (see DESIGN.md "Commitments");
/// the sender authenticates the root. Slashing proves a leaf under a committed root.
interface ICommitments {
    /// @notice One committed batch.
    struct Batch {
        address node; // who committed (and is slashable for it)
        bytes32 modelId;
        bytes32 root; // OpenZeppelin MerkleProof-compatible root of the batch's leaves
        uint32 leafCount;
        uint64 tokenCount; // tokens served across the batch's leaves
        uint64 committedAt; // block timestamp of the commit
    }

    /// @notice A node committed batch `batchId`.
    event BatchCommitted(
        uint256 indexed batchId,
        address indexed node,
        bytes32 indexed modelId,
        bytes32 root,
        uint32 leafCount,
        uint64 tokenCount
    );

    error CommitmentsNodeInactive(address node);
    error CommitmentsModelMismatch(address node, bytes32 modelId, bytes32 registeredModelId);
    error CommitmentsEmptyBatch();
    error CommitmentsZeroRoot();
    error CommitmentsUnknownBatch(uint256 batchId);

    /// @notice Commit the root of `leafCount` leaves covering `tokenCount` tokens. The caller must
    /// be an active node registered for `modelId`. Batch ids start at 1.
    function commit(bytes32 modelId, bytes32 root, uint32 leafCount, uint64 tokenCount)
        external
        returns (uint256 batchId);

    /// @notice The batch `batchId`; reverts with `CommitmentsUnknownBatch` if there is none.
    function getBatch(uint256 batchId) external view returns (Batch memory);

    /// @notice How many batches were committed (the latest batch id).
    function batchCount() external view returns (uint256);

    function registry() external view returns (INodeRegistry);
}
