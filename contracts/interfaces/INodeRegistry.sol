// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IStakeRegistry} from "./IStakeRegistry.sol";

/// @title Node registry: who serves which blocks of which model, at what price, with what stake.
/// @notice A node stakes at least `minStakePerBlock * (spanEnd - spanStart)` to serve the blocks
/// `[spanStart, spanEnd)` of `modelId`. Stake leaves only through `unbond` + `withdraw` (and stays
/// slashable while unbonding, and at least for the challenge window of the node's last commit)
/// or through `slash`, which only the slasher fixed at deployment may call.
interface INodeRegistry is IStakeRegistry {
    /// @notice A node's registration and stake, as `getNode` assembles it.
    struct Node {
        bytes32 modelId; // keccak256 of the model's name (see ledger/types.py)
        uint16 spanStart; // first block served
        uint16 spanEnd; // one past the last block served
        uint256 pricePerTokenPerBlock; // stake-token base units per token per block
        bytes peerId; // libp2p peer id bytes of the node's hivemind server
        uint256 stake; // active stake
        uint256 unbonding; // stake waiting for `withdraw`, still slashable
        uint64 unbondingReleaseAt; // when `unbonding` may be withdrawn, at the earliest
        uint64 lastCommitAt; // block time of the node's last commit
        bool registered;
    }

    /// @notice A node registered for a span and staked `stake`.
    event NodeRegistered(
        address indexed node,
        bytes32 indexed modelId,
        uint16 spanStart,
        uint16 spanEnd,
        uint256 pricePerTokenPerBlock,
        bytes peerId,
        uint256 stake
    );
    /// @notice A node changed what it serves or its price.
    event ServiceUpdated(
        address indexed node,
        bytes32 indexed modelId,
        uint16 spanStart,
        uint16 spanEnd,
        uint256 pricePerTokenPerBlock,
        bytes peerId
    );
    /// @notice The slasher took `amount` of a node's stake and sent it to `recipient`.
    event NodeSlashed(address indexed node, uint256 amount, address indexed recipient);

    error RegistryInvalidSpan(uint16 spanStart, uint16 spanEnd);
    error RegistryEmptyPeerId();
    error RegistryOnlySlasher(address caller);
    error RegistryOnlyCommitments(address caller);
    /// @notice Deployment: the commitments contract or the slasher is the zero address (stake
    /// nothing could ever slash).
    error RegistryZeroAddress();
    /// @notice `recordCommit`: the node is not registered or its active stake does not cover its span.
    error RegistryNodeInactive(address node);
    /// @notice `recordCommit`: the node commits for another model than it registered.
    error RegistryModelMismatch(address node, bytes32 modelId, bytes32 registeredModelId);

    /// @notice Register the caller to serve `[spanStart, spanEnd)` of `modelId` and pull `stake`
    /// tokens from it (approve first). Reverts if the stake is below `requiredStake`.
    function register(
        bytes32 modelId,
        uint16 spanStart,
        uint16 spanEnd,
        uint256 pricePerTokenPerBlock,
        bytes calldata peerId,
        uint256 stake
    ) external;

    /// @notice Change the caller's model, span, price or peer id; the current stake must cover the new span.
    function updateService(
        bytes32 modelId,
        uint16 spanStart,
        uint16 spanEnd,
        uint256 pricePerTokenPerBlock,
        bytes calldata peerId
    ) external;

    /// @notice Called by the commitments contract for each commit of `node`: reverts unless `node`
    /// is active and registered for `modelId`, and records the commit's time, so that no stake of
    /// the node can be withdrawn before the commit's challenge window has closed.
    function recordCommit(address node, bytes32 modelId) external;

    /// @notice Take up to `amount` of `node`'s stake (active first, then unbonding) and send it to
    /// `recipient`. Only the slasher may call. Returns what was taken.
    function slash(address node, uint256 amount, address recipient) external returns (uint256 slashed);

    /// @notice The registration and stake of `node` (all zero if never registered).
    function getNode(address node) external view returns (Node memory);

    /// @notice What a slash of `node` can reach: its active plus unbonding stake.
    function slashableStake(address node) external view returns (uint256);

    /// @notice True when `node` is registered and its active stake covers its span.
    function isActive(address node) external view returns (bool);

    /// @notice The stake a span needs: `minStakePerBlock * (spanEnd - spanStart)`.
    function requiredStake(uint16 spanStart, uint16 spanEnd) external view returns (uint256);

    function minStakePerBlock() external view returns (uint256);

    function slasher() external view returns (address);

    function commitments() external view returns (address);
}
