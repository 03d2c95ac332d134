// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {StakeToken} from "../StakeToken.sol";
import {VerifierRegistry} from "../VerifierRegistry.sol";
import {IStakeRegistry} from "../interfaces/IStakeRegistry.sol";
import {IVerifierRegistry} from "../interfaces/IVerifierRegistry.sol";

import {TestBase} from "./helpers/TestBase.sol";

/// @title VerifierRegistry tests: every function's success and failure paths, fuzzed amounts.
contract VerifierRegistryTest is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;
    uint256 internal constant MIN_STAKE = 1_000e18;
    uint64 internal constant DELAY = 7 days;
    address internal constant VERIFIER = address(0xF1);

    StakeToken internal token;
    VerifierRegistry internal verifiers;

    function setUp() public {
        vm.warp(1_700_000_000);
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        verifiers = new VerifierRegistry(token, MIN_STAKE, DELAY);
        token.transfer(VERIFIER, 1_000_000e18);
        vm.prank(VERIFIER);
        token.approve(address(verifiers), type(uint256).max);
    }

    function _register(uint256 stake) internal {
        vm.prank(VERIFIER);
        verifiers.register(stake);
    }

    function test_constructor_setsParameters() public view {
        assertEq(address(verifiers.stakeToken()), address(token), "token");
        assertEq(verifiers.minStake(), MIN_STAKE, "minStake");
        assertEq(uint256(verifiers.unbondingDelay()), DELAY, "unbondingDelay");
        assertEq(verifiers.totalStaked(), 0, "totalStaked");
    }

    function test_withdrawableAt_isTheUnbondingRelease() public {
        _register(3_000e18);
        vm.prank(VERIFIER);
        verifiers.unbond(1_000e18);
        assertEq(uint256(verifiers.withdrawableAt(VERIFIER)), block.timestamp + DELAY, "withdrawableAt");
    }

    // ---- register ----------------------------------------------------------------------------

    function test_register_pullsStakeAndActivates() public {
        vm.expectEmit(address(verifiers));
        emit IVerifierRegistry.VerifierRegistered(VERIFIER, 1_500e18);
        _register(1_500e18);
        IStakeRegistry.Stake memory v = verifiers.getStake(VERIFIER);
        assertTrue(v.registered, "registered");
        assertEq(v.stake, 1_500e18, "stake");
        assertTrue(verifiers.isActive(VERIFIER), "active");
        assertEq(verifiers.totalStaked(), 1_500e18, "totalStaked");
        assertEq(token.balanceOf(address(verifiers)), 1_500e18, "balance");
    }

    function test_register_revertsWhenAlreadyRegistered() public {
        _register(MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeAlreadyRegistered.selector, VERIFIER));
        _register(MIN_STAKE);
    }

    function test_register_revertsOnZero() public {
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeZeroAmount.selector));
        _register(0);
    }

    function test_register_revertsBelowMinStake() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IStakeRegistry.StakeInsufficient.selector, VERIFIER, MIN_STAKE - 1, MIN_STAKE
            )
        );
        _register(MIN_STAKE - 1);
    }

    function test_register_revertsWithoutAllowance() public {
        address stranger = address(0x5712);
        token.transfer(stranger, MIN_STAKE);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(verifiers), 0, MIN_STAKE)
        );
        vm.prank(stranger);
        verifiers.register(MIN_STAKE);
    }

    function testFuzz_register_anyStakeAboveMinimum(uint256 stake) public {
        stake = bound(stake, MIN_STAKE, token.balanceOf(VERIFIER));
        _register(stake);
        assertEq(verifiers.getStake(VERIFIER).stake, stake, "stake");
        assertEq(verifiers.totalStaked(), token.balanceOf(address(verifiers)), "totalStaked == balance");
    }

    // ---- addStake ----------------------------------------------------------------------------

    function test_addStake_increasesStake() public {
        _register(MIN_STAKE);
        vm.expectEmit(address(verifiers));
        emit IStakeRegistry.StakeAdded(VERIFIER, 5e18, MIN_STAKE + 5e18);
        vm.prank(VERIFIER);
        verifiers.addStake(5e18);
        assertEq(verifiers.getStake(VERIFIER).stake, MIN_STAKE + 5e18, "stake");
        assertEq(verifiers.totalStaked(), MIN_STAKE + 5e18, "totalStaked");
    }

    function test_addStake_revertsWhenNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNotRegistered.selector, VERIFIER));
        vm.prank(VERIFIER);
        verifiers.addStake(1);
    }

    function test_addStake_revertsOnZero() public {
        _register(MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeZeroAmount.selector));
        vm.prank(VERIFIER);
        verifiers.addStake(0);
    }

    // ---- unbond ------------------------------------------------------------------------------

    function test_unbond_movesStakeToUnbonding() public {
        _register(3_000e18);
        uint64 releaseAt = uint64(block.timestamp) + DELAY;
        vm.expectEmit(address(verifiers));
        emit IStakeRegistry.UnbondingStarted(VERIFIER, 1_000e18, 1_000e18, releaseAt);
        vm.prank(VERIFIER);
        verifiers.unbond(1_000e18);
        IStakeRegistry.Stake memory v = verifiers.getStake(VERIFIER);
        assertEq(v.stake, 2_000e18, "stake");
        assertEq(v.unbonding, 1_000e18, "unbonding");
        assertEq(uint256(v.unbondingReleaseAt), releaseAt, "releaseAt");
        assertTrue(verifiers.isActive(VERIFIER), "still active");
        assertEq(verifiers.totalStaked(), 3_000e18, "totalStaked counts unbonding");
    }

    function test_unbond_fullExitDeactivates() public {
        _register(MIN_STAKE);
        vm.prank(VERIFIER);
        verifiers.unbond(MIN_STAKE);
        assertFalse(verifiers.isActive(VERIFIER), "inactive");
    }

    function test_unbond_secondCallAddsAndRestartsRelease() public {
        _register(3_000e18);
        vm.prank(VERIFIER);
        verifiers.unbond(500e18);
        vm.warp(block.timestamp + 1 days);
        vm.prank(VERIFIER);
        verifiers.unbond(500e18);
        IStakeRegistry.Stake memory v = verifiers.getStake(VERIFIER);
        assertEq(v.unbonding, 1_000e18, "unbonding");
        assertEq(uint256(v.unbondingReleaseAt), block.timestamp + DELAY, "releaseAt restarted");
    }

    function test_unbond_revertsWhenNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNotRegistered.selector, VERIFIER));
        vm.prank(VERIFIER);
        verifiers.unbond(1);
    }

    function test_unbond_revertsOnZero() public {
        _register(MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeZeroAmount.selector));
        vm.prank(VERIFIER);
        verifiers.unbond(0);
    }

    function test_unbond_revertsWhenExceedingStake() public {
        _register(MIN_STAKE);
        vm.expectRevert(
            abi.encodeWithSelector(
                IStakeRegistry.StakeUnbondExceedsStake.selector, VERIFIER, MIN_STAKE + 1, MIN_STAKE
            )
        );
        vm.prank(VERIFIER);
        verifiers.unbond(MIN_STAKE + 1);
    }

    function test_unbond_revertsWhenRemainderBelowMinimum() public {
        _register(1_500e18);
        vm.expectRevert(
            abi.encodeWithSelector(IStakeRegistry.StakeInsufficient.selector, VERIFIER, 999e18, MIN_STAKE)
        );
        vm.prank(VERIFIER);
        verifiers.unbond(501e18);
    }

    // ---- rebond ------------------------------------------------------------------------------

    function test_rebond_reactivatesAfterFullExit() public {
        _register(MIN_STAKE);
        vm.prank(VERIFIER);
        verifiers.unbond(MIN_STAKE);
        uint256 before = token.balanceOf(VERIFIER);
        vm.expectEmit(address(verifiers));
        emit IStakeRegistry.StakeRebonded(VERIFIER, MIN_STAKE, MIN_STAKE, 0);
        vm.prank(VERIFIER);
        verifiers.rebond(MIN_STAKE);
        assertTrue(verifiers.isActive(VERIFIER), "active again");
        assertEq(token.balanceOf(VERIFIER), before, "no token moved");
        assertEq(uint256(verifiers.getStake(VERIFIER).unbondingReleaseAt), 0, "release cleared");
    }

    function test_rebond_revertsWhenExceedingUnbonding() public {
        _register(3_000e18);
        vm.prank(VERIFIER);
        verifiers.unbond(500e18);
        vm.expectRevert(
            abi.encodeWithSelector(IStakeRegistry.StakeRebondExceedsUnbonding.selector, VERIFIER, 501e18, 500e18)
        );
        vm.prank(VERIFIER);
        verifiers.rebond(501e18);
    }

    function test_rebond_revertsBelowMinimum() public {
        _register(MIN_STAKE);
        vm.prank(VERIFIER);
        verifiers.unbond(MIN_STAKE);
        vm.expectRevert(
            abi.encodeWithSelector(IStakeRegistry.StakeInsufficient.selector, VERIFIER, 999e18, MIN_STAKE)
        );
        vm.prank(VERIFIER);
        verifiers.rebond(999e18);
    }

    // ---- withdraw ----------------------------------------------------------------------------

    function test_withdraw_paysAfterRelease() public {
        _register(3_000e18);
        vm.prank(VERIFIER);
        verifiers.unbond(1_000e18);
        uint256 before = token.balanceOf(VERIFIER);
        vm.warp(block.timestamp + DELAY + 1);
        vm.expectEmit(address(verifiers));
        emit IStakeRegistry.StakeWithdrawn(VERIFIER, 1_000e18);
        vm.prank(VERIFIER);
        assertEq(verifiers.withdraw(), 1_000e18, "returned amount");
        assertEq(token.balanceOf(VERIFIER), before + 1_000e18, "verifier balance");
        assertEq(verifiers.totalStaked(), 2_000e18, "totalStaked");
        assertEq(token.balanceOf(address(verifiers)), 2_000e18, "balance");
    }

    function test_withdraw_revertsAtReleaseTime() public {
        _register(3_000e18);
        vm.prank(VERIFIER);
        verifiers.unbond(1_000e18);
        uint64 releaseAt = uint64(block.timestamp) + DELAY;
        vm.warp(releaseAt);
        vm.expectRevert(
            abi.encodeWithSelector(IStakeRegistry.StakeUnbondingLocked.selector, VERIFIER, releaseAt)
        );
        vm.prank(VERIFIER);
        verifiers.withdraw();
    }

    function test_withdraw_revertsWithNothingUnbonding() public {
        _register(MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IStakeRegistry.StakeNothingToWithdraw.selector, VERIFIER));
        vm.prank(VERIFIER);
        verifiers.withdraw();
    }

    function testFuzz_withdraw_returnsExactlyWhatWasUnbonded(uint256 stake, uint256 amount) public {
        stake = bound(stake, MIN_STAKE, 500_000e18);
        amount = bound(amount, 1, stake);
        vm.assume(stake - amount == 0 || stake - amount >= MIN_STAKE);
        _register(stake);
        uint256 before = token.balanceOf(VERIFIER);
        vm.prank(VERIFIER);
        verifiers.unbond(amount);
        vm.warp(block.timestamp + DELAY + 1);
        vm.prank(VERIFIER);
        verifiers.withdraw();
        assertEq(token.balanceOf(VERIFIER), before + amount, "verifier balance");
        assertEq(verifiers.totalStaked(), stake - amount, "totalStaked");
        assertEq(verifiers.isActive(VERIFIER), stake != amount, "active iff stake stays");
    }

    // ---- views -------------------------------------------------------------------------------

    function test_isActive_falseWhenUnregistered() public view {
        assertFalse(verifiers.isActive(VERIFIER), "unregistered");
        assertFalse(verifiers.getStake(VERIFIER).registered, "getStake");
    }
}

