// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {PaymentChannels} from "../PaymentChannels.sol";
import {StakeToken} from "../StakeToken.sol";
import {IPaymentChannels} from "../interfaces/IPaymentChannels.sol";

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {HookToken, Reenterer} from "./helpers/Reentrancy.sol";
import {TestBase} from "./helpers/TestBase.sol";

/// @title PaymentChannels tests: open / topUp / redeem / reclaim, vouchers and their signatures.
contract PaymentChannelsTest is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;
    uint64 internal constant MAX_DURATION = 30 days;
    uint64 internal constant T0 = 1_700_000_000;
    uint256 internal constant CLIENT_PK = 0xC11E47;
    uint256 internal constant STRANGER_PK = 0x5712A;
    address internal constant SERVER = address(0x5E4E4);

    StakeToken internal token;
    PaymentChannels internal channels;
    address internal client;

    function setUp() public {
        vm.warp(T0);
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        channels = new PaymentChannels(token, MAX_DURATION, keccak256("channels salt"));
        client = vm.addr(CLIENT_PK);
        token.transfer(client, 1_000_000e18);
        vm.prank(client);
        token.approve(address(channels), type(uint256).max);
    }

    function _open(uint256 deposit, uint64 expiry) internal returns (uint256 id) {
        vm.prank(client);
        id = channels.open(SERVER, deposit, expiry);
    }

    function _voucher(uint256 pk, uint256 id, uint256 amount) internal view returns (bytes memory) {
        return sign(pk, channels.voucherDigest(id, amount));
    }

    function _redeem(uint256 id, uint256 amount, bytes memory signature) internal returns (uint256 paid) {
        vm.prank(SERVER);
        paid = channels.redeem(id, amount, signature);
    }

    /// @dev The voucher digest as any EIP-712 signer computes it, for any chain and contract.
    function _digest(uint256 chainId, address verifyingContract, uint256 id, uint256 amount)
        internal
        pure
        returns (bytes32)
    {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256(
                    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract,bytes32 salt)"
                ),
                keccak256("stakeswarm PaymentChannels"),
                keccak256("1"),
                chainId,
                verifyingContract,
                keccak256("channels salt")
            )
        );
        bytes32 structHash =
            keccak256(abi.encode(keccak256("Voucher(uint256 channelId,uint256 cumulativeAmount)"), id, amount));
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    // ---- constructor and views ---------------------------------------------------------------

    function test_constructor_setsParameters() public view {
        assertEq(address(channels.token()), address(token), "token");
        assertEq(uint256(channels.maxDuration()), MAX_DURATION, "maxDuration");
        assertEq(channels.channelCount(), 0, "channelCount");
        assertEq(channels.totalEscrowed(), 0, "totalEscrowed");
    }

    function test_voucherDigest_isTheEip712Digest() public view {
        assertEq(
            channels.voucherDigest(7, 123),
            _digest(block.chainid, address(channels), 7, 123),
            "digest matches an independent EIP-712 computation"
        );
    }

    function test_getChannel_revertsOnUnknownChannel() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsUnknownChannel.selector, 1));
        channels.getChannel(1);
    }

    // ---- open --------------------------------------------------------------------------------

    function test_open_escrowsDeposit() public {
        vm.expectEmit(address(channels));
        emit IPaymentChannels.ChannelOpened(1, client, SERVER, 100e18, T0 + 1 days);
        uint256 id = _open(100e18, T0 + 1 days);
        vm.snapshotGasLastCall("stakeswarm", "PaymentChannels.open");
        uint256 second = _open(1, T0 + 1);

        assertEq(id, 1, "first id");
        assertEq(second, 2, "second id");
        assertEq(channels.channelCount(), 2, "channelCount");
        IPaymentChannels.Channel memory c = channels.getChannel(id);
        assertEq(c.client, client, "client");
        assertEq(c.server, SERVER, "server");
        assertEq(c.deposit, 100e18, "deposit");
        assertEq(c.redeemed, 0, "redeemed");
        assertEq(uint256(c.expiry), T0 + 1 days, "expiry");
        assertFalse(c.closed, "closed");
        assertEq(channels.totalEscrowed(), 100e18 + 1, "totalEscrowed");
        assertEq(token.balanceOf(address(channels)), 100e18 + 1, "balance");
    }

    function test_open_acceptsExpiryAtMaxDuration() public {
        uint256 id = _open(1e18, T0 + MAX_DURATION);
        assertEq(uint256(channels.getChannel(id).expiry), T0 + MAX_DURATION, "expiry");
    }

    function test_open_revertsOnZeroServer() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidServer.selector, address(0)));
        vm.prank(client);
        channels.open(address(0), 1e18, T0 + 1 days);
    }

    function test_open_revertsOnChannelToSelf() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidServer.selector, client));
        vm.prank(client);
        channels.open(client, 1e18, T0 + 1 days);
    }

    function test_open_revertsOnZeroDeposit() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsZeroDeposit.selector));
        _open(0, T0 + 1 days);
    }

    function test_open_revertsOnExpiryNow() public {
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidExpiry.selector, T0, T0 + 1, T0 + MAX_DURATION)
        );
        _open(1e18, T0);
    }

    function test_open_revertsOnExpiryPastMaxDuration() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.ChannelsInvalidExpiry.selector, T0 + MAX_DURATION + 1, T0 + 1, T0 + MAX_DURATION
            )
        );
        _open(1e18, T0 + MAX_DURATION + 1);
    }

    function testFuzz_open_anyDepositAndExpiryInRange(uint256 deposit, uint64 expiry) public {
        deposit = bound(deposit, 1, token.balanceOf(client));
        expiry = uint64(bound(expiry, T0 + 1, T0 + MAX_DURATION));
        uint256 id = _open(deposit, expiry);
        assertEq(channels.getChannel(id).deposit, deposit, "deposit");
        assertEq(channels.totalEscrowed(), token.balanceOf(address(channels)), "totalEscrowed == balance");
    }

    // ---- topUp -------------------------------------------------------------------------------

    function test_topUp_addsDepositAndExtendsExpiry() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.warp(T0 + 12 hours);
        vm.expectEmit(address(channels));
        emit IPaymentChannels.ChannelToppedUp(id, 50e18, 150e18, T0 + 3 days);
        vm.prank(client);
        channels.topUp(id, 50e18, T0 + 3 days);
        IPaymentChannels.Channel memory c = channels.getChannel(id);
        assertEq(c.deposit, 150e18, "deposit");
        assertEq(uint256(c.expiry), T0 + 3 days, "expiry");
        assertEq(channels.totalEscrowed(), 150e18, "totalEscrowed");
        assertEq(token.balanceOf(address(channels)), 150e18, "balance");
    }

    function test_topUp_zeroAmountOnlyExtends() public {
        uint256 id = _open(100e18, T0 + 1 days);
        uint256 before = token.balanceOf(client);
        vm.prank(client);
        channels.topUp(id, 0, T0 + 2 days);
        assertEq(uint256(channels.getChannel(id).expiry), T0 + 2 days, "expiry");
        assertEq(token.balanceOf(client), before, "nothing pulled");
    }

    function test_topUp_revertsOnUnknownChannel() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsUnknownChannel.selector, 9));
        vm.prank(client);
        channels.topUp(9, 1, T0 + 1 days);
    }

    function test_topUp_revertsForNonClient() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsNotClient.selector, id, SERVER));
        vm.prank(SERVER);
        channels.topUp(id, 1, T0 + 1 days);
    }

    function test_topUp_revertsOnClosedChannel() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.warp(T0 + 1 days);
        vm.startPrank(client);
        channels.reclaim(id);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsClosed.selector, id));
        channels.topUp(id, 1, T0 + 2 days);
        vm.stopPrank();
    }

    function test_topUp_revertsAtExpiry() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.warp(T0 + 1 days);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsExpired.selector, id, T0 + 1 days));
        vm.prank(client);
        channels.topUp(id, 1, T0 + 2 days);
    }

    function test_topUp_revertsOnEarlierExpiry() public {
        uint256 id = _open(100e18, T0 + 2 days);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.ChannelsInvalidExpiry.selector, T0 + 1 days, T0 + 2 days, T0 + MAX_DURATION
            )
        );
        vm.prank(client);
        channels.topUp(id, 1, T0 + 1 days);
    }

    function test_topUp_revertsPastMaxDuration() public {
        uint256 id = _open(100e18, T0 + 2 days);
        vm.warp(T0 + 1 days);
        uint64 latest = T0 + 1 days + MAX_DURATION;
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidExpiry.selector, latest + 1, T0 + 2 days, latest)
        );
        vm.prank(client);
        channels.topUp(id, 1, latest + 1);
    }

    // ---- redeem ------------------------------------------------------------------------------

    function test_redeem_paysTheDeltaOfCumulativeVouchers() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.expectEmit(address(channels));
        emit IPaymentChannels.VoucherRedeemed(id, SERVER, 30e18, 30e18);
        assertEq(_redeem(id, 30e18, _voucher(CLIENT_PK, id, 30e18)), 30e18, "first payment");
        vm.snapshotGasLastCall("stakeswarm", "PaymentChannels.redeem (first voucher)");
        bytes memory second = _voucher(CLIENT_PK, id, 75e18);
        assertEq(_redeem(id, 75e18, second), 45e18, "second payment is the delta");
        vm.snapshotGasLastCall("stakeswarm", "PaymentChannels.redeem (later voucher)");

        assertEq(token.balanceOf(SERVER), 75e18, "server paid");
        assertEq(channels.getChannel(id).redeemed, 75e18, "redeemed");
        assertEq(channels.totalEscrowed(), 25e18, "totalEscrowed");
        assertEq(token.balanceOf(address(channels)), 25e18, "balance");
    }

    function test_redeem_acceptsTheWholeDepositJustBeforeExpiry() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.warp(T0 + 1 days - 1);
        assertEq(_redeem(id, 100e18, _voucher(CLIENT_PK, id, 100e18)), 100e18, "paid");
    }

    function test_redeem_revertsOnUnknownChannel() public {
        bytes memory voucher = _voucher(CLIENT_PK, 3, 1);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsUnknownChannel.selector, 3));
        _redeem(3, 1, voucher);
    }

    function test_redeem_revertsForNonServer() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = _voucher(CLIENT_PK, id, 1e18);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsNotServer.selector, id, client));
        vm.prank(client);
        channels.redeem(id, 1e18, voucher);
    }

    function test_redeem_revertsOnClosedChannel() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = _voucher(CLIENT_PK, id, 1e18);
        vm.warp(T0 + 1 days);
        vm.prank(client);
        channels.reclaim(id);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsClosed.selector, id));
        _redeem(id, 1e18, voucher);
    }

    function test_redeem_revertsAtExpiry() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = _voucher(CLIENT_PK, id, 1e18);
        vm.warp(T0 + 1 days);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsExpired.selector, id, T0 + 1 days));
        _redeem(id, 1e18, voucher);
    }

    function test_redeem_revertsAboveDeposit() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = _voucher(CLIENT_PK, id, 100e18 + 1);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.ChannelsAmountExceedsDeposit.selector, id, 100e18 + 1, 100e18)
        );
        _redeem(id, 100e18 + 1, voucher);
    }

    function test_redeem_revertsOnReplayedVoucher() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = _voucher(CLIENT_PK, id, 40e18);
        _redeem(id, 40e18, voucher);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsVoucherNotNewer.selector, id, 40e18, 40e18));
        _redeem(id, 40e18, voucher);
    }

    function test_redeem_revertsOnOlderVoucher() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory older = _voucher(CLIENT_PK, id, 10e18);
        _redeem(id, 40e18, _voucher(CLIENT_PK, id, 40e18));
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsVoucherNotNewer.selector, id, 10e18, 40e18));
        _redeem(id, 10e18, older);
    }

    function test_redeem_revertsOnZeroVoucher() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = _voucher(CLIENT_PK, id, 0);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsVoucherNotNewer.selector, id, 0, 0));
        _redeem(id, 0, voucher);
    }

    function test_redeem_revertsOnWrongSigner() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = _voucher(STRANGER_PK, id, 1e18);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidSignature.selector, id, vm.addr(STRANGER_PK))
        );
        _redeem(id, 1e18, voucher);
    }

    function test_redeem_revertsOnVoucherForOtherChain() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = sign(CLIENT_PK, _digest(1, address(channels), id, 1e18));
        address recovered = ecrecoverSignature(channels.voucherDigest(id, 1e18), voucher);
        assertTrue(recovered != client, "a foreign-chain voucher must not recover to the client");
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidSignature.selector, id, recovered));
        _redeem(id, 1e18, voucher);
    }

    function test_voucherDigest_differsBetweenDeploymentsAtTheSameAddress() public {
        // A devnet restarted from genesis redeploys at the same address on the same chain: only
        // the salt tells the deployments apart.
        uint256 snapshot = vm.snapshotState();
        PaymentChannels earlier = new PaymentChannels(token, MAX_DURATION, keccak256("an earlier salt"));
        bytes32 earlierDigest = earlier.voucherDigest(1, 1e18);
        vm.revertToState(snapshot);
        PaymentChannels later = new PaymentChannels(token, MAX_DURATION, keccak256("channels salt"));
        assertEq(address(later), address(earlier), "same address");
        assertTrue(later.voucherDigest(1, 1e18) != earlierDigest, "the salt changes the digest");
        (,,,,, bytes32 salt,) = later.eip712Domain();
        assertEq(salt, keccak256("channels salt"), "eip712Domain reports the salt");
    }

    function test_redeem_revertsOnVoucherForOtherContract() public {
        uint256 id = _open(100e18, T0 + 1 days);
        PaymentChannels other = new PaymentChannels(token, MAX_DURATION, keccak256("channels salt"));
        bytes memory voucher = sign(CLIENT_PK, other.voucherDigest(id, 1e18));
        address recovered = ecrecoverSignature(channels.voucherDigest(id, 1e18), voucher);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidSignature.selector, id, recovered));
        _redeem(id, 1e18, voucher);
    }

    function test_redeem_revertsOnVoucherForOtherChannel() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory voucher = _voucher(CLIENT_PK, id + 1, 1e18);
        address recovered = ecrecoverSignature(channels.voucherDigest(id, 1e18), voucher);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidSignature.selector, id, recovered));
        _redeem(id, 1e18, voucher);
    }

    function test_redeem_revertsOnMalleableSignature() public {
        uint256 id = _open(100e18, T0 + 1 days);
        bytes memory malleable = malleate(_voucher(CLIENT_PK, id, 1e18));
        // Plain ecrecover still accepts the high-s twin; the contract must not.
        assertEq(ecrecoverSignature(channels.voucherDigest(id, 1e18), malleable), client, "ecrecover accepts it");
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidSignature.selector, id, address(0)));
        _redeem(id, 1e18, malleable);
    }

    function test_redeem_revertsOnShortSignature() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsInvalidSignature.selector, id, address(0)));
        _redeem(id, 1e18, hex"1234");
    }

    function test_redeem_revertsOnReentry() public {
        // A token that calls its receiver back lets a server contract re-enter while being paid.
        HookToken hookToken = new HookToken(client, 1_000e18);
        PaymentChannels hooked = new PaymentChannels(hookToken, MAX_DURATION, keccak256("channels salt"));
        Reenterer server = new Reenterer(hookToken);
        vm.startPrank(client);
        hookToken.approve(address(hooked), 100e18);
        uint256 id = hooked.open(address(server), 100e18, T0 + 1 days);
        vm.stopPrank();
        bytes memory first = abi.encodeCall(
            PaymentChannels.redeem, (id, 30e18, sign(CLIENT_PK, hooked.voucherDigest(id, 30e18)))
        );
        bytes memory second = abi.encodeCall(
            PaymentChannels.redeem, (id, 60e18, sign(CLIENT_PK, hooked.voucherDigest(id, 60e18)))
        );

        server.arm(address(hooked), second);
        vm.expectRevert(abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector));
        server.execute(address(hooked), first);

        // The same redeem without the re-entry goes through.
        server.arm(address(0), "");
        server.execute(address(hooked), first);
        assertEq(hookToken.balanceOf(address(server)), 30e18, "paid once");
    }

    function testFuzz_redeem_paysExactlyTheHighestVoucher(uint256 deposit, uint256 first, uint256 second) public {
        deposit = bound(deposit, 2, 1_000_000e18);
        first = bound(first, 1, deposit - 1);
        second = bound(second, first + 1, deposit);
        uint256 id = _open(deposit, T0 + 1 days);
        _redeem(id, first, _voucher(CLIENT_PK, id, first));
        _redeem(id, second, _voucher(CLIENT_PK, id, second));
        assertEq(token.balanceOf(SERVER), second, "server has the highest voucher");
        vm.warp(T0 + 1 days);
        vm.prank(client);
        assertEq(channels.reclaim(id), deposit - second, "client gets the rest");
        assertEq(channels.totalEscrowed(), 0, "totalEscrowed");
        assertEq(token.balanceOf(address(channels)), 0, "balance");
    }

    // ---- reclaim -----------------------------------------------------------------------------

    function test_reclaim_refundsTheRestAfterExpiry() public {
        uint256 id = _open(100e18, T0 + 1 days);
        _redeem(id, 30e18, _voucher(CLIENT_PK, id, 30e18));
        uint256 before = token.balanceOf(client);
        vm.warp(T0 + 1 days);
        vm.expectEmit(address(channels));
        emit IPaymentChannels.ChannelReclaimed(id, client, 70e18);
        vm.prank(client);
        assertEq(channels.reclaim(id), 70e18, "refunded");
        assertEq(token.balanceOf(client), before + 70e18, "client balance");
        assertTrue(channels.getChannel(id).closed, "closed");
        assertEq(channels.totalEscrowed(), 0, "totalEscrowed");
    }

    function test_reclaim_closesFullyRedeemedChannel() public {
        uint256 id = _open(100e18, T0 + 1 days);
        _redeem(id, 100e18, _voucher(CLIENT_PK, id, 100e18));
        vm.warp(T0 + 2 days);
        vm.prank(client);
        assertEq(channels.reclaim(id), 0, "nothing left");
        assertTrue(channels.getChannel(id).closed, "closed");
    }

    function test_reclaim_revertsOnUnknownChannel() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsUnknownChannel.selector, 1));
        vm.prank(client);
        channels.reclaim(1);
    }

    function test_reclaim_revertsForNonClient() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.warp(T0 + 1 days);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsNotClient.selector, id, SERVER));
        vm.prank(SERVER);
        channels.reclaim(id);
    }

    function test_reclaim_revertsBeforeExpiry() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.warp(T0 + 1 days - 1);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsNotExpired.selector, id, T0 + 1 days));
        vm.prank(client);
        channels.reclaim(id);
    }

    function test_reclaim_revertsTheSecondTime() public {
        uint256 id = _open(100e18, T0 + 1 days);
        vm.warp(T0 + 1 days);
        vm.startPrank(client);
        channels.reclaim(id);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelsClosed.selector, id));
        channels.reclaim(id);
        vm.stopPrank();
    }
}

