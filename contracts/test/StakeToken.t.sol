// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

import {StakeToken} from "../StakeToken.sol";

import {TestBase} from "./helpers/TestBase.sol";

/// @title StakeToken tests: fixed supply to one holder, no minting afterwards, EIP-2612 permit.
contract StakeTokenTest is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;
    uint256 internal constant OWNER_PK = 0x0A;
    address internal constant HOLDER = address(0x401D);
    address internal constant SPENDER = address(0x5BE4);

    StakeToken internal token;
    address internal owner;

    function setUp() public {
        token = new StakeToken("stakeswarm Stake", "SWARM", HOLDER, SUPPLY);
        owner = vm.addr(OWNER_PK);
        vm.prank(HOLDER);
        token.transfer(owner, 1_000e18);
    }

    function _permitDigest(address owner_, address spender, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                owner_,
                spender,
                value,
                nonce,
                deadline
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
    }

    function test_constructor_mintsTheWholeSupplyToTheHolder() public {
        StakeToken fresh = new StakeToken("stakeswarm Stake", "SWARM", HOLDER, SUPPLY);
        assertEq(fresh.totalSupply(), SUPPLY, "totalSupply");
        assertEq(fresh.balanceOf(HOLDER), SUPPLY, "holder balance");
        assertEq(fresh.balanceOf(address(this)), 0, "deployer balance");
        assertEq(keccak256(bytes(fresh.name())), keccak256("stakeswarm Stake"), "name");
        assertEq(keccak256(bytes(fresh.symbol())), keccak256("SWARM"), "symbol");
        assertEq(uint256(fresh.decimals()), 18, "decimals");
    }

    function test_constructor_revertsOnZeroHolder() public {
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        new StakeToken("stakeswarm Stake", "SWARM", address(0), SUPPLY);
    }

    function test_mint_isNotCallable() public {
        (bool minted,) = address(token).call(abi.encodeWithSignature("mint(address,uint256)", address(this), 1));
        assertFalse(minted, "no mint function");
        assertEq(token.totalSupply(), SUPPLY, "supply unchanged");
    }

    function testFuzz_transfer_conservesSupply(uint256 amount) public {
        amount = bound(amount, 0, SUPPLY - 1_000e18);
        vm.prank(HOLDER);
        token.transfer(SPENDER, amount);
        assertEq(token.balanceOf(SPENDER) + token.balanceOf(HOLDER) + token.balanceOf(owner), SUPPLY, "conserved");
    }

    function test_permit_setsAllowanceWithoutATransactionFromTheOwner() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 digest = _permitDigest(owner, SPENDER, 500e18, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OWNER_PK, digest);
        token.permit(owner, SPENDER, 500e18, deadline, v, r, s);
        assertEq(token.allowance(owner, SPENDER), 500e18, "allowance");
        assertEq(token.nonces(owner), 1, "nonce");
        vm.prank(SPENDER);
        token.transferFrom(owner, SPENDER, 500e18);
        assertEq(token.balanceOf(SPENDER), 500e18, "spent");
    }

    function test_permit_revertsAfterDeadline() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OWNER_PK, _permitDigest(owner, SPENDER, 1, 0, deadline));
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612ExpiredSignature.selector, deadline));
        token.permit(owner, SPENDER, 1, deadline, v, r, s);
    }

    function test_permit_revertsOnWrongSigner() public {
        uint256 deadline = block.timestamp + 1 hours;
        uint256 strangerPk = 0x5712A;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(strangerPk, _permitDigest(owner, SPENDER, 1, 0, deadline));
        vm.expectRevert(
            abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, vm.addr(strangerPk), owner)
        );
        token.permit(owner, SPENDER, 1, deadline, v, r, s);
    }

    function test_permit_revertsOnReplay() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 digest = _permitDigest(owner, SPENDER, 1, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OWNER_PK, digest);
        token.permit(owner, SPENDER, 1, deadline, v, r, s);
        // With the nonce used up, the same signature recovers to someone else.
        address recovered = ecrecover(_permitDigest(owner, SPENDER, 1, 1, deadline), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, recovered, owner));
        token.permit(owner, SPENDER, 1, deadline, v, r, s);
    }
}
