// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {NodeRegistry} from "../NodeRegistry.sol";
import {StakeToken} from "../StakeToken.sol";
import {INodeRegistry} from "../interfaces/INodeRegistry.sol";
import {IStakeRegistry} from "../interfaces/IStakeRegistry.sol";

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {HookToken, Reenterer} from "./helpers/Reentrancy.sol";
import {TestBase} from "./helpers/TestBase.sol";

/// @notice Stands in for the Slasher where the registry asks it for the challenge window.
contract ChallengeWindowStub {
    function challengeWindow() external pure returns (uint64) {
        return 3 days;
    }
}

/// @title NodeRegistry tests: every function's success and failure paths, fuzzed amounts.
contract NodeRegistryTest is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;
    uint256 internal constant MIN_PER_BLOCK = 100e18;
    uint64 internal constant DELAY = 7 days;
    bytes32 internal constant MODEL = keccak256("SmolLM2-135M-Instruct");
    bytes32 internal constant OTHER_MODEL = keccak256("Qwen2-0.5B");
    bytes internal constant PEER_ID = hex"00240801122011223344";
    bytes internal constant OTHER_PEER_ID = hex"0024080112205566778899";
    uint256 internal constant PRICE = 2e12;

    address internal constant SLASHER = address(0x5154);
    address internal constant COMMITMENTS = address(0xC0317);
    uint64 internal constant WINDOW = 3 days;
    address internal constant NODE = address(0xA11CE);
    address internal constant RECIPIENT = address(0xBEEF);

    StakeToken internal token;
    NodeRegistry internal registry;

    function setUp() public {
        vm.warp(1_700_000_000);
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        registry = new NodeRegistry(token, MIN_PER_BLOCK, DELAY, COMMITMENTS, SLASHER);
        vm.etch(SLASHER, address(new ChallengeWindowStub()).code);
        _fund(NODE, 1_000_000e18);
    }

    function _fund(address who, uint256 amount) internal {
        token.transfer(who, amount);
        vm.prank(who);
        token.approve(address(registry), type(uint256).max);
    }

    /// @dev NODE registers for blocks [4, 12) (8 blocks, 800e18 required) with `stake`.
    function _register(uint256 stake) internal {
        vm.prank(NODE);
        registry.register(MODEL, 4, 12, PRICE, PEER_ID, stake);
    }

    // ---- constructor and getters -------------------------------------------------------------

    function test_constructor_setsParameters() public view {
        assertEq(address(registry.stakeToken()), address(token), "stakeToken");
        assertEq(registry.minStakePerBlock(), MIN_PER_BLOCK, "minStakePerBlock");
        assertEq(uint256(registry.unbondingDelay()), DELAY, "unbondingDelay");
        assertEq(registry.slasher(), SLASHER, "slasher");
        assertEq(registry.commitments(), COMMITMENTS, "commitments");
        assertEq(registry.totalStaked(), 0, "totalStaked");
    }

    // ---- register ----------------------------------------------------------------------------

    function test_register_storesNodeAndPullsStake() public {
        uint256 before = token.balanceOf(NODE);
        vm.expectEmit(address(registry));
        emit INodeRegistry.NodeRegistered(NODE, MODEL, 4, 12, PRICE, PEER_ID, 800e18);
        _register(800e18);
        vm.snapshotGasLastCall("stakeswarm", "NodeRegistry.register");

        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.modelId, MODEL, "modelId");
        assertEq(uint256(n.spanStart), 4, "spanStart");
        assertEq(uint256(n.spanEnd), 12, "spanEnd");
        assertEq(n.pricePerTokenPerBlock, PRICE, "price");
        assertEq(keccak256(n.peerId), keccak256(PEER_ID), "peerId");
        assertEq(n.stake, 800e18, "stake");
        assertEq(n.unbonding, 0, "unbonding");
        assertEq(uint256(n.lastCommitAt), 0, "no commit yet");
        assertTrue(n.registered, "registered");
        assertTrue(registry.isActive(NODE), "active");
        assertEq(registry.totalStaked(), 800e18, "totalStaked");
        assertEq(registry.slashableStake(NODE), 800e18, "slashableStake");
        assertEq(token.balanceOf(address(registry)), 800e18, "registry balance");
        assertEq(token.balanceOf(NODE), before - 800e18, "node balance");
    }

    function test_register_revertsWhenAlreadyRegistered() public {
        _register(800e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeAlreadyRegistered.selector, NODE));
        _register(800e18);
    }

    function test_register_revertsOnEmptySpan() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryInvalidSpan.selector, uint16(5), uint16(5)));
        vm.prank(NODE);
        registry.register(MODEL, 5, 5, PRICE, PEER_ID, 800e18);
    }

    function test_register_revertsOnReversedSpan() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryInvalidSpan.selector, uint16(9), uint16(3)));
        vm.prank(NODE);
        registry.register(MODEL, 9, 3, PRICE, PEER_ID, 800e18);
    }

    function test_register_revertsOnEmptyPeerId() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryEmptyPeerId.selector));
        vm.prank(NODE);
        registry.register(MODEL, 4, 12, PRICE, "", 800e18);
    }

    function test_register_revertsOnZeroStake() public {
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeZeroAmount.selector));
        _register(0);
    }

    function test_register_revertsOnInsufficientStake() public {
        vm.expectRevert(
            abi.encodeWithSelector(IStakeRegistry.StakeInsufficient.selector, NODE, 800e18 - 1, 800e18)
        );
        _register(800e18 - 1);
    }

    function test_register_revertsWithoutAllowance() public {
        address stranger = address(0x5712);
        token.transfer(stranger, 800e18);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(registry), 0, 800e18)
        );
        vm.prank(stranger);
        registry.register(MODEL, 4, 12, PRICE, PEER_ID, 800e18);
    }

    function testFuzz_register_acceptsAnyStakeCoveringTheSpan(uint16 spanStart, uint16 length, uint256 stake) public {
        spanStart = uint16(bound(spanStart, 0, 1000));
        length = uint16(bound(length, 1, 64));
        uint256 needed = MIN_PER_BLOCK * length;
        stake = bound(stake, needed, token.balanceOf(NODE));
        vm.prank(NODE);
        registry.register(MODEL, spanStart, spanStart + length, PRICE, PEER_ID, stake);
        assertEq(registry.requiredStake(spanStart, spanStart + length), needed, "requiredStake");
        assertEq(registry.getNode(NODE).stake, stake, "stake");
        assertEq(registry.totalStaked(), stake, "totalStaked");
        assertEq(token.balanceOf(address(registry)), stake, "registry balance");
        assertTrue(registry.isActive(NODE), "active");
    }

    // ---- updateService -----------------------------------------------------------------------

    function test_updateService_changesServiceKeepingStake() public {
        _register(1_000e18);
        vm.expectEmit(address(registry));
        emit INodeRegistry.ServiceUpdated(NODE, OTHER_MODEL, 0, 10, 7, OTHER_PEER_ID);
        vm.prank(NODE);
        registry.updateService(OTHER_MODEL, 0, 10, 7, OTHER_PEER_ID);

        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.modelId, OTHER_MODEL, "modelId");
        assertEq(uint256(n.spanStart), 0, "spanStart");
        assertEq(uint256(n.spanEnd), 10, "spanEnd");
        assertEq(n.pricePerTokenPerBlock, 7, "price");
        assertEq(keccak256(n.peerId), keccak256(OTHER_PEER_ID), "peerId");
        assertEq(n.stake, 1_000e18, "stake");
        assertTrue(registry.isActive(NODE), "active");
    }

    function test_updateService_revertsWhenNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNotRegistered.selector, NODE));
        vm.prank(NODE);
        registry.updateService(MODEL, 0, 1, PRICE, PEER_ID);
    }

    function test_updateService_revertsOnInvalidSpan() public {
        _register(800e18);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryInvalidSpan.selector, uint16(7), uint16(2)));
        vm.prank(NODE);
        registry.updateService(MODEL, 7, 2, PRICE, PEER_ID);
    }

    function test_updateService_revertsOnEmptyPeerId() public {
        _register(800e18);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryEmptyPeerId.selector));
        vm.prank(NODE);
        registry.updateService(MODEL, 4, 12, PRICE, "");
    }

    function test_updateService_revertsWhenStakeDoesNotCoverNewSpan() public {
        _register(800e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeInsufficient.selector, NODE, 800e18, 900e18));
        vm.prank(NODE);
        registry.updateService(MODEL, 4, 13, PRICE, PEER_ID);
    }

    // ---- addStake ----------------------------------------------------------------------------

    function test_addStake_increasesStake() public {
        _register(800e18);
        vm.expectEmit(address(registry));
        emit IStakeRegistry.StakeAdded(NODE, 50e18, 850e18);
        vm.prank(NODE);
        registry.addStake(50e18);
        assertEq(registry.getNode(NODE).stake, 850e18, "stake");
        assertEq(registry.totalStaked(), 850e18, "totalStaked");
        assertEq(token.balanceOf(address(registry)), 850e18, "registry balance");
    }

    function test_addStake_revertsWhenNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNotRegistered.selector, NODE));
        vm.prank(NODE);
        registry.addStake(1);
    }

    function test_addStake_revertsOnZero() public {
        _register(800e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeZeroAmount.selector));
        vm.prank(NODE);
        registry.addStake(0);
    }

    function test_addStake_reactivatesNodeAfterSpanOutgrewStake() public {
        // A node that unbonded everything is inactive until it stakes again.
        _register(800e18);
        vm.prank(NODE);
        registry.unbond(800e18);
        assertFalse(registry.isActive(NODE), "inactive after leaving");
        vm.prank(NODE);
        registry.addStake(800e18);
        assertTrue(registry.isActive(NODE), "active again");
    }

    function testFuzz_addStake_accumulates(uint256 a, uint256 b) public {
        a = bound(a, 1, 100_000e18);
        b = bound(b, 1, 100_000e18);
        _register(800e18);
        vm.startPrank(NODE);
        registry.addStake(a);
        registry.addStake(b);
        vm.stopPrank();
        assertEq(registry.getNode(NODE).stake, 800e18 + a + b, "stake");
        assertEq(registry.totalStaked(), token.balanceOf(address(registry)), "totalStaked == balance");
    }

    // ---- unbond ------------------------------------------------------------------------------

    function test_unbond_movesStakeToUnbonding() public {
        _register(1_000e18);
        uint64 releaseAt = uint64(block.timestamp) + DELAY;
        vm.expectEmit(address(registry));
        emit IStakeRegistry.UnbondingStarted(NODE, 200e18, 200e18, releaseAt);
        vm.prank(NODE);
        registry.unbond(200e18);

        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.stake, 800e18, "stake");
        assertEq(n.unbonding, 200e18, "unbonding");
        assertEq(uint256(n.unbondingReleaseAt), releaseAt, "releaseAt");
        assertEq(registry.totalStaked(), 1_000e18, "totalStaked still counts unbonding");
        assertTrue(registry.isActive(NODE), "still active");
    }

    function test_unbond_allowsLeavingWithZeroRemaining() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(1_000e18);
        assertEq(registry.getNode(NODE).stake, 0, "stake");
        assertFalse(registry.isActive(NODE), "inactive");
    }

    function test_unbond_secondCallAddsAndRestartsRelease() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(100e18);
        vm.warp(block.timestamp + 3 days);
        uint64 releaseAt = uint64(block.timestamp) + DELAY;
        vm.expectEmit(address(registry));
        emit IStakeRegistry.UnbondingStarted(NODE, 50e18, 150e18, releaseAt);
        vm.prank(NODE);
        registry.unbond(50e18);
        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.unbonding, 150e18, "unbonding");
        assertEq(uint256(n.unbondingReleaseAt), releaseAt, "releaseAt restarted");
    }

    function test_unbond_revertsWhenNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNotRegistered.selector, NODE));
        vm.prank(NODE);
        registry.unbond(1);
    }

    function test_unbond_revertsOnZero() public {
        _register(800e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeZeroAmount.selector));
        vm.prank(NODE);
        registry.unbond(0);
    }

    function test_unbond_revertsWhenExceedingStake() public {
        _register(800e18);
        vm.expectRevert(
            abi.encodeWithSelector(IStakeRegistry.StakeUnbondExceedsStake.selector, NODE, 800e18 + 1, 800e18)
        );
        vm.prank(NODE);
        registry.unbond(800e18 + 1);
    }

    function test_unbond_revertsWhenRemainderBelowRequired() public {
        _register(1_000e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeInsufficient.selector, NODE, 799e18, 800e18));
        vm.prank(NODE);
        registry.unbond(201e18);
    }

    function testFuzz_unbond_keepsTotals(uint256 stake, uint256 amount) public {
        stake = bound(stake, 800e18, 100_000e18);
        amount = bound(amount, 1, stake);
        _register(stake);
        uint256 remaining = stake - amount;
        if (remaining != 0 && remaining < 800e18) {
            vm.expectRevert(
                abi.encodeWithSelector(IStakeRegistry.StakeInsufficient.selector, NODE, remaining, 800e18)
            );
            vm.prank(NODE);
            registry.unbond(amount);
            return;
        }
        vm.prank(NODE);
        registry.unbond(amount);
        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.stake + n.unbonding, stake, "stake + unbonding");
        assertEq(registry.totalStaked(), stake, "totalStaked");
        assertEq(registry.isActive(NODE), remaining != 0, "active iff something stays");
    }

    // ---- rebond ------------------------------------------------------------------------------

    function test_rebond_movesUnbondingBackWithoutTokens() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(1_000e18);
        uint256 before = token.balanceOf(NODE);
        vm.expectEmit(address(registry));
        emit IStakeRegistry.StakeRebonded(NODE, 1_000e18, 1_000e18, 0);
        vm.prank(NODE);
        registry.rebond(1_000e18);

        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.stake, 1_000e18, "stake");
        assertEq(n.unbonding, 0, "unbonding");
        assertEq(uint256(n.unbondingReleaseAt), 0, "release cleared");
        assertTrue(registry.isActive(NODE), "active again");
        assertEq(token.balanceOf(NODE), before, "no token moved");
        assertEq(registry.totalStaked(), 1_000e18, "totalStaked");
    }

    function test_rebond_partKeepsTheRestsRelease() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(200e18);
        uint64 releaseAt = uint64(block.timestamp) + DELAY;
        vm.warp(block.timestamp + 2 days);
        vm.prank(NODE);
        registry.rebond(50e18);

        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.stake, 850e18, "stake");
        assertEq(n.unbonding, 150e18, "unbonding");
        assertEq(uint256(n.unbondingReleaseAt), releaseAt, "release unchanged");
        vm.warp(releaseAt + 1);
        vm.prank(NODE);
        assertEq(registry.withdraw(), 150e18, "the rest withdraws on time");
    }

    function test_rebond_revertsWhenExceedingUnbonding() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(200e18);
        vm.expectRevert(
            abi.encodeWithSelector(IStakeRegistry.StakeRebondExceedsUnbonding.selector, NODE, 200e18 + 1, 200e18)
        );
        vm.prank(NODE);
        registry.rebond(200e18 + 1);
    }

    function test_rebond_revertsWithNothingUnbonding() public {
        _register(1_000e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeRebondExceedsUnbonding.selector, NODE, 1, 0));
        vm.prank(NODE);
        registry.rebond(1);
    }

    function test_rebond_revertsWhenNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNotRegistered.selector, NODE));
        vm.prank(NODE);
        registry.rebond(1);
    }

    function test_rebond_revertsOnZero() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(200e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeZeroAmount.selector));
        vm.prank(NODE);
        registry.rebond(0);
    }

    function test_rebond_revertsWhenStakeWouldNotCoverTheSpan() public {
        _register(800e18);
        vm.prank(NODE);
        registry.unbond(800e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeInsufficient.selector, NODE, 799e18, 800e18));
        vm.prank(NODE);
        registry.rebond(799e18);
    }

    function test_rebond_keepsUnbondingSlashable() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(1_000e18);
        vm.prank(NODE);
        registry.rebond(800e18);
        assertEq(registry.slashableStake(NODE), 1_000e18, "all of it still slashable");
    }

    function testFuzz_rebond_keepsTotals(uint256 stake, uint256 unbonded, uint256 amount) public {
        stake = bound(stake, 800e18, 100_000e18);
        unbonded = bound(unbonded, 1, stake);
        _register(stake);
        if (stake - unbonded != 0 && stake - unbonded < 800e18) unbonded = stake;
        vm.prank(NODE);
        registry.unbond(unbonded);
        amount = bound(amount, 1, unbonded);
        uint256 newStake = stake - unbonded + amount;
        if (newStake < 800e18) {
            vm.expectRevert(
                abi.encodeWithSelector(IStakeRegistry.StakeInsufficient.selector, NODE, newStake, 800e18)
            );
            vm.prank(NODE);
            registry.rebond(amount);
            return;
        }
        vm.prank(NODE);
        registry.rebond(amount);
        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.stake, newStake, "stake");
        assertEq(n.stake + n.unbonding, stake, "stake + unbonding");
        assertEq(registry.totalStaked(), stake, "totalStaked");
        assertEq(token.balanceOf(address(registry)), stake, "registry balance");
    }

    // ---- withdraw ----------------------------------------------------------------------------

    function test_withdraw_paysUnbondedAfterRelease() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(200e18);
        uint256 before = token.balanceOf(NODE);
        vm.warp(block.timestamp + DELAY + 1);
        vm.expectEmit(address(registry));
        emit IStakeRegistry.StakeWithdrawn(NODE, 200e18);
        vm.prank(NODE);
        uint256 amount = registry.withdraw();
        assertEq(amount, 200e18, "returned amount");
        assertEq(token.balanceOf(NODE), before + 200e18, "node balance");
        assertEq(registry.getNode(NODE).unbonding, 0, "unbonding");
        assertEq(registry.totalStaked(), 800e18, "totalStaked");
        assertEq(token.balanceOf(address(registry)), 800e18, "registry balance");
    }

    function test_withdraw_revertsAtReleaseTime() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(200e18);
        uint64 releaseAt = uint64(block.timestamp) + DELAY;
        vm.warp(releaseAt);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeUnbondingLocked.selector, NODE, releaseAt));
        vm.prank(NODE);
        registry.withdraw();
    }

    function test_withdraw_revertsWithNothingUnbonding() public {
        _register(1_000e18);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNothingToWithdraw.selector, NODE));
        vm.prank(NODE);
        registry.withdraw();
    }

    function test_withdraw_revertsTheSecondTime() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(200e18);
        vm.warp(block.timestamp + DELAY + 1);
        vm.startPrank(NODE);
        registry.withdraw();
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNothingToWithdraw.selector, NODE));
        registry.withdraw();
        vm.stopPrank();
    }

    function test_withdraw_revertsOnReentry() public {
        // A token that calls its receiver back lets a node contract re-enter while being paid.
        HookToken hookToken = new HookToken(address(this), 10_000e18);
        NodeRegistry hooked = new NodeRegistry(hookToken, MIN_PER_BLOCK, DELAY, COMMITMENTS, SLASHER);
        Reenterer node = new Reenterer(hookToken);
        hookToken.transfer(address(node), 1_000e18);
        node.execute(address(hookToken), abi.encodeCall(hookToken.approve, (address(hooked), 1_000e18)));
        node.execute(
            address(hooked), abi.encodeCall(NodeRegistry.register, (MODEL, 4, 12, PRICE, PEER_ID, 1_000e18))
        );
        node.execute(address(hooked), abi.encodeCall(IStakeRegistry.unbond, (200e18)));
        vm.warp(block.timestamp + DELAY + 1);

        node.arm(address(hooked), abi.encodeCall(IStakeRegistry.withdraw, ()));
        vm.expectRevert(abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector));
        node.execute(address(hooked), abi.encodeCall(IStakeRegistry.withdraw, ()));

        node.arm(address(0), "");
        node.execute(address(hooked), abi.encodeCall(IStakeRegistry.withdraw, ()));
        assertEq(hookToken.balanceOf(address(node)), 200e18, "withdrawn once");
    }

    // ---- recordCommit ------------------------------------------------------------------------

    function test_recordCommit_recordsTheCommitTime() public {
        _register(800e18);
        vm.warp(1_700_000_500);
        vm.prank(COMMITMENTS);
        registry.recordCommit(NODE, MODEL);
        assertEq(uint256(registry.getNode(NODE).lastCommitAt), 1_700_000_500, "lastCommitAt");
    }

    function test_recordCommit_revertsForAnyoneButTheCommitments() public {
        _register(800e18);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryOnlyCommitments.selector, NODE));
        vm.prank(NODE);
        registry.recordCommit(NODE, MODEL);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryOnlyCommitments.selector, SLASHER));
        vm.prank(SLASHER);
        registry.recordCommit(NODE, MODEL);
    }

    function test_recordCommit_revertsForAnInactiveNode() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryNodeInactive.selector, NODE));
        vm.prank(COMMITMENTS);
        registry.recordCommit(NODE, MODEL);
        _register(800e18);
        vm.prank(NODE);
        registry.unbond(800e18);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryNodeInactive.selector, NODE));
        vm.prank(COMMITMENTS);
        registry.recordCommit(NODE, MODEL);
    }

    function test_recordCommit_revertsForAnotherModel() public {
        _register(800e18);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryModelMismatch.selector, NODE, OTHER_MODEL, MODEL));
        vm.prank(COMMITMENTS);
        registry.recordCommit(NODE, OTHER_MODEL);
    }

    function test_withdraw_waitsForTheLastCommitsChallengeWindow() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(200e18);
        uint64 releaseAt = uint64(block.timestamp) + DELAY;
        assertEq(uint256(registry.withdrawableAt(NODE)), releaseAt, "the release, with no commit");
        vm.warp(releaseAt); // commit at the last second before the release
        vm.prank(COMMITMENTS);
        registry.recordCommit(NODE, MODEL);
        uint64 until = releaseAt + WINDOW;
        assertEq(uint256(registry.withdrawableAt(NODE)), until, "the end of the commit's window");

        vm.warp(until);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeUnbondingLocked.selector, NODE, until));
        vm.prank(NODE);
        registry.withdraw();
        vm.warp(until + 1);
        vm.prank(NODE);
        assertEq(registry.withdraw(), 200e18, "withdrawn once the window closed");
    }

    function testFuzz_withdrawableAt_isTheLaterOfReleaseAndWindow(uint256 unbondAfter, uint256 commitAfter) public {
        _register(1_000e18);
        uint256 t0 = block.timestamp;
        unbondAfter = bound(unbondAfter, 0, 30 days);
        commitAfter = bound(commitAfter, 1, 30 days);
        vm.warp(t0 + unbondAfter);
        vm.prank(NODE);
        registry.unbond(200e18);
        vm.warp(t0 + commitAfter);
        vm.prank(COMMITMENTS);
        registry.recordCommit(NODE, MODEL);
        uint256 releaseAt = t0 + unbondAfter + DELAY;
        uint256 windowEnd = t0 + commitAfter + WINDOW;
        uint256 expected = releaseAt > windowEnd ? releaseAt : windowEnd;
        assertEq(uint256(registry.withdrawableAt(NODE)), expected, "withdrawableAt");
    }

    // ---- slash -------------------------------------------------------------------------------

    function test_slash_takesActiveStakeFirst() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(100e18);
        vm.expectEmit(address(registry));
        emit INodeRegistry.NodeSlashed(NODE, 300e18, RECIPIENT);
        vm.prank(SLASHER);
        uint256 slashed = registry.slash(NODE, 300e18, RECIPIENT);
        assertEq(slashed, 300e18, "slashed");
        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.stake, 600e18, "stake");
        assertEq(n.unbonding, 100e18, "unbonding untouched");
        assertEq(registry.slashableStake(NODE), 700e18, "slashableStake");
        assertEq(token.balanceOf(RECIPIENT), 300e18, "recipient");
        assertEq(registry.totalStaked(), 700e18, "totalStaked");
        assertFalse(registry.isActive(NODE), "stake below span");
    }

    function test_slash_reachesUnbondingStake() public {
        _register(1_000e18);
        vm.prank(NODE);
        registry.unbond(1_000e18);
        vm.warp(block.timestamp + DELAY);
        vm.prank(SLASHER);
        uint256 slashed = registry.slash(NODE, 400e18, RECIPIENT);
        assertEq(slashed, 400e18, "slashed");
        assertEq(registry.getNode(NODE).unbonding, 600e18, "unbonding");
        assertEq(token.balanceOf(RECIPIENT), 400e18, "recipient");
    }

    function test_slash_isCappedAtTotal() public {
        _register(1_100e18);
        vm.prank(NODE);
        registry.unbond(300e18);
        vm.prank(SLASHER);
        uint256 slashed = registry.slash(NODE, 5_000e18, RECIPIENT);
        assertEq(slashed, 1_100e18, "slashed everything");
        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertEq(n.stake + n.unbonding, 0, "nothing left");
        assertEq(registry.totalStaked(), 0, "totalStaked");
        assertEq(token.balanceOf(address(registry)), 0, "registry balance");
    }

    function test_slash_returnsZeroWhenNothingLeft() public {
        vm.prank(SLASHER);
        uint256 slashed = registry.slash(NODE, 100e18, RECIPIENT);
        assertEq(slashed, 0, "slashed");
        assertEq(token.balanceOf(RECIPIENT), 0, "recipient");
    }

    function test_slash_revertsForAnyoneButTheSlasher() public {
        _register(1_000e18);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryOnlySlasher.selector, NODE));
        vm.prank(NODE);
        registry.slash(NODE, 1, NODE);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryOnlySlasher.selector, address(this)));
        registry.slash(NODE, 1, address(this));
    }

    function testFuzz_slash_splitsAcrossStakeAndUnbonding(uint256 stake, uint256 unbonded, uint256 amount) public {
        stake = bound(stake, 800e18, 100_000e18);
        unbonded = bound(unbonded, 0, stake - 800e18);
        amount = bound(amount, 0, 2 * stake);
        _register(stake);
        if (unbonded != 0) {
            vm.prank(NODE);
            registry.unbond(unbonded);
        }
        vm.prank(SLASHER);
        uint256 slashed = registry.slash(NODE, amount, RECIPIENT);
        uint256 expected = amount < stake ? amount : stake;
        assertEq(slashed, expected, "slashed");
        INodeRegistry.Node memory n = registry.getNode(NODE);
        uint256 active = stake - unbonded;
        uint256 fromActive = expected < active ? expected : active;
        assertEq(n.stake, active - fromActive, "active");
        assertEq(n.unbonding, unbonded - (expected - fromActive), "unbonding");
        assertEq(token.balanceOf(RECIPIENT), slashed, "recipient");
        assertEq(registry.totalStaked(), token.balanceOf(address(registry)), "totalStaked == balance");
    }

    // ---- views -------------------------------------------------------------------------------

    function test_isActive_falseWhenUnregistered() public view {
        assertFalse(registry.isActive(NODE), "unregistered");
    }

    function test_getNode_zeroWhenUnregistered() public view {
        INodeRegistry.Node memory n = registry.getNode(NODE);
        assertFalse(n.registered, "registered");
        assertEq(n.stake, 0, "stake");
        assertEq(n.peerId.length, 0, "peerId");
    }

    function test_requiredStake_isPerBlock() public view {
        assertEq(registry.requiredStake(0, 1), MIN_PER_BLOCK, "one block");
        assertEq(registry.requiredStake(10, 42), 32 * MIN_PER_BLOCK, "32 blocks");
    }

    function test_requiredStake_revertsOnInvalidSpan() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryInvalidSpan.selector, uint16(3), uint16(3)));
        registry.requiredStake(3, 3);
    }
}