/// @notice Random open / topUp / redeem / reclaim / warp sequences between two clients and two servers.
contract PaymentChannelsHandler is TestBase {
    StakeToken internal immutable _token;
    PaymentChannels internal immutable _channels;
    uint256[] internal _clientKeys;
    address[] internal _servers;

    constructor(StakeToken token_, PaymentChannels channels_, uint256[] memory clientKeys_, address[] memory servers_) {
        _token = token_;
        _channels = channels_;
        _clientKeys = clientKeys_;
        _servers = servers_;
    }

    function holders() external view returns (address[] memory all) {
        all = new address[](_clientKeys.length + _servers.length);
        for (uint256 i = 0; i < _clientKeys.length; ++i) {
            all[i] = vm.addr(_clientKeys[i]);
        }
        for (uint256 i = 0; i < _servers.length; ++i) {
            all[_clientKeys.length + i] = _servers[i];
        }
    }

    function _channel(uint256 seed) internal view returns (uint256) {
        uint256 count = _channels.channelCount();
        return count == 0 ? 1 : 1 + seed % count;
    }

    function open(uint256 clientSeed, uint256 serverSeed, uint256 deposit, uint64 duration) external {
        address client = vm.addr(_clientKeys[clientSeed % _clientKeys.length]);
        deposit = bound(deposit, 1, _token.balanceOf(client) + 1);
        duration = uint64(bound(duration, 1, _channels.maxDuration()));
        vm.prank(client);
        _channels.open(_servers[serverSeed % _servers.length], deposit, uint64(block.timestamp) + duration);
    }

    function topUp(uint256 channelSeed, uint256 amount, uint64 extension) external {
        uint256 id = _channel(channelSeed);
        IPaymentChannels.Channel memory c = _channels.getChannel(id);
        amount = bound(amount, 0, _token.balanceOf(c.client));
        uint64 newExpiry = uint64(bound(c.expiry + uint256(extension % 2 days), 0, block.timestamp + 30 days));
        vm.prank(c.client);
        _channels.topUp(id, amount, newExpiry);
    }

    function redeem(uint256 channelSeed, uint256 amount) external {
        uint256 id = _channel(channelSeed);
        IPaymentChannels.Channel memory c = _channels.getChannel(id);
        amount = bound(amount, c.redeemed, c.deposit + 1);
        uint256 key = 0;
        for (uint256 i = 0; i < _clientKeys.length; ++i) {
            if (vm.addr(_clientKeys[i]) == c.client) key = _clientKeys[i];
        }
        bytes memory voucher = sign(key, _channels.voucherDigest(id, amount));
        vm.prank(c.server);
        _channels.redeem(id, amount, voucher);
    }

    function reclaim(uint256 channelSeed) external {
        uint256 id = _channel(channelSeed);
        vm.prank(_channels.getChannel(id).client);
        _channels.reclaim(id);
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 3 days));
    }
}

