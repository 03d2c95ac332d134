// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IVerifierRegistry} from "./interfaces/IVerifierRegistry.sol";

/// @title VerifierRegistry: who may sign verdicts.
/// @notice Holds every verifier's stake; the token balance of this contract always equals
/// `totalStaked`. Verifier stake is never slashed here; it only gates who may sign.
/// Unbonded stake may be withdrawn strictly after `unbondingReleaseAt`.
contract VerifierRegistry is IVerifierRegistry, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    IERC20 private immutable _token;
    uint256 private immutable _minStake;
    uint64 private immutable _unbondingDelay;

    mapping(address verifier => Verifier) private _verifiers;
    uint256 private _totalStaked;

    /// @param token_ The stake token.
    /// @param minStake_ Active stake a verifier needs to sign verdicts.
    /// @param unbondingDelay_ Seconds between `unbond` and the earliest `withdraw`.
    constructor(IERC20 token_, uint256 minStake_, uint64 unbondingDelay_) {
        _token = token_;
        _minStake = minStake_;
        _unbondingDelay = unbondingDelay_;
    }

    /// @inheritdoc IVerifierRegistry
    function register(uint256 stake) external nonReentrant {
        Verifier storage v = _verifiers[msg.sender];
        if (v.registered) revert VerifiersAlreadyRegistered(msg.sender);
        if (stake == 0) revert VerifiersZeroAmount();
        if (stake < _minStake) revert VerifiersInsufficientStake(msg.sender, stake, _minStake);

        v.registered = true;
        v.stake = stake;
        _totalStaked += stake;
        emit VerifierRegistered(msg.sender, stake);

        _token.safeTransferFrom(msg.sender, address(this), stake);
    }

    /// @inheritdoc IVerifierRegistry
    function addStake(uint256 amount) external nonReentrant {
        Verifier storage v = _registered(msg.sender);
        if (amount == 0) revert VerifiersZeroAmount();

        uint256 newStake = v.stake + amount;
        v.stake = newStake;
        _totalStaked += amount;
        emit VerifierStakeAdded(msg.sender, amount, newStake);

        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc IVerifierRegistry
    /// @dev A second unbond adds to `unbonding` and restarts the release time.
    function unbond(uint256 amount) external {
        Verifier storage v = _registered(msg.sender);
        if (amount == 0) revert VerifiersZeroAmount();
        uint256 stake = v.stake;
        if (amount > stake) revert VerifiersUnbondExceedsStake(msg.sender, amount, stake);
        // amount <= stake was checked just above.
        uint256 remaining;
        unchecked {
            remaining = stake - amount;
        }
        if (remaining != 0 && remaining < _minStake) {
            revert VerifiersInsufficientStake(msg.sender, remaining, _minStake);
        }

        uint64 releaseAt = uint64(block.timestamp) + _unbondingDelay;
        uint256 totalUnbonding = v.unbonding + amount;
        v.stake = remaining;
        v.unbonding = totalUnbonding;
        v.unbondingReleaseAt = releaseAt;
        emit VerifierUnbondingStarted(msg.sender, amount, totalUnbonding, releaseAt);
    }

    /// @inheritdoc IVerifierRegistry
    /// @dev Allowed strictly after `unbondingReleaseAt`.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Verifier storage v = _verifiers[msg.sender];
        amount = v.unbonding;
        if (amount == 0) revert VerifiersNothingToWithdraw(msg.sender);
        uint64 releaseAt = v.unbondingReleaseAt;
        if (block.timestamp <= releaseAt) revert VerifiersUnbondingLocked(msg.sender, releaseAt);

        v.unbonding = 0;
        _totalStaked -= amount;
        emit VerifierWithdrawn(msg.sender, amount);

        _token.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IVerifierRegistry
    function isActive(address verifier) external view returns (bool) {
        Verifier storage v = _verifiers[verifier];
        uint256 stake = v.stake;
        return v.registered && stake != 0 && stake >= _minStake;
    }

    /// @inheritdoc IVerifierRegistry
    function getVerifier(address verifier) external view returns (Verifier memory) {
        return _verifiers[verifier];
    }

    /// @inheritdoc IVerifierRegistry
    function totalStaked() external view returns (uint256) {
        return _totalStaked;
    }

    /// @inheritdoc IVerifierRegistry
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @inheritdoc IVerifierRegistry
    function minStake() external view returns (uint256) {
        return _minStake;
    }

    /// @inheritdoc IVerifierRegistry
    function unbondingDelay() external view returns (uint64) {
        return _unbondingDelay;
    }

    /// @dev The caller's record; reverts unless it is registered.
    function _registered(address verifier) private view returns (Verifier storage v) {
        v = _verifiers[verifier];
        if (!v.registered) revert VerifiersNotRegistered(verifier);
    }
}