/// @notice Random register / addStake / unbond / recordCommit / withdraw / warp / slash sequences
/// by a few nodes. It is the registry's slasher and its commitments contract, so it can slash and
/// record commits, and it tells the registry the challenge window.
contract NodeRegistryHandler is TestBase {
    uint256 internal constant MIN_PER_BLOCK = 100e18;
    uint64 public constant WINDOW = 3 days;

    StakeToken internal immutable _token;
    NodeRegistry public registry;
    address[] internal _nodes;
    address public constant SLASH_RECIPIENT = address(0x5EC0);
    /// @notice Withdrawals that landed inside the challenge window of the node's last commit.
    uint256 public ghostEarlyWithdrawals;

    constructor(StakeToken token_, address[] memory nodes_) {
        _token = token_;
        _nodes = nodes_;
    }

    function setRegistry(NodeRegistry registry_) external {
        require(address(registry) == address(0), "registry already set");
        registry = registry_;
    }

    function nodes() external view returns (address[] memory) {
        return _nodes;
    }

    function _node(uint256 seed) internal view returns (address) {
        return _nodes[seed % _nodes.length];
    }

    function register(uint256 nodeSeed, uint16 spanStart, uint16 length, uint256 stake) external {
        address node = _node(nodeSeed);
        length = uint16(bound(length, 1, 32));
        spanStart = uint16(bound(spanStart, 0, 100));
        stake = bound(stake, MIN_PER_BLOCK * length, _token.balanceOf(node));
        vm.prank(node);
        registry.register(keccak256("m"), spanStart, spanStart + length, 1, hex"01", stake);
    }

    function addStake(uint256 nodeSeed, uint256 amount) external {
        address node = _node(nodeSeed);
        amount = bound(amount, 1, _token.balanceOf(node) + 1);
        vm.prank(node);
        registry.addStake(amount);
    }

    function unbond(uint256 nodeSeed, uint256 amount) external {
        address node = _node(nodeSeed);
        amount = bound(amount, 1, registry.getNode(node).stake + 1);
        vm.prank(node);
        registry.unbond(amount);
    }

    function withdraw(uint256 nodeSeed) external {
        address node = _node(nodeSeed);
        uint64 lastCommitAt = registry.getNode(node).lastCommitAt;
        vm.prank(node);
        registry.withdraw();
        if (lastCommitAt != 0 && block.timestamp <= lastCommitAt + WINDOW) ++ghostEarlyWithdrawals;
    }

    function recordCommit(uint256 nodeSeed) external {
        registry.recordCommit(_node(nodeSeed), keccak256("m"));
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 10 days));
    }

    /// @notice What the registry asks its slasher.
    function challengeWindow() external pure returns (uint64) {
        return WINDOW;
    }

    function slash(uint256 nodeSeed, uint256 amount) external {
        address node = _node(nodeSeed);
        INodeRegistry.Node memory n = registry.getNode(node);
        amount = bound(amount, 0, n.stake + n.unbonding + 1);
        registry.slash(node, amount, SLASH_RECIPIENT);
    }
}

