// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {IVerifierRegistry} from "./interfaces/IVerifierRegistry.sol";
import {StakeRegistry} from "./StakeRegistry.sol";

/// @title VerifierRegistry: who may sign verdicts.
/// @notice The shared stake lifecycle with one rule: an active verifier holds at least `minStake`.
contract VerifierRegistry is IVerifierRegistry, StakeRegistry {
    uint256 private immutable _minStake;

    /// @param token_ The stake token.
    /// @param minStake_ Active stake a verifier needs to sign verdicts.
    /// @param unbondingDelay_ Seconds between `unbond` and the earliest `withdraw`.
    constructor(IERC20 token_, uint256 minStake_, uint64 unbondingDelay_) StakeRegistry(token_, unbondingDelay_) {
        _minStake = minStake_;
    }

    /// @inheritdoc IVerifierRegistry
    function register(uint256 stake) external nonReentrant {
        _register(msg.sender, stake, _minStake);
        emit VerifierRegistered(msg.sender, stake);

        _pullStake(msg.sender, stake);
    }

    /// @inheritdoc IVerifierRegistry
    function isActive(address verifier) external view returns (bool) {
        Stake storage s = _stakeOf(verifier);
        uint256 stake = s.stake;
        return s.registered && stake != 0 && stake >= _minStake;
    }

    /// @inheritdoc IVerifierRegistry
    function minStake() external view returns (uint256) {
        return _minStake;
    }

    function _requiredStake(address) internal view override returns (uint256) {
        return _minStake;
    }
}
