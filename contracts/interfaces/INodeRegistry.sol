// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Node registry: who serves which blocks of which model, at what price, with what stake.
/// @notice A node stakes at least `minStakePerBlock * (spanEnd - spanStart)` to serve the blocks
/// `[spanStart, spanEnd)` of `modelId`. Stake leaves only through `unbond` + `withdraw` after
/// `unbondingDelay` (and stays slashable while unbonding) or through `slash`, which only the
/// slasher fixed at deployment may call.
interface INodeRegistry {
    /// @notice A node's registration and stake.
    struct Node {
        bytes32 modelId; // keccak256 of the model's name (see ledger/types.py)
        uint16 spanStart; // first block served
        uint16 spanEnd; // one past the last block served
        uint256 pricePerTokenPerBlock; // stake-token base units per token per block
        bytes peerId; // libp2p peer id bytes of the node's hivemind server
        uint256 stake; // active stake
        uint256 unbonding; // stake waiting for `withdraw`, still slashable
        uint64 unbondingReleaseAt; // when `unbonding` may be withdrawn
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
    /// @notice A node added `amount` to its active stake.
    event StakeAdded(address indexed node, uint256 amount, uint256 newStake);
    /// @notice A node moved `amount` from active stake to unbonding.
    event UnbondingStarted(address indexed node, uint256 amount, uint256 totalUnbonding, uint64 releaseAt);
    /// @notice A node withdrew its unbonded stake.
    event StakeWithdrawn(address indexed node, uint256 amount);
    /// @notice The slasher took `amount` of a node's stake and sent it to `recipient`.
    event NodeSlashed(address indexed node, uint256 amount, address indexed recipient);

    error RegistryAlreadyRegistered(address node);
    error RegistryNotRegistered(address node);
    error RegistryInvalidSpan(uint16 spanStart, uint16 spanEnd);
    error RegistryEmptyPeerId();
    error RegistryZeroAmount();
    error RegistryInsufficientStake(address node, uint256 stake, uint256 needed);
    error RegistryUnbondExceedsStake(address node, uint256 amount, uint256 stake);
    error RegistryUnbondingLocked(address node, uint64 releaseAt);
    error RegistryNothingToWithdraw(address node);
    error RegistryOnlySlasher(address caller);

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

    /// @notice Pull `amount` more tokens into the caller's active stake.
    function addStake(uint256 amount) external;

    /// @notice Move `amount` of active stake to unbonding; the release time restarts at
    /// `now + unbondingDelay`. What stays active must cover the span, or be zero (the node leaves).
    function unbond(uint256 amount) external;

    /// @notice Send the caller's unbonded stake back once its release time has passed.
    function withdraw() external returns (uint256 amount);

    /// @notice Take up to `amount` of `node`'s stake (active first, then unbonding) and send it to
    /// `recipient`. Only the slasher may call. Returns what was taken.
    function slash(address node, uint256 amount, address recipient) external returns (uint256 slashed);

    /// @notice The registration and stake of `node` (all zero if never registered).
    function getNode(address node) external view returns (Node memory);

    /// @notice True when `node` is registered and its active stake covers its span.
    function isActive(address node) external view returns (bool);

    /// @notice The stake a span needs: `minStakePerBlock * (spanEnd - spanStart)`.
    function requiredStake(uint16 spanStart, uint16 spanEnd) external view returns (uint256);

    /// @notice The sum of every node's active and unbonding stake (equals this contract's token balance).
    function totalStaked() external view returns (uint256);

    function stakeToken() external view returns (IERC20);

    function minStakePerBlock() external view returns (uint256);

    function unbondingDelay() external view returns (uint64);

    function slasher() external view returns (address);
}
