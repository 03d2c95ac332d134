// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Commitments} from "../../Commitments.sol";
import {NodeRegistry} from "../../NodeRegistry.sol";
import {Slasher} from "../../Slasher.sol";
import {StakeToken} from "../../StakeToken.sol";
import {VerifierRegistry} from "../../VerifierRegistry.sol";
import {ISlasher} from "../../interfaces/ISlasher.sol";

import {Merkle} from "./Merkle.sol";
import {TestBase} from "./TestBase.sol";

/// @title SystemFixture: deploys the whole system the way the Python deployer does.
/// @notice Order: token, VerifierRegistry, NodeRegistry (its slasher is the predicted CREATE
/// address of the Slasher, two deployments later), Commitments, Slasher. The test contract holds
/// the whole token supply and funds actors from it.
abstract contract SystemFixture is TestBase {
    /// @notice Deployment parameters of one system.
    struct Params {
        uint256 minStakePerBlock;
        uint64 unbondingDelay;
        uint256 verifierMinStake;
        uint64 verifierUnbondingDelay;
        uint8 quorum;
        uint16 slashBps;
        uint16 bountyBps;
        uint64 challengeWindow;
        address rewardRecipient;
    }

    uint256 internal constant SUPPLY = 1_000_000_000e18;
    bytes32 internal constant MODEL = keccak256("SmolLM2-135M-Instruct");
    bytes internal constant PEER_ID = hex"0024080112203f6b1b6a8c3b0e5e3b9f0c1a2d4e5f60718293a4b5c6d7e8f9";
    address internal constant REWARD_RECIPIENT = address(0x7E5E);

    StakeToken internal token;
    VerifierRegistry internal verifierRegistry;
    NodeRegistry internal registry;
    Commitments internal commitments;
    Slasher internal slasher;

    function defaultParams() internal pure returns (Params memory) {
        return Params({
            minStakePerBlock: 100e18,
            unbondingDelay: 7 days,
            verifierMinStake: 1_000e18,
            verifierUnbondingDelay: 7 days,
            quorum: 1,
            slashBps: 5_000,
            bountyBps: 2_000,
            challengeWindow: 3 days,
            rewardRecipient: REWARD_RECIPIENT
        });
    }

    function deploySystem(Params memory p) internal {
        token = new StakeToken("stakeswarm Stake", "SWARM", address(this), SUPPLY);
        verifierRegistry = new VerifierRegistry(token, p.verifierMinStake, p.verifierUnbondingDelay);
        address predicted = vm.computeCreateAddress(address(this), vm.getNonce(address(this)) + 2);
        registry = new NodeRegistry(token, p.minStakePerBlock, p.unbondingDelay, predicted);
        commitments = new Commitments(registry);
        slasher = new Slasher(
            registry,
            commitments,
            verifierRegistry,
            p.quorum,
            p.slashBps,
            p.bountyBps,
            p.challengeWindow,
            p.rewardRecipient
        );
        require(address(slasher) == predicted, "fixture: slasher address prediction");
    }

    /// @notice Fund `node`, approve and register it for `[spanStart, spanEnd)` of MODEL.
    function registerNode(address node, uint16 spanStart, uint16 spanEnd, uint256 stake) internal {
        token.transfer(node, stake);
        vm.startPrank(node);
        token.approve(address(registry), stake);
        registry.register(MODEL, spanStart, spanEnd, 1e12, PEER_ID, stake);
        vm.stopPrank();
    }

    /// @notice Fund, approve and register `verifier` with `stake`.
    function registerVerifier(address verifier, uint256 stake) internal {
        token.transfer(verifier, stake);
        vm.startPrank(verifier);
        token.approve(address(verifierRegistry), stake);
        verifierRegistry.register(stake);
        vm.stopPrank();
    }

    /// @notice `node` commits the Merkle root of `leaves` (tokenCount = 3 per leaf).
    function commitLeaves(address node, bytes32[] memory leaves) internal returns (uint256 batchId) {
        vm.prank(node);
        batchId = commitments.commit(MODEL, Merkle.root(leaves), uint32(leaves.length), uint64(leaves.length * 3));
    }

    /// @notice A leaf of session `sessionId` at `step` over blocks [0, 8) of MODEL; `salt` varies its content.
    function makeLeaf(bytes32 sessionId, uint32 step, uint256 salt) internal pure returns (ISlasher.Leaf memory) {
        return ISlasher.Leaf({
            sessionId: sessionId,
            modelId: MODEL,
            spanStart: 0,
            spanEnd: 8,
            step: step,
            tokens: 3,
            inputHash: keccak256(abi.encode("input", sessionId, step, salt)),
            outputHash: keccak256(abi.encode("output", sessionId, step, salt)),
            sketchHash: keccak256(abi.encode("sketch", sessionId, step, salt))
        });
    }

    function signVerdict(uint256 privateKey, address node, uint256 batchId, bytes32 leaf, ISlasher.Reason reason)
        internal
        view
        returns (bytes memory)
    {
        return sign(privateKey, slasher.verdictDigest(node, batchId, leaf, reason));
    }

    function signWithheld(uint256 privateKey, address node, uint256 batchId, uint32 leafIndex)
        internal
        view
        returns (bytes memory)
    {
        return sign(privateKey, slasher.withheldDigest(node, batchId, leafIndex));
    }

    function signReceipt(uint256 privateKey, ISlasher.Leaf memory leaf) internal view returns (bytes memory) {
        return sign(privateKey, slasher.receiptDigest(leaf));
    }
}
