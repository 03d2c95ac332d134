// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IPaymentChannels} from "./interfaces/IPaymentChannels.sol";
import {SaltedEIP712} from "./SaltedEIP712.sol";

/// @title PaymentChannels: per-token payment from a client to a server without per-token transactions.
/// @notice Holds every channel's escrow; the token balance of this contract always equals
/// `totalEscrowed`. `topUp` is allowed only while the channel is open and not yet expired (an
/// expired channel can only be reclaimed, so a server never sees a channel it stopped trusting
/// come back to life). A client cannot open a channel to itself or to the zero address.
contract PaymentChannels is IPaymentChannels, SaltedEIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The EIP-712 type hash of a voucher.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(uint256 channelId,uint256 cumulativeAmount)");

    /// @dev Storage layout of a channel: `client`, `expiry` and `closed` share one slot.
    struct ChannelState {
        address client;
        uint64 expiry;
        bool closed;
        address server;
        uint256 deposit;
        uint256 redeemed;
    }

    IERC20 private immutable _token;
    uint64 private immutable _maxDuration;

    mapping(uint256 channelId => ChannelState) private _channels;
    uint256 private _channelCount;
    uint256 private _totalEscrowed;

    /// @param token_ The payment token.
    /// @param maxDuration_ The longest a channel may stay open from any `open` or `topUp`, in seconds.
    /// @param domainSalt_ The EIP-712 domain's salt: a value no earlier deployment used (random),
    /// so vouchers signed for another deployment at the same address never count here.
    constructor(IERC20 token_, uint64 maxDuration_, bytes32 domainSalt_)
        SaltedEIP712("stakeswarm PaymentChannels", "1", domainSalt_)
    {
        _token = token_;
        _maxDuration = maxDuration_;
    }

    /// @inheritdoc IPaymentChannels
    function open(address server, uint256 deposit, uint64 expiry) external nonReentrant returns (uint256 channelId) {
        if (server == address(0) || server == msg.sender) revert ChannelsInvalidServer(server);
        if (deposit == 0) revert ChannelsZeroDeposit();
        uint64 latest = uint64(block.timestamp) + _maxDuration;
        if (expiry <= block.timestamp || expiry > latest) {
            revert ChannelsInvalidExpiry(expiry, uint64(block.timestamp) + 1, latest);
        }

        channelId = ++_channelCount;
        _channels[channelId] = ChannelState({
            client: msg.sender,
            expiry: expiry,
            closed: false,
            server: server,
            deposit: deposit,
            redeemed: 0
        });
        _totalEscrowed += deposit;
        emit ChannelOpened(channelId, msg.sender, server, deposit, expiry);

        _token.safeTransferFrom(msg.sender, address(this), deposit);
    }

    /// @inheritdoc IPaymentChannels
    /// @dev Reverts with `ChannelsExpired` once `block.timestamp >= expiry`.
    function topUp(uint256 channelId, uint256 amount, uint64 newExpiry) external nonReentrant {
        ChannelState storage c = _existing(channelId);
        if (c.client != msg.sender) revert ChannelsNotClient(channelId, msg.sender);
        if (c.closed) revert ChannelsClosed(channelId);
        uint64 expiry = c.expiry;
        if (block.timestamp >= expiry) revert ChannelsExpired(channelId, expiry);
        uint64 latest = uint64(block.timestamp) + _maxDuration;
        if (newExpiry < expiry || newExpiry > latest) revert ChannelsInvalidExpiry(newExpiry, expiry, latest);

        uint256 newDeposit = c.deposit + amount;
        c.deposit = newDeposit;
        c.expiry = newExpiry;
        _totalEscrowed += amount;
        emit ChannelToppedUp(channelId, amount, newDeposit, newExpiry);

        if (amount != 0) _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc IPaymentChannels
    function redeem(uint256 channelId, uint256 cumulativeAmount, bytes calldata signature)
        external
        nonReentrant
        returns (uint256 paid)
    {
        ChannelState storage c = _existing(channelId);
        if (c.server != msg.sender) revert ChannelsNotServer(channelId, msg.sender);
        if (c.closed) revert ChannelsClosed(channelId);
        uint64 expiry = c.expiry;
        if (block.timestamp >= expiry) revert ChannelsExpired(channelId, expiry);
        uint256 deposit = c.deposit;
        if (cumulativeAmount > deposit) revert ChannelsAmountExceedsDeposit(channelId, cumulativeAmount, deposit);
        uint256 redeemed = c.redeemed;
        if (cumulativeAmount <= redeemed) revert ChannelsVoucherNotNewer(channelId, cumulativeAmount, redeemed);
        // slither-disable-next-line unused-return (only the error's argument is dropped)
        (address signer, ECDSA.RecoverError err,) =
            ECDSA.tryRecoverCalldata(voucherDigest(channelId, cumulativeAmount), signature);
        if (err != ECDSA.RecoverError.NoError || signer != c.client) revert ChannelsInvalidSignature(channelId, signer);

        // cumulativeAmount > redeemed was checked above.
        unchecked {
            paid = cumulativeAmount - redeemed;
        }
        c.redeemed = cumulativeAmount;
        _totalEscrowed -= paid;
        emit VoucherRedeemed(channelId, msg.sender, cumulativeAmount, paid);

        _token.safeTransfer(msg.sender, paid);
    }

    /// @inheritdoc IPaymentChannels
    /// @dev Allowed from `block.timestamp >= expiry`; the channel closes even when nothing is left.
    function reclaim(uint256 channelId) external nonReentrant returns (uint256 refunded) {
        ChannelState storage c = _existing(channelId);
        if (c.client != msg.sender) revert ChannelsNotClient(channelId, msg.sender);
        if (c.closed) revert ChannelsClosed(channelId);
        uint64 expiry = c.expiry;
        if (block.timestamp < expiry) revert ChannelsNotExpired(channelId, expiry);

        // redeemed <= deposit: redeem never pays past the deposit.
        unchecked {
            refunded = c.deposit - c.redeemed;
        }
        c.closed = true;
        _totalEscrowed -= refunded;
        emit ChannelReclaimed(channelId, msg.sender, refunded);

        if (refunded != 0) _token.safeTransfer(msg.sender, refunded);
    }

    /// @inheritdoc IPaymentChannels
    function getChannel(uint256 channelId) external view returns (Channel memory) {
        ChannelState storage c = _existing(channelId);
        return Channel({
            client: c.client,
            server: c.server,
            deposit: c.deposit,
            redeemed: c.redeemed,
            expiry: c.expiry,
            closed: c.closed
        });
    }

    /// @inheritdoc IPaymentChannels
    function voucherDigest(uint256 channelId, uint256 cumulativeAmount) public view returns (bytes32) {
        return _hashTypedData(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount)));
    }

    /// @inheritdoc IPaymentChannels
    function channelCount() external view returns (uint256) {
        return _channelCount;
    }

    /// @inheritdoc IPaymentChannels
    function totalEscrowed() external view returns (uint256) {
        return _totalEscrowed;
    }

    /// @inheritdoc IPaymentChannels
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @inheritdoc IPaymentChannels
    function maxDuration() external view returns (uint64) {
        return _maxDuration;
    }

    /// @dev The channel `channelId`; reverts with `ChannelsUnknownChannel` if it was never opened.
    function _existing(uint256 channelId) private view returns (ChannelState storage c) {
        c = _channels[channelId];
        if (c.client == address(0)) revert ChannelsUnknownChannel(channelId);
    }
}
