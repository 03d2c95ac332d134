// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Commitments} from "../Commitments.sol";
import {NodeRegistry} from "../NodeRegistry.sol";
import {StakeToken} from "../StakeToken.sol";
import {ICommitments} from "../interfaces/ICommitments.sol";

import {TestBase} from "./helpers/TestBase.sol";

/// @title Commitments tests: who may commit what, batch ids, stored batches.
contract CommitmentsTest is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;
    bytes32 internal constant MODEL = keccak256("SmolLM2-135M-Instruct");
    bytes32 internal constant ROOT = keccak256("root");
    address internal constant NODE = address(0xA11CE);

    StakeToken internal token;
    NodeRegistry internal registry;
    Commitments internal commitments;

    function setUp() public {
        vm.warp(1_700_000_000);
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        registry = new NodeRegistry(token, 100e18, 7 days, address(0x5154));
        commitments = new Commitments(registry);
        token.transfer(NODE, 10_000e18);
        vm.startPrank(NODE);
        token.approve(address(registry), type(uint256).max);
        registry.register(MODEL, 0, 8, 1e12, hex"0102", 800e18);
        vm.stopPrank();
    }

    function test_constructor_setsRegistry() public view {
        assertEq(address(commitments.registry()), address(registry), "registry");
        assertEq(commitments.batchCount(), 0, "batchCount");
    }

    function test_commit_storesBatchWithIdsFromOne() public {
        vm.expectEmit(address(commitments));
        emit ICommitments.BatchCommitted(1, NODE, MODEL, ROOT, 16, 48);
        vm.prank(NODE);
        uint256 first = commitments.commit(MODEL, ROOT, 16, 48);
        vm.snapshotGasLastCall("stakeswarm", "Commitments.commit");
        vm.warp(block.timestamp + 60);
        vm.prank(NODE);
        uint256 second = commitments.commit(MODEL, keccak256("root 2"), 1, 3);

        assertEq(first, 1, "first id");
        assertEq(second, 2, "second id");
        assertEq(commitments.batchCount(), 2, "batchCount");
        ICommitments.Batch memory b = commitments.getBatch(1);
        assertEq(b.node, NODE, "node");
        assertEq(b.modelId, MODEL, "modelId");
        assertEq(b.root, ROOT, "root");
        assertEq(uint256(b.leafCount), 16, "leafCount");
        assertEq(uint256(b.tokenCount), 48, "tokenCount");
        assertEq(uint256(b.committedAt), 1_700_000_000, "committedAt");
        assertEq(uint256(commitments.getBatch(2).committedAt), 1_700_000_060, "second committedAt");
    }

    function test_commit_revertsForUnregisteredSender() public {
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsNodeInactive.selector, address(this)));
        commitments.commit(MODEL, ROOT, 1, 1);
    }

    function test_commit_revertsForNodeThatLeft() public {
        vm.prank(NODE);
        registry.unbond(800e18);
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsNodeInactive.selector, NODE));
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 1, 1);
    }

    function test_commit_revertsForOtherModel() public {
        bytes32 other = keccak256("Qwen2-0.5B");
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsModelMismatch.selector, NODE, other, MODEL));
        vm.prank(NODE);
        commitments.commit(other, ROOT, 1, 1);
    }

    function test_commit_revertsOnEmptyBatch() public {
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsEmptyBatch.selector));
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 0, 0);
    }

    function test_commit_revertsOnZeroRoot() public {
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsZeroRoot.selector));
        vm.prank(NODE);
        commitments.commit(MODEL, bytes32(0), 1, 1);
    }

    function testFuzz_commit_storesWhatWasSent(bytes32 root, uint32 leafCount, uint64 tokenCount) public {
        vm.assume(root != bytes32(0));
        leafCount = uint32(bound(leafCount, 1, type(uint32).max));
        vm.prank(NODE);
        uint256 id = commitments.commit(MODEL, root, leafCount, tokenCount);
        ICommitments.Batch memory b = commitments.getBatch(id);
        assertEq(b.root, root, "root");
        assertEq(uint256(b.leafCount), leafCount, "leafCount");
        assertEq(uint256(b.tokenCount), tokenCount, "tokenCount");
    }

    function test_getBatch_revertsOnUnknownIds() public {
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsUnknownBatch.selector, 0));
        commitments.getBatch(0);
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 1, 1);
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsUnknownBatch.selector, 2));
        commitments.getBatch(2);
    }
}
