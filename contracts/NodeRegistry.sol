// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {ISlasher} from "./interfaces/ISlasher.sol";
import {StakeRegistry} from "./StakeRegistry.sol";

/// @title NodeRegistry: the stake and service of every node.
/// @notice Parameters are fixed at deployment; the only way stake leaves against a node's will is
/// `slash`, callable only by the `slasher` fixed at deployment. A node's unbonded stake may be
/// withdrawn strictly after both its unbonding release and the end of the challenge window of
/// its last commit, so every slash of a commit finds the stake that was bonded when it was made.
contract NodeRegistry is INodeRegistry, StakeRegistry {
    /// @dev What a node serves; its stake lives in `StakeRegistry`.
    struct Service {
        bytes32 modelId;
        uint16 spanStart;
        uint16 spanEnd;
        uint64 lastCommitAt; // packed with the span: `recordCommit` writes one warm slot
        uint256 pricePerTokenPerBlock;
        bytes peerId;
    }

    uint256 private immutable _minStakePerBlock;
    address private immutable _commitments;
    address private immutable _slasher;

    mapping(address node => Service) private _services;

    /// @param token_ The stake token.
    /// @param minStakePerBlock_ Stake needed per served block.
    /// @param unbondingDelay_ Seconds between `unbond` and the earliest `withdraw`.
    /// @param commitments_ The only address that may `recordCommit` (the Commitments contract,
    /// deployed next at a predicted address).
    /// @param slasher_ The only address that may `slash` (the Slasher, deployed later at a
    /// predicted address).
    constructor(IERC20 token_, uint256 minStakePerBlock_, uint64 unbondingDelay_, address commitments_, address slasher_)
        StakeRegistry(token_, unbondingDelay_)
    {
        if (commitments_ == address(0) || slasher_ == address(0)) revert RegistryZeroAddress();
        _minStakePerBlock = minStakePerBlock_;
        _commitments = commitments_;
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
        _checkService(spanStart, spanEnd, peerId);
        _register(msg.sender, stake, _spanStake(spanStart, spanEnd));
        _writeService(modelId, spanStart, spanEnd, pricePerTokenPerBlock, peerId);
        emit NodeRegistered(msg.sender, modelId, spanStart, spanEnd, pricePerTokenPerBlock, peerId, stake);

        _pullStake(msg.sender, stake);
    }

    /// @inheritdoc INodeRegistry
    function updateService(
        bytes32 modelId,
        uint16 spanStart,
        uint16 spanEnd,
        uint256 pricePerTokenPerBlock,
        bytes calldata peerId
    ) external {
        uint256 stake = _registered(msg.sender).stake;
        _checkService(spanStart, spanEnd, peerId);
        uint256 needed = _spanStake(spanStart, spanEnd);
        if (stake < needed) revert StakeInsufficient(msg.sender, stake, needed);

        _writeService(modelId, spanStart, spanEnd, pricePerTokenPerBlock, peerId);
        emit ServiceUpdated(msg.sender, modelId, spanStart, spanEnd, pricePerTokenPerBlock, peerId);
    }

    /// @inheritdoc INodeRegistry
    function recordCommit(address node, bytes32 modelId) external {
        if (msg.sender != _commitments) revert RegistryOnlyCommitments(msg.sender);
        if (!_isActive(node)) revert RegistryNodeInactive(node);
        Service storage service = _services[node];
        bytes32 registeredModelId = service.modelId;
        if (modelId != registeredModelId) revert RegistryModelMismatch(node, modelId, registeredModelId);
        service.lastCommitAt = uint64(block.timestamp);
    }

    /// @inheritdoc INodeRegistry
    /// @dev Taking nothing (a node without stake, or `amount == 0`) returns 0 and emits nothing.
    function slash(address node, uint256 amount, address recipient) external nonReentrant returns (uint256 slashed) {
        if (msg.sender != _slasher) revert RegistryOnlySlasher(msg.sender);
        slashed = _slash(node, amount);
        if (slashed == 0) return 0;
        emit NodeSlashed(node, slashed, recipient);

        _pay(recipient, slashed);
    }

    /// @inheritdoc INodeRegistry
    function getNode(address node) external view returns (Node memory n) {
        Service storage service = _services[node];
        Stake storage s = _stakeOf(node);
        n = Node({
            modelId: service.modelId,
            spanStart: service.spanStart,
            spanEnd: service.spanEnd,
            pricePerTokenPerBlock: service.pricePerTokenPerBlock,
            peerId: service.peerId,
            stake: s.stake,
            unbonding: s.unbonding,
            unbondingReleaseAt: s.unbondingReleaseAt,
            lastCommitAt: service.lastCommitAt,
            registered: s.registered
        });
    }

    /// @inheritdoc INodeRegistry
    function slashableStake(address node) external view returns (uint256) {
        Stake storage s = _stakeOf(node);
        return s.stake + s.unbonding;
    }

    /// @inheritdoc INodeRegistry
    function isActive(address node) external view returns (bool) {
        return _isActive(node);
    }

    /// @inheritdoc INodeRegistry
    /// @dev Reverts with `RegistryInvalidSpan` unless `spanStart < spanEnd`.
    function requiredStake(uint16 spanStart, uint16 spanEnd) external view returns (uint256) {
        if (spanStart >= spanEnd) revert RegistryInvalidSpan(spanStart, spanEnd);
        return _spanStake(spanStart, spanEnd);
    }

    /// @inheritdoc INodeRegistry
    function minStakePerBlock() external view returns (uint256) {
        return _minStakePerBlock;
    }

    /// @inheritdoc INodeRegistry
    function slasher() external view returns (address) {
        return _slasher;
    }

    /// @inheritdoc INodeRegistry
    function commitments() external view returns (address) {
        return _commitments;
    }

    /// @dev A node's span needs `minStakePerBlock` per block.
    function _requiredStake(address node) internal view override returns (uint256) {
        Service storage service = _services[node];
        return _spanStake(service.spanStart, service.spanEnd);
    }

    /// @dev Held until the unbonding release and the end of the last commit's challenge window.
    function _withdrawableAt(address node) internal view override returns (uint64) {
        uint64 releaseAt = super._withdrawableAt(node);
        uint64 lastCommitAt = _services[node].lastCommitAt;
        if (lastCommitAt == 0) return releaseAt;
        uint64 windowClosesAt = lastCommitAt + ISlasher(_slasher).challengeWindow();
        return windowClosesAt > releaseAt ? windowClosesAt : releaseAt;
    }

    function _isActive(address node) private view returns (bool) {
        Stake storage s = _stakeOf(node);
        uint256 stake = s.stake;
        return s.registered && stake != 0 && stake >= _requiredStake(node);
    }

    /// @dev The caller's service as `register` and `updateService` set it (its last commit stays).
    function _writeService(
        bytes32 modelId,
        uint16 spanStart,
        uint16 spanEnd,
        uint256 pricePerTokenPerBlock,
        bytes calldata peerId
    ) private {
        Service storage service = _services[msg.sender];
        service.modelId = modelId;
        service.spanStart = spanStart;
        service.spanEnd = spanEnd;
        service.pricePerTokenPerBlock = pricePerTokenPerBlock;
        service.peerId = peerId;
    }

    /// @dev Span and peer id rules shared by `register` and `updateService`.
    function _checkService(uint16 spanStart, uint16 spanEnd, bytes calldata peerId) private pure {
        if (spanStart >= spanEnd) revert RegistryInvalidSpan(spanStart, spanEnd);
        if (peerId.length == 0) revert RegistryEmptyPeerId();
    }

    /// @dev Callers guarantee spanStart <= spanEnd (stored spans are validated on write).
    function _spanStake(uint16 spanStart, uint16 spanEnd) private view returns (uint256) {
        return _minStakePerBlock * (spanEnd - spanStart);
    }
}
