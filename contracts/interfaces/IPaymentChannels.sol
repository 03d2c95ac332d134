// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Unidirectional payment channels from clients to servers.
/// @notice A client escrows a deposit for one server until an expiry. Per step it signs an
/// EIP-712 `Voucher(uint256 channelId,uint256 cumulativeAmount)` (domain name
/// "stakeswarm PaymentChannels", version "1" and the deployment's salt); the server redeems the highest voucher before
/// expiry and is paid the difference to what it already redeemed. After expiry the client
/// reclaims the rest. No per-token transaction ever.
interface IPaymentChannels {
    /// @notice One channel.
    struct Channel {
        address client; // who deposited and signs vouchers
        address server; // who redeems
        uint256 deposit; // total escrowed so far
        uint256 redeemed; // total paid to the server so far
        uint64 expiry; // redeem before, reclaim from
        bool closed; // reclaimed by the client
    }

    event ChannelOpened(
        uint256 indexed channelId, address indexed client, address indexed server, uint256 deposit, uint64 expiry
    );
    event ChannelToppedUp(uint256 indexed channelId, uint256 amount, uint256 newDeposit, uint64 newExpiry);
    event VoucherRedeemed(uint256 indexed channelId, address indexed server, uint256 cumulativeAmount, uint256 paid);
    event ChannelReclaimed(uint256 indexed channelId, address indexed client, uint256 refunded);

    error ChannelsZeroDeposit();
    error ChannelsInvalidServer(address server);
    error ChannelsInvalidExpiry(uint64 expiry, uint64 earliest, uint64 latest);
    error ChannelsUnknownChannel(uint256 channelId);
    error ChannelsNotClient(uint256 channelId, address caller);
    error ChannelsNotServer(uint256 channelId, address caller);
    error ChannelsClosed(uint256 channelId);
    error ChannelsExpired(uint256 channelId, uint64 expiry);
    error ChannelsNotExpired(uint256 channelId, uint64 expiry);
    error ChannelsInvalidSignature(uint256 channelId, address signer);
    error ChannelsAmountExceedsDeposit(uint256 channelId, uint256 cumulativeAmount, uint256 deposit);
    error ChannelsVoucherNotNewer(uint256 channelId, uint256 cumulativeAmount, uint256 redeemed);

    /// @notice Escrow `deposit` tokens (approve first) for `server` until `expiry`, which must lie
    /// in `(now, now + maxDuration]`. Channel ids start at 1.
    function open(address server, uint256 deposit, uint64 expiry) external returns (uint256 channelId);

    /// @notice The client adds `amount` (may be 0) and moves the expiry to `newExpiry`
    /// (not earlier than the current one, at most `now + maxDuration`).
    function topUp(uint256 channelId, uint256 amount, uint64 newExpiry) external;

    /// @notice The server redeems a voucher signed by the client before expiry and is paid
    /// `cumulativeAmount - redeemed`. Wrong signer, chain, contract or a malleable signature
    /// revert with `ChannelsInvalidSignature`; an old voucher with `ChannelsVoucherNotNewer`.
    function redeem(uint256 channelId, uint256 cumulativeAmount, bytes calldata signature)
        external
        returns (uint256 paid);

    /// @notice After expiry the client takes back `deposit - redeemed` and the channel closes.
    function reclaim(uint256 channelId) external returns (uint256 refunded);

    /// @notice The channel `channelId`; reverts with `ChannelsUnknownChannel` if there is none.
    function getChannel(uint256 channelId) external view returns (Channel memory);

    /// @notice The EIP-712 digest a client signs for a voucher.
    function voucherDigest(uint256 channelId, uint256 cumulativeAmount) external view returns (bytes32);

    /// @notice How many channels were opened (the latest channel id).
    function channelCount() external view returns (uint256);

    /// @notice Sum of `deposit - redeemed` over open channels (equals this contract's token balance).
    function totalEscrowed() external view returns (uint256);

    function token() external view returns (IERC20);

    function maxDuration() external view returns (uint64);
}