/// @notice Random register / addStake / unbond / withdraw / warp sequences by a few verifiers.
contract VerifierRegistryHandler is TestBase {
    StakeToken internal immutable _token;
    VerifierRegistry internal immutable _verifiers;
    address[] internal _actors;

    constructor(StakeToken token_, VerifierRegistry verifiers_, address[] memory actors_) {
        _token = token_;
        _verifiers = verifiers_;
        _actors = actors_;
    }

    function actors() external view returns (address[] memory) {
        return _actors;
    }

    function _actor(uint256 seed) internal view returns (address) {
        return _actors[seed % _actors.length];
    }

    function register(uint256 seed, uint256 stake) external {
        address actor = _actor(seed);
        stake = bound(stake, _verifiers.minStake(), _token.balanceOf(actor) + 1);
        vm.prank(actor);
        _verifiers.register(stake);
    }

    function addStake(uint256 seed, uint256 amount) external {
        address actor = _actor(seed);
        amount = bound(amount, 1, _token.balanceOf(actor) + 1);
        vm.prank(actor);
        _verifiers.addStake(amount);
    }

    function unbond(uint256 seed, uint256 amount) external {
        address actor = _actor(seed);
        amount = bound(amount, 1, _verifiers.getStake(actor).stake + 1);
        vm.prank(actor);
        _verifiers.unbond(amount);
    }

    function withdraw(uint256 seed) external {
        vm.prank(_actor(seed));
        _verifiers.withdraw();
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 10 days));
    }
}

