// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {INodeRegistry} from "./INodeRegistry.sol";

/// @title Commitments: Merkle roots of the leaves a node served.
/// @notice An active node commits one root per batch of leaves (see DESIGN.md "Commitments");
/// the sender authenticates the root. Only the hash of each batch's header is stored: the header
/// itself is in the `BatchCommitted` event, and whoever proves something about a batch (the
/// Slasher) is given the header back as calldata and checks it against the stored hash.
interface ICommitments {
    /// @notice One committed batch, as `BatchCommitted` tells it and `batchHash` binds it.
    struct BatchHeader {
        address node; // who committed (and is slashable for it)
        bytes32 modelId;
        bytes32 root; // IndexedMerkle root of the batch's leaves (ordered pairs, ledger/merkle.py)
        uint32 leafCount;
        uint64 committedAt; // block timestamp of the commit
    }

    /// @notice `node` committed batch `batchId`; `keccak256(abi.encode(header))` is stored.
    event BatchCommitted(
        uint256 indexed batchId,
        address indexed node,
        bytes32 indexed modelId,
        bytes32 root,
        uint32 leafCount,
        uint64 committedAt
    );

    error CommitmentsEmptyBatch();
    error CommitmentsZeroRoot();
    /// @notice `node` already committed `root` (as batch `batchId`): a root is committed once per
    /// node, so a commit re-sent after a crash cannot land twice.
    error CommitmentsRootAlreadyCommitted(address node, bytes32 root, uint256 batchId);
    /// @notice A batch may hold at most `maxLeaves` leaves (what a verifier can audit).
    error CommitmentsTooManyLeaves(uint32 leafCount, uint32 maxLeaves);
    error CommitmentsUnknownBatch(uint256 batchId);
    /// @notice The header given for batch `batchId` is not the one committed.
    error CommitmentsHeaderMismatch(uint256 batchId);
    /// @notice Deployment: the registry does not name this contract as its commitments contract.
    error CommitmentsNotRegistryCommitments(address registryCommitments);
    /// @notice Deployment: the leaf cap must be at least 1.
    error CommitmentsInvalidMaxLeaves(uint32 maxLeaves);

    /// @notice Commit the root of `leafCount` leaves (1 to `maxLeaves`). The caller must be an
    /// active node registered for `modelId` (the registry checks and records the commit's time,
    /// which keeps the node's stake slashable for the commit's challenge window). Batch ids start
    /// at 1. Reverts with `CommitmentsRootAlreadyCommitted` if the caller already committed `root`.
    function commit(bytes32 modelId, bytes32 root, uint32 leafCount) external returns (uint256 batchId);

    /// @notice Reverts with `CommitmentsUnknownBatch` or `CommitmentsHeaderMismatch` unless
    /// `header` is the header of batch `batchId`.
    function checkBatch(uint256 batchId, BatchHeader calldata header) external view;

    /// @notice The stored `keccak256(abi.encode(header))` of batch `batchId`; zero if there is none.
    function batchHash(uint256 batchId) external view returns (bytes32);

    /// @notice `keccak256(abi.encode(header))`: what `batchHash` stores for a header.
    function hashHeader(BatchHeader calldata header) external pure returns (bytes32);

    /// @notice The batch in which `node` committed `root`; zero if it never did.
    function batchOfRoot(address node, bytes32 root) external view returns (uint256);

    /// @notice How many batches were committed (the latest batch id).
    function batchCount() external view returns (uint256);

    /// @notice The most leaves one batch may hold.
    function maxLeaves() external view returns (uint32);

    function registry() external view returns (INodeRegistry);
}
