// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IStakeRegistry} from "./IStakeRegistry.sol";

/// @title Verifier registry: who may sign verdicts.
/// @notice A verifier stakes at least `minStake` to be active. Stake leaves through `unbond`
/// and `withdraw` after `unbondingDelay` (the shared `IStakeRegistry` lifecycle). Verifier stake
/// is never slashed here; it only gates who may sign.
interface IVerifierRegistry is IStakeRegistry {
    event VerifierRegistered(address indexed verifier, uint256 stake);

    /// @notice Register the caller and pull `stake` (at least `minStake`; approve first).
    function register(uint256 stake) external;

    /// @notice True when `verifier` is registered with active stake of at least `minStake`.
    function isActive(address verifier) external view returns (bool);

    function minStake() external view returns (uint256);
}