/// @title VerifierRegistry invariants: the stake pot always matches the token balance.
contract VerifierRegistryInvariantTest is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;

    StakeToken internal token;
    VerifierRegistry internal verifiers;
    VerifierRegistryHandler internal handler;

    function setUp() public {
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        verifiers = new VerifierRegistry(token, 1_000e18, 7 days);
        address[] memory actors = new address[](4);
        for (uint256 i = 0; i < actors.length; ++i) {
            actors[i] = address(uint160(0xF000 + i));
            token.transfer(actors[i], 20_000e18);
            vm.prank(actors[i]);
            token.approve(address(verifiers), type(uint256).max);
        }
        handler = new VerifierRegistryHandler(token, verifiers, actors);
        targetContract(address(handler));
    }

    function invariant_totalStakedEqualsBalanceAndSumOfVerifiers() public view {
        address[] memory actors = handler.actors();
        uint256 sum = 0;
        for (uint256 i = 0; i < actors.length; ++i) {
            IStakeRegistry.Stake memory v = verifiers.getStake(actors[i]);
            sum += v.stake + v.unbonding;
        }
        assertEq(verifiers.totalStaked(), sum, "totalStaked == sum of stake + unbonding");
        assertEq(token.balanceOf(address(verifiers)), sum, "balance == sum of stake + unbonding");
    }

    function invariant_supplyIsConserved() public view {
        address[] memory actors = handler.actors();
        uint256 held = token.balanceOf(address(this)) + token.balanceOf(address(verifiers));
        for (uint256 i = 0; i < actors.length; ++i) {
            held += token.balanceOf(actors[i]);
        }
        assertEq(held, token.totalSupply(), "every token is held by a known account");
    }
}
