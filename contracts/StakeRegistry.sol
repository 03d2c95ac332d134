// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IStakeRegistry} from "./interfaces/IStakeRegistry.sol";

/// @title StakeRegistry: register, add stake, unbond, rebond, withdraw; shared by nodes and verifiers.
/// @notice Holds every account's stake: the token balance of this contract always equals
/// `totalStaked`. A registry says how much stake an account needs (`_requiredStake`) and may hold
/// withdrawals longer (`_withdrawableAt`), in the style of OpenZeppelin's hooks.
abstract contract StakeRegistry is IStakeRegistry, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    IERC20 private immutable _stakeToken;
    uint64 private immutable _unbondingDelay;

    mapping(address account => Stake) private _stakes;
    uint256 private _totalStaked;

    /// @param token_ The stake token.
    /// @param unbondingDelay_ Seconds between `unbond` and the earliest `withdraw`.
    constructor(IERC20 token_, uint64 unbondingDelay_) {
        _stakeToken = token_;
        _unbondingDelay = unbondingDelay_;
    }

    /// @inheritdoc IStakeRegistry
    function addStake(uint256 amount) external nonReentrant {
        Stake storage s = _registered(msg.sender);
        if (amount == 0) revert StakeZeroAmount();

        uint256 newStake = s.stake + amount;
        s.stake = newStake;
        _totalStaked += amount;
        emit StakeAdded(msg.sender, amount, newStake);

        _stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc IStakeRegistry
    /// @dev A second unbond adds to `unbonding` and restarts the release time.
    function unbond(uint256 amount) external {
        Stake storage s = _registered(msg.sender);
        if (amount == 0) revert StakeZeroAmount();
        uint256 stake = s.stake;
        if (amount > stake) revert StakeUnbondExceedsStake(msg.sender, amount, stake);
        // amount <= stake was checked just above.
        uint256 remaining;
        unchecked {
            remaining = stake - amount;
        }
        if (remaining != 0) {
            uint256 needed = _requiredStake(msg.sender);
            if (remaining < needed) revert StakeInsufficient(msg.sender, remaining, needed);
        }

        uint64 releaseAt = uint64(block.timestamp) + _unbondingDelay;
        uint256 totalUnbonding = s.unbonding + amount;
        s.stake = remaining;
        s.unbonding = totalUnbonding;
        s.unbondingReleaseAt = releaseAt;
        emit UnbondingStarted(msg.sender, amount, totalUnbonding, releaseAt);
    }

    /// @inheritdoc IStakeRegistry
    /// @dev No token moves: `totalStaked` counts active and unbonding stake alike. The stake stays
    /// slashable throughout (it only changes side), so no challenge window is shortened.
    function rebond(uint256 amount) external {
        Stake storage s = _registered(msg.sender);
        if (amount == 0) revert StakeZeroAmount();
        uint256 unbonding = s.unbonding;
        if (amount > unbonding) revert StakeRebondExceedsUnbonding(msg.sender, amount, unbonding);
        uint256 newStake = s.stake + amount;
        uint256 needed = _requiredStake(msg.sender);
        if (newStake < needed) revert StakeInsufficient(msg.sender, newStake, needed);

        // amount <= unbonding was checked just above.
        uint256 remaining;
        unchecked {
            remaining = unbonding - amount;
        }
        s.stake = newStake;
        s.unbonding = remaining;
        if (remaining == 0) s.unbondingReleaseAt = 0;
        emit StakeRebonded(msg.sender, amount, newStake, remaining);
    }

    /// @inheritdoc IStakeRegistry
    function withdraw() external nonReentrant returns (uint256 amount) {
        Stake storage s = _stakes[msg.sender];
        amount = s.unbonding;
        if (amount == 0) revert StakeNothingToWithdraw(msg.sender);
        uint64 until = _withdrawableAt(msg.sender);
        if (block.timestamp <= until) revert StakeUnbondingLocked(msg.sender, until);

        s.unbonding = 0;
        _totalStaked -= amount;
        emit StakeWithdrawn(msg.sender, amount);

        _stakeToken.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IStakeRegistry
    function getStake(address account) external view returns (Stake memory) {
        return _stakes[account];
    }

    /// @inheritdoc IStakeRegistry
    function withdrawableAt(address account) external view returns (uint64) {
        return _withdrawableAt(account);
    }

    /// @inheritdoc IStakeRegistry
    function totalStaked() external view returns (uint256) {
        return _totalStaked;
    }

    /// @inheritdoc IStakeRegistry
    function stakeToken() public view returns (IERC20) {
        return _stakeToken;
    }

    /// @inheritdoc IStakeRegistry
    function unbondingDelay() external view returns (uint64) {
        return _unbondingDelay;
    }

    /// @dev The stake `account` needs while it has any active stake.
    function _requiredStake(address account) internal view virtual returns (uint256);

    /// @dev After this time (strictly) `account` may withdraw; a registry may only extend it.
    function _withdrawableAt(address account) internal view virtual returns (uint64) {
        return _stakes[account].unbondingReleaseAt;
    }

    /// @dev Registers `account` with `stake` (at least `needed`) and pulls the tokens: the caller
    /// has written the registry's own record (with its event) before, as checks-effects-interactions wants.
    function _register(address account, uint256 stake, uint256 needed) internal {
        Stake storage s = _stakes[account];
        if (s.registered) revert StakeAlreadyRegistered(account);
        if (stake == 0) revert StakeZeroAmount();
        if (stake < needed) revert StakeInsufficient(account, stake, needed);

        s.registered = true;
        s.stake = stake;
        _totalStaked += stake;
    }

    /// @dev Pulls `stake` tokens from `account` (the interaction of a registration).
    function _pullStake(address account, uint256 stake) internal {
        _stakeToken.safeTransferFrom(account, address(this), stake);
    }

    /// @dev Takes up to `amount` of `account`'s stake (active first, then unbonding) and sends it
    /// out of `totalStaked` (the caller pays it out); returns what was taken (0: nothing moved).
    function _slash(address account, uint256 amount) internal returns (uint256 slashed) {
        Stake storage s = _stakes[account];
        uint256 stake = s.stake;
        uint256 unbonding = s.unbonding;

        uint256 fromStake = amount < stake ? amount : stake;
        // fromStake <= amount, so the subtraction cannot underflow.
        uint256 rest;
        unchecked {
            rest = amount - fromStake;
        }
        uint256 fromUnbonding = rest < unbonding ? rest : unbonding;
        slashed = fromStake + fromUnbonding;
        if (slashed == 0) return 0;

        // fromStake <= stake and fromUnbonding <= unbonding by the min() above.
        unchecked {
            s.stake = stake - fromStake;
            s.unbonding = unbonding - fromUnbonding;
        }
        _totalStaked -= slashed;
    }

    /// @dev Sends `amount` of stake token to `recipient` (the interaction of a slash).
    function _pay(address recipient, uint256 amount) internal {
        _stakeToken.safeTransfer(recipient, amount);
    }

    /// @dev The record of `account`, registered or not.
    function _stakeOf(address account) internal view returns (Stake storage) {
        return _stakes[account];
    }

    /// @dev The record of `account`; reverts unless it is registered.
    function _registered(address account) internal view returns (Stake storage s) {
        s = _stakes[account];
        if (!s.registered) revert StakeNotRegistered(account);
    }
}
