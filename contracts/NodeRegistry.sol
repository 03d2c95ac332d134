// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {INodeRegistry} from "./interfaces/INodeRegistry.sol";

/// @title NodeRegistry: the stake and service of every node.
/// @notice Holds every node's stake; the token balance of this contract always equals
/// `totalStaked`. Parameters are fixed at deployment; the only way stake leaves against a node's
/// will is `slash`, callable only by the `slasher` fixed at deployment.
/// Unbonded stake may be withdrawn strictly after `unbondingReleaseAt`, so a Slasher whose
/// challenge window is at most `unbondingDelay` can always reach stake that was bonded when a
/// batch was committed.
contract NodeRegistry is INodeRegistry, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    IERC20 private immutable _stakeToken;
    uint256 private immutable _minStakePerBlock;
    uint64 private immutable _unbondingDelay;
    address private immutable _slasher;

    mapping(address node => Node) private _nodes;
    uint256 private _totalStaked;

    /// @param token_ The stake token.
    /// @param minStakePerBlock_ Stake needed per served block.
    /// @param unbondingDelay_ Seconds between `unbond` and the earliest `withdraw`.
    /// @param slasher_ The only address that may `slash` (the Slasher, deployed later at a
    /// predicted address).
    constructor(IERC20 token_, uint256 minStakePerBlock_, uint64 unbondingDelay_, address slasher_) {
        _stakeToken = token_;
        _minStakePerBlock = minStakePerBlock_;
        _unbondingDelay = unbondingDelay_;
        _slasher = slasher_;
    }

    /// @inheritdoc INodeRegistry
    function register(
        bytes32 modelId,
        uint16 spanStart,
        uint16 spanEnd,
        uint256 pricePerTokenPerBlock,
        bytes calldata peerId,
        uint256 stake
    ) external nonReentrant {
        Node storage node = _nodes[msg.sender];
        if (node.registered) revert RegistryAlreadyRegistered(msg.sender);
        _checkService(spanStart, spanEnd, peerId);
        if (stake == 0) revert RegistryZeroAmount();
        uint256 needed = _requiredStake(spanStart, spanEnd);
        if (stake < needed) revert RegistryInsufficientStake(msg.sender, stake, needed);

        node.registered = true;
        node.modelId = modelId;
        node.spanStart = spanStart;
        node.spanEnd = spanEnd;
        node.pricePerTokenPerBlock = pricePerTokenPerBlock;
        node.peerId = peerId;
        node.stake = stake;
        _totalStaked += stake;
        emit NodeRegistered(msg.sender, modelId, spanStart, spanEnd, pricePerTokenPerBlock, peerId, stake);

        _stakeToken.safeTransferFrom(msg.sender, address(this), stake);
    }

    /// @inheritdoc INodeRegistry
    function updateService(
        bytes32 modelId,
        uint16 spanStart,
        uint16 spanEnd,
        uint256 pricePerTokenPerBlock,
        bytes calldata peerId
    ) external {
        Node storage node = _registered(msg.sender);
        _checkService(spanStart, spanEnd, peerId);
        uint256 needed = _requiredStake(spanStart, spanEnd);
        if (node.stake < needed) revert RegistryInsufficientStake(msg.sender, node.stake, needed);

        node.modelId = modelId;
        node.spanStart = spanStart;
        node.spanEnd = spanEnd;
        node.pricePerTokenPerBlock = pricePerTokenPerBlock;
        node.peerId = peerId;
        emit ServiceUpdated(msg.sender, modelId, spanStart, spanEnd, pricePerTokenPerBlock, peerId);
    }

    /// @inheritdoc INodeRegistry
    function addStake(uint256 amount) external nonReentrant {
        Node storage node = _registered(msg.sender);
        if (amount == 0) revert RegistryZeroAmount();

        uint256 newStake = node.stake + amount;
        node.stake = newStake;
        _totalStaked += amount;
        emit StakeAdded(msg.sender, amount, newStake);

        _stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc INodeRegistry
    function unbond(uint256 amount) external {
        Node storage node = _registered(msg.sender);
        if (amount == 0) revert RegistryZeroAmount();
        uint256 stake = node.stake;
        if (amount > stake) revert RegistryUnbondExceedsStake(msg.sender, amount, stake);
        // amount <= stake was checked just above.
        uint256 remaining;
        unchecked {
            remaining = stake - amount;
        }
        if (remaining != 0) {
            uint256 needed = _requiredStake(node.spanStart, node.spanEnd);
            if (remaining < needed) revert RegistryInsufficientStake(msg.sender, remaining, needed);
        }

        uint64 releaseAt = uint64(block.timestamp) + _unbondingDelay;
        uint256 totalUnbonding = node.unbonding + amount;
        node.stake = remaining;
        node.unbonding = totalUnbonding;
        node.unbondingReleaseAt = releaseAt;
        emit UnbondingStarted(msg.sender, amount, totalUnbonding, releaseAt);
    }

    /// @inheritdoc INodeRegistry
    /// @dev Allowed strictly after `unbondingReleaseAt`.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Node storage node = _nodes[msg.sender];
        amount = node.unbonding;
        if (amount == 0) revert RegistryNothingToWithdraw(msg.sender);
        uint64 releaseAt = node.unbondingReleaseAt;
        if (block.timestamp <= releaseAt) revert RegistryUnbondingLocked(msg.sender, releaseAt);

        node.unbonding = 0;
        _totalStaked -= amount;
        emit StakeWithdrawn(msg.sender, amount);

        _stakeToken.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc INodeRegistry
    /// @dev Taking nothing (a node without stake, or `amount == 0`) returns 0 and emits nothing.
    function slash(address node, uint256 amount, address recipient) external nonReentrant returns (uint256 slashed) {
        if (msg.sender != _slasher) revert RegistryOnlySlasher(msg.sender);
        Node storage n = _nodes[node];
        uint256 stake = n.stake;
        uint256 unbonding = n.unbonding;

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
            n.stake = stake - fromStake;
            n.unbonding = unbonding - fromUnbonding;
        }
        _totalStaked -= slashed;
        emit NodeSlashed(node, slashed, recipient);

        _stakeToken.safeTransfer(recipient, slashed);
    }

    /// @inheritdoc INodeRegistry
    function getNode(address node) external view returns (Node memory) {
        return _nodes[node];
    }

    /// @inheritdoc INodeRegistry
    function isActive(address node) external view returns (bool) {
        Node storage n = _nodes[node];
        uint256 stake = n.stake;
        return n.registered && stake != 0 && stake >= _requiredStake(n.spanStart, n.spanEnd);
    }

    /// @inheritdoc INodeRegistry
    /// @dev Reverts with `RegistryInvalidSpan` unless `spanStart < spanEnd`.
    function requiredStake(uint16 spanStart, uint16 spanEnd) external view returns (uint256) {
        if (spanStart >= spanEnd) revert RegistryInvalidSpan(spanStart, spanEnd);
        return _requiredStake(spanStart, spanEnd);
    }

    /// @inheritdoc INodeRegistry
    function totalStaked() external view returns (uint256) {
        return _totalStaked;
    }

    /// @inheritdoc INodeRegistry
    function stakeToken() external view returns (IERC20) {
        return _stakeToken;
    }

    /// @inheritdoc INodeRegistry
    function minStakePerBlock() external view returns (uint256) {
        return _minStakePerBlock;
    }

    /// @inheritdoc INodeRegistry
    function unbondingDelay() external view returns (uint64) {
        return _unbondingDelay;
    }

    /// @inheritdoc INodeRegistry
    function slasher() external view returns (address) {
        return _slasher;
    }

    /// @dev The caller's record; reverts unless it is registered.
    function _registered(address node) private view returns (Node storage n) {
        n = _nodes[node];
        if (!n.registered) revert RegistryNotRegistered(node);
    }

    /// @dev Span and peer id rules shared by `register` and `updateService`.
    function _checkService(uint16 spanStart, uint16 spanEnd, bytes calldata peerId) private pure {
        if (spanStart >= spanEnd) revert RegistryInvalidSpan(spanStart, spanEnd);
        if (peerId.length == 0) revert RegistryEmptyPeerId();
    }

    /// @dev Callers guarantee spanStart <= spanEnd (stored spans are validated on write).
    function _requiredStake(uint16 spanStart, uint16 spanEnd) private view returns (uint256) {
        return _minStakePerBlock * (spanEnd - spanStart);
    }
}
