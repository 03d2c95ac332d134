// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Commitments} from "../Commitments.sol";
import {NodeRegistry} from "../NodeRegistry.sol";
import {StakeToken} from "../StakeToken.sol";
import {ICommitments} from "../interfaces/ICommitments.sol";
import {INodeRegistry} from "../interfaces/INodeRegistry.sol";

import {TestBase} from "./helpers/TestBase.sol";

/// @notice A registry and its commitments contract with one node registered for blocks [0, 8) of MODEL.
abstract contract CommitmentsSetup is TestBase {
    uint256 internal constant SUPPLY = 1_000_000_000e18;
    bytes32 internal constant MODEL = keccak256("SmolLM2-135M-Instruct");
    bytes32 internal constant ROOT = keccak256("root");
    address internal constant NODE = address(0xA11CE);
    address internal constant SLASHER = address(0x5154);
    uint32 internal constant MAX_LEAVES = 4096;
    uint64 internal constant T0 = 1_700_000_000;

    StakeToken internal token;
    NodeRegistry internal registry;
    Commitments internal commitments;

    function _deploy() internal {
        vm.warp(T0);
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        registry = new NodeRegistry(token, 100e18, 7 days, _nextButOne(), SLASHER);
        commitments = new Commitments(registry, MAX_LEAVES);
        token.transfer(NODE, 10_000e18);
        vm.startPrank(NODE);
        token.approve(address(registry), type(uint256).max);
        registry.register(MODEL, 0, 8, 1e12, hex"0102", 800e18);
        vm.stopPrank();
    }

    /// @dev The address of the second contract this test deploys from now on.
    function _nextButOne() internal view returns (address) {
        return vm.computeCreateAddress(address(this), vm.getNonce(address(this)) + 1);
    }
}

