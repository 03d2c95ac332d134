// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Stake registry: the one stake lifecycle of nodes and verifiers.
/// @notice An account registers with a stake, may add to it, unbonds part or all of it and
/// withdraws what it unbonded once `withdrawableAt` has passed, or rebonds it (back into active
/// stake, no token moved) to serve again. What stays active must cover the
/// account's required stake (each registry has its own rule), or be zero (the account leaves).
/// Unbonding stake is still slashable where the registry slashes.
interface IStakeRegistry {
    /// @notice An account's stake.
    struct Stake {
        uint256 stake; // active stake
        uint256 unbonding; // stake waiting for `withdraw`
        uint64 unbondingReleaseAt; // the earliest `withdraw` of `unbonding` (see `withdrawableAt`)
        bool registered;
    }

    /// @notice `account` added `amount` to its active stake.
    event StakeAdded(address indexed account, uint256 amount, uint256 newStake);
    /// @notice `account` moved `amount` from active stake to unbonding.
    event UnbondingStarted(address indexed account, uint256 amount, uint256 totalUnbonding, uint64 releaseAt);
    /// @notice `account` moved `amount` of its unbonding stake back into active stake.
    event StakeRebonded(address indexed account, uint256 amount, uint256 newStake, uint256 remainingUnbonding);
    /// @notice `account` withdrew its unbonded stake.
    event StakeWithdrawn(address indexed account, uint256 amount);

    error StakeAlreadyRegistered(address account);
    error StakeNotRegistered(address account);
    error StakeZeroAmount();
    error StakeInsufficient(address account, uint256 stake, uint256 needed);
    error StakeUnbondExceedsStake(address account, uint256 amount, uint256 stake);
    /// @notice `rebond`: `account` asked to rebond more than it has unbonding.
    error StakeRebondExceedsUnbonding(address account, uint256 amount, uint256 unbonding);
    /// @notice Nothing may be withdrawn before `until` (the unbonding release, or the end of the
    /// challenge window of the account's last commit, whichever is later).
    error StakeUnbondingLocked(address account, uint64 until);
    error StakeNothingToWithdraw(address account);

    /// @notice Pull `amount` more tokens into the caller's active stake (approve first).
    function addStake(uint256 amount) external;

    /// @notice Move `amount` of active stake to unbonding; the release time restarts at
    /// `now + unbondingDelay`. What stays active must cover the required stake, or be zero.
    function unbond(uint256 amount) external;

    /// @notice Move `amount` of the caller's unbonding stake back into its active stake, without
    /// moving any token (a node that serves again reuses the stake it unbonded). The active stake
    /// afterwards must cover the required stake. What stays unbonding keeps its release time
    /// (rebonding part of it never makes the rest wait longer); when nothing stays, the release
    /// time is cleared to 0.
    function rebond(uint256 amount) external;

    /// @notice Send the caller's unbonded stake back, strictly after `withdrawableAt(caller)`.
    function withdraw() external returns (uint256 amount);

    /// @notice The stake of `account` (all zero if never registered).
    function getStake(address account) external view returns (Stake memory);

    /// @notice After this time (strictly) `account` may withdraw what it unbonded.
    function withdrawableAt(address account) external view returns (uint64);

    /// @notice The sum of every account's active and unbonding stake (equals this contract's
    /// token balance).
    function totalStaked() external view returns (uint256);

    function stakeToken() external view returns (IERC20);

    function unbondingDelay() external view returns (uint64);
}