/// @title PaymentChannels invariants: escrow always matches the token balance.
contract PaymentChannelsInvariantTest is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;

    StakeToken internal token;
    PaymentChannels internal channels;
    PaymentChannelsHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        channels = new PaymentChannels(token, 30 days, keccak256("channels salt"));
        uint256[] memory keys = new uint256[](2);
        keys[0] = 0xC1;
        keys[1] = 0xC2;
        address[] memory servers = new address[](2);
        servers[0] = address(0x5E1);
        servers[1] = address(0x5E2);
        for (uint256 i = 0; i < keys.length; ++i) {
            address client = vm.addr(keys[i]);
            token.transfer(client, 10_000e18);
            vm.prank(client);
            token.approve(address(channels), type(uint256).max);
        }
        handler = new PaymentChannelsHandler(token, channels, keys, servers);
        targetContract(address(handler));
    }

    function invariant_totalEscrowedEqualsBalanceAndOpenChannels() public view {
        uint256 sum = 0;
        uint256 count = channels.channelCount();
        for (uint256 id = 1; id <= count; ++id) {
            IPaymentChannels.Channel memory c = channels.getChannel(id);
            assertTrue(c.redeemed <= c.deposit, "redeemed <= deposit");
            if (!c.closed) sum += c.deposit - c.redeemed;
        }
        assertEq(channels.totalEscrowed(), sum, "totalEscrowed == sum over open channels");
        assertEq(token.balanceOf(address(channels)), sum, "balance == sum over open channels");
    }

    function invariant_supplyIsConserved() public view {
        address[] memory holders = handler.holders();
        uint256 held = token.balanceOf(address(this)) + token.balanceOf(address(channels));
        for (uint256 i = 0; i < holders.length; ++i) {
            held += token.balanceOf(holders[i]);
        }
        assertEq(held, token.totalSupply(), "every token is held by a known account");
    }
}