/// @title Commitments tests: who may commit what, batch ids, stored header hashes.
contract CommitmentsTest is CommitmentsSetup {
    function setUp() public {
        _deploy();
    }

    function _header(bytes32 root, uint32 leafCount, uint64 committedAt)
        internal
        pure
        returns (ICommitments.BatchHeader memory)
    {
        return ICommitments.BatchHeader({
            node: NODE,
            modelId: MODEL,
            root: root,
            leafCount: leafCount,
            committedAt: committedAt
        });
    }

    function test_constructor_setsRegistryAndMaxLeaves() public view {
        assertEq(address(commitments.registry()), address(registry), "registry");
        assertEq(registry.commitments(), address(commitments), "the registry names it");
        assertEq(uint256(commitments.maxLeaves()), MAX_LEAVES, "maxLeaves");
        assertEq(commitments.batchCount(), 0, "batchCount");
    }

    function test_constructor_revertsUnlessTheRegistryNamesIt() public {
        NodeRegistry other = new NodeRegistry(token, 100e18, 7 days, address(0xC0), SLASHER);
        vm.expectRevert(
            abi.encodeWithSelector(ICommitments.CommitmentsNotRegistryCommitments.selector, address(0xC0))
        );
        new Commitments(other, MAX_LEAVES);
    }

    function test_constructor_revertsOnZeroMaxLeaves() public {
        NodeRegistry other = new NodeRegistry(token, 100e18, 7 days, _nextButOne(), SLASHER);
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsInvalidMaxLeaves.selector, uint32(0)));
        new Commitments(other, 0);
    }

    function test_commit_storesHeaderHashesWithIdsFromOne() public {
        vm.expectEmit(address(commitments));
        emit ICommitments.BatchCommitted(1, NODE, MODEL, ROOT, 16, T0);
        vm.prank(NODE);
        uint256 first = commitments.commit(MODEL, ROOT, 16);
        vm.snapshotGasLastCall("stakeswarm", "Commitments.commit");
        vm.warp(T0 + 60);
        vm.prank(NODE);
        uint256 second = commitments.commit(MODEL, keccak256("root 2"), 1);

        assertEq(first, 1, "first id");
        assertEq(second, 2, "second id");
        assertEq(commitments.batchCount(), 2, "batchCount");
        ICommitments.BatchHeader memory h1 = _header(ROOT, 16, T0);
        assertEq(commitments.batchHash(1), keccak256(abi.encode(h1)), "first header hash");
        assertEq(commitments.hashHeader(h1), keccak256(abi.encode(h1)), "hashHeader");
        assertEq(
            commitments.batchHash(2),
            commitments.hashHeader(_header(keccak256("root 2"), 1, T0 + 60)),
            "second header hash"
        );
        commitments.checkBatch(1, h1);
        assertEq(uint256(registry.getNode(NODE).lastCommitAt), T0 + 60, "the registry records the last commit");
    }

    function test_commit_revertsForUnregisteredSender() public {
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryNodeInactive.selector, address(this)));
        commitments.commit(MODEL, ROOT, 1);
    }

    function test_commit_revertsForNodeThatLeft() public {
        vm.prank(NODE);
        registry.unbond(800e18);
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryNodeInactive.selector, NODE));
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 1);
    }

    function test_commit_revertsForOtherModel() public {
        bytes32 other = keccak256("Qwen2-0.5B");
        vm.expectRevert(abi.encodeWithSelector(INodeRegistry.RegistryModelMismatch.selector, NODE, other, MODEL));
        vm.prank(NODE);
        commitments.commit(other, ROOT, 1);
    }

    function test_commit_revertsOnEmptyBatch() public {
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsEmptyBatch.selector));
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 0);
    }

    function test_commit_revertsOnZeroRoot() public {
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsZeroRoot.selector));
        vm.prank(NODE);
        commitments.commit(MODEL, bytes32(0), 1);
    }

    function test_commit_revertsOnARootTheNodeAlreadyCommitted() public {
        vm.prank(NODE);
        uint256 first = commitments.commit(MODEL, ROOT, 16);
        vm.warp(T0 + 8);
        vm.expectRevert(
            abi.encodeWithSelector(ICommitments.CommitmentsRootAlreadyCommitted.selector, NODE, ROOT, first)
        );
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 16);
        assertEq(commitments.batchCount(), 1, "one batch");
    }

    function test_commit_recordsTheBatchOfEachRoot() public {
        assertEq(commitments.batchOfRoot(NODE, ROOT), 0, "nothing committed yet");
        vm.prank(NODE);
        commitments.commit(MODEL, keccak256("root 0"), 1);
        vm.prank(NODE);
        uint256 id = commitments.commit(MODEL, ROOT, 1);
        assertEq(commitments.batchOfRoot(NODE, ROOT), id, "the root's batch");
        assertEq(commitments.batchOfRoot(address(0xB0B), ROOT), 0, "another node's root is its own");
    }

    function test_commit_acceptsTheSameRootFromAnotherNode() public {
        address other = address(0xB0B);
        token.transfer(other, 10_000e18);
        vm.startPrank(other);
        token.approve(address(registry), type(uint256).max);
        registry.register(MODEL, 0, 8, 1e12, hex"0304", 800e18);
        vm.stopPrank();
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 1);
        vm.prank(other);
        assertEq(commitments.commit(MODEL, ROOT, 1), 2, "another node's batch");
        assertEq(commitments.batchOfRoot(other, ROOT), 2, "recorded for that node");
    }

    function test_commit_acceptsExactlyMaxLeaves() public {
        vm.prank(NODE);
        assertEq(commitments.commit(MODEL, ROOT, MAX_LEAVES), 1, "a full batch");
    }

    function testFuzz_commit_revertsAboveMaxLeaves(uint32 leafCount) public {
        leafCount = uint32(bound(leafCount, uint256(MAX_LEAVES) + 1, type(uint32).max));
        vm.expectRevert(
            abi.encodeWithSelector(ICommitments.CommitmentsTooManyLeaves.selector, leafCount, MAX_LEAVES)
        );
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, leafCount);
    }

    function testFuzz_commit_storesWhatWasSent(bytes32 root, uint32 leafCount, uint32 later) public {
        vm.assume(root != bytes32(0));
        leafCount = uint32(bound(leafCount, 1, MAX_LEAVES));
        vm.warp(T0 + bound(later, 0, 365 days));
        vm.prank(NODE);
        uint256 id = commitments.commit(MODEL, root, leafCount);
        ICommitments.BatchHeader memory h = _header(root, leafCount, uint64(block.timestamp));
        commitments.checkBatch(id, h);
        assertEq(commitments.batchHash(id), keccak256(abi.encode(h)), "stored hash");
    }

    function test_checkBatch_revertsOnUnknownIdsAndOtherHeaders() public {
        ICommitments.BatchHeader memory h = _header(ROOT, 1, T0);
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsUnknownBatch.selector, 0));
        commitments.checkBatch(0, h);
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 1);
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsUnknownBatch.selector, 2));
        commitments.checkBatch(2, h);
        h.leafCount = 2;
        vm.expectRevert(abi.encodeWithSelector(ICommitments.CommitmentsHeaderMismatch.selector, 1));
        commitments.checkBatch(1, h);
        assertEq(commitments.batchHash(2), bytes32(0), "no hash for an unknown batch");
    }
}

/// @title Commitments gas of a later batch: the chain's first batch was committed in an earlier
/// transaction (setUp), so this commit finds every slot it touches cold, as on a real chain.
contract CommitmentsLaterBatchTest is CommitmentsSetup {
    function setUp() public {
        _deploy();
        vm.prank(NODE);
        commitments.commit(MODEL, ROOT, 16);
        vm.warp(T0 + 60);
    }

    function test_commit_laterBatchNeedsNoNewCounterSlot() public {
        vm.prank(NODE);
        uint256 id = commitments.commit(MODEL, keccak256("root 2"), 4096);
        vm.snapshotGasLastCall("stakeswarm", "Commitments.commit later batch");
        assertEq(id, 2, "second id");
        assertEq(uint256(registry.getNode(NODE).lastCommitAt), T0 + 60, "lastCommitAt moved on");
    }
}