/// @title NodeRegistry invariants: the stake pot always matches the token balance.
contract NodeRegistryInvariantTest is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;

    StakeToken internal token;
    NodeRegistry internal registry;
    NodeRegistryHandler internal handler;

    function setUp() public {
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        address[] memory nodes = new address[](4);
        for (uint256 i = 0; i < nodes.length; ++i) {
            nodes[i] = address(uint160(0xA000 + i));
        }
        handler = new NodeRegistryHandler(token, nodes);
        registry = new NodeRegistry(token, 100e18, 7 days, address(handler), address(handler));
        handler.setRegistry(registry);
        for (uint256 i = 0; i < nodes.length; ++i) {
            token.transfer(nodes[i], 50_000e18);
            vm.prank(nodes[i]);
            token.approve(address(registry), type(uint256).max);
        }
        targetContract(address(handler));
    }

    function invariant_totalStakedEqualsBalanceAndSumOfNodes() public view {
        address[] memory nodes = handler.nodes();
        uint256 sum = 0;
        for (uint256 i = 0; i < nodes.length; ++i) {
            INodeRegistry.Node memory n = registry.getNode(nodes[i]);
            sum += n.stake + n.unbonding;
        }
        assertEq(registry.totalStaked(), sum, "totalStaked == sum of stake + unbonding");
        assertEq(token.balanceOf(address(registry)), sum, "balance == sum of stake + unbonding");
    }

    function invariant_noWithdrawalInsideACommitsWindow() public view {
        assertEq(handler.ghostEarlyWithdrawals(), 0, "stake left inside the challenge window of a commit");
    }

    function invariant_supplyIsConserved() public view {
        address[] memory nodes = handler.nodes();
        uint256 held = token.balanceOf(address(this)) + token.balanceOf(address(registry))
            + token.balanceOf(handler.SLASH_RECIPIENT());
        for (uint256 i = 0; i < nodes.length; ++i) {
            held += token.balanceOf(nodes[i]);
        }
        assertEq(held, token.totalSupply(), "every token is held by a known account");
        assertEq(token.totalSupply(), SUPPLY, "supply");
    }
}
