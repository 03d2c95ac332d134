// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Verifier registry: who may sign verdicts.
/// @notice A verifier stakes at least `minStake` to be active. Stake leaves through `unbond`
/// and `withdraw` after `unbondingDelay`.
interface IVerifierRegistry {
    struct Verifier {
        uint256 stake; // active stake
        uint256 unbonding; // waiting for `withdraw`
        uint64 unbondingReleaseAt;
        bool registered;
    }

    event VerifierRegistered(address indexed verifier, uint256 stake);
    event VerifierStakeAdded(address indexed verifier, uint256 amount, uint256 newStake);
    event VerifierUnbondingStarted(address indexed verifier, uint256 amount, uint256 totalUnbonding, uint64 releaseAt);
    event VerifierWithdrawn(address indexed verifier, uint256 amount);

    error VerifiersAlreadyRegistered(address verifier);
    error VerifiersNotRegistered(address verifier);
    error VerifiersZeroAmount();
    error VerifiersInsufficientStake(address verifier, uint256 stake, uint256 needed);
    error VerifiersUnbondExceedsStake(address verifier, uint256 amount, uint256 stake);
    error VerifiersUnbondingLocked(address verifier, uint64 releaseAt);
    error VerifiersNothingToWithdraw(address verifier);

    /// @notice Register the caller and pull `stake` (at least `minStake`; approve first).
    function register(uint256 stake) external;

    function addStake(uint256 amount) external;

    /// @notice Move `amount` to unbonding; what stays must be at least `minStake` or zero.
    function unbond(uint256 amount) external;

    function withdraw() external returns (uint256 amount);

    /// @notice True when `verifier` is registered with active stake of at least `minStake`.
    function isActive(address verifier) external view returns (bool);

    function getVerifier(address verifier) external view returns (Verifier memory);

    /// @notice Sum of all active and unbonding verifier stake (equals this contract's token balance).
    function totalStaked() external view returns (uint256);

    function token() external view returns (IERC20);

    function minStake() external view returns (uint256);

    function unbondingDelay() external view returns (uint64);
}
