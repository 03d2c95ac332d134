// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC5267} from "@openzeppelin/contracts/interfaces/IERC5267.sol";

import {PaymentChannels} from "../PaymentChannels.sol";
import {ISlasher} from "../interfaces/ISlasher.sol";

import {SystemFixture} from "./helpers/Fixture.sol";

/// @title The shared EIP-712 vector (contracts/test/vectors/eip712.json, signed with eth-account):
/// the contracts must produce its digests (voucher, receipt, verdict, withheld) and leaf hash,
/// and its signatures must recover to its signer.
/// @notice The contracts' runtime code is put at the vector's addresses under chain id 31337, so
/// the EIP-712 code builds the domain separator for exactly the vector's domain. The Slasher is
/// deployed with the vector's salt (an immutable, so the etched code carries it). The system is
/// deployed under another chain id first: `SaltedEIP712` caches its separator per chain id (with
/// the deployed address in it), so only under a chain id other than the cached one does the
/// etched copy build the separator from its own address.
contract Eip712VectorTest is SystemFixture {
    string internal constant VECTOR = "contracts/test/vectors/eip712.json";

    string internal _json;
    PaymentChannels internal _channels;
    ISlasher internal _slasher;

    function setUp() public {
        _json = vm.readFile(VECTOR);
        uint256 chainId = vm.parseJsonUint(_json, ".chainId");
        vm.chainId(chainId + 1);
        Params memory p = defaultParams();
        p.domainSalt = vm.parseJsonBytes32(_json, ".slasherSalt");
        deploySystem(p);
        PaymentChannels deployed =
            new PaymentChannels(token, 30 days, vm.parseJsonBytes32(_json, ".paymentChannelsSalt"));
        vm.chainId(chainId);

        address channelsAt = vm.parseJsonAddress(_json, ".paymentChannels");
        address slasherAt = vm.parseJsonAddress(_json, ".slasher");
        vm.etch(channelsAt, address(deployed).code);
        vm.etch(slasherAt, address(slasher).code);
        _channels = PaymentChannels(channelsAt);
        _slasher = ISlasher(slasherAt);
    }

    function _leaf() internal view returns (ISlasher.Leaf memory) {
        return ISlasher.Leaf({
            sessionId: vm.parseJsonBytes32(_json, ".receipt.sessionId"),
            modelId: vm.parseJsonBytes32(_json, ".receipt.modelId"),
            spanStart: uint16(vm.parseJsonUint(_json, ".receipt.spanStart")),
            spanEnd: uint16(vm.parseJsonUint(_json, ".receipt.spanEnd")),
            step: uint32(vm.parseJsonUint(_json, ".receipt.step")),
            tokens: uint32(vm.parseJsonUint(_json, ".receipt.tokens")),
            inputHash: vm.parseJsonBytes32(_json, ".receipt.inputHash"),
            outputHash: vm.parseJsonBytes32(_json, ".receipt.outputHash"),
            sketchHash: vm.parseJsonBytes32(_json, ".receipt.sketchHash"),
            issuedAt: uint64(vm.parseJsonUint(_json, ".receipt.issuedAt"))
        });
    }

    function _assertSignedBySigner(bytes32 digest, string memory key, string memory what) internal view {
        bytes memory signature = vm.parseJsonBytes(_json, key);
        assertEq(signature.length, 65, string.concat(what, " signature length"));
        address signer = vm.parseJsonAddress(_json, ".signer");
        assertEq(ecrecoverSignature(digest, signature), signer, string.concat(what, " signer"));
    }

    function test_vector_signerIsThePrivateKeysAddress() public view {
        assertEq(
            vm.addr(vm.parseJsonUint(_json, ".privateKey")), vm.parseJsonAddress(_json, ".signer"), "signer address"
        );
        assertEq(block.chainid, 31337, "chain id");
    }

    function test_eip712Domain_reportsTheVectorsSalt() public view {
        (bytes1 fields,,, uint256 chainId, address verifyingContract, bytes32 salt,) =
            IERC5267(address(_slasher)).eip712Domain();
        assertEq(uint256(uint8(fields)), 0x1f, "fields: name, version, chainId, verifyingContract, salt");
        assertEq(chainId, vm.parseJsonUint(_json, ".chainId"), "chainId");
        assertEq(verifyingContract, vm.parseJsonAddress(_json, ".slasher"), "verifyingContract");
        assertEq(salt, vm.parseJsonBytes32(_json, ".slasherSalt"), "salt");
    }

    function test_voucherDigest_matchesTheVector() public view {
        bytes32 digest = _channels.voucherDigest(
            vm.parseJsonUint(_json, ".voucher.channelId"), vm.parseJsonUint(_json, ".voucher.cumulativeAmount")
        );
        assertEq(digest, vm.parseJsonBytes32(_json, ".voucher.digest"), "voucher digest");
        _assertSignedBySigner(digest, ".voucher.signature", "voucher");
    }

    function test_leafHash_matchesTheVector() public view {
        assertEq(_slasher.leafHash(_leaf()), vm.parseJsonBytes32(_json, ".receipt.leafHash"), "leaf hash");
    }

    function test_receiptDigest_matchesTheVector() public view {
        bytes32 digest = _slasher.receiptDigest(_leaf());
        assertEq(digest, vm.parseJsonBytes32(_json, ".receipt.digest"), "receipt digest");
        _assertSignedBySigner(digest, ".receipt.signature", "receipt");
    }

    function test_verdictDigest_matchesTheVector() public view {
        bytes32 leaf = vm.parseJsonBytes32(_json, ".verdict.leaf");
        assertEq(leaf, _slasher.leafHash(_leaf()), "the verdict is about the receipt's leaf");
        bytes32 digest = _slasher.verdictDigest(
            vm.parseJsonAddress(_json, ".verdict.node"),
            vm.parseJsonUint(_json, ".verdict.batchId"),
            leaf,
            ISlasher.Reason(vm.parseJsonUint(_json, ".verdict.reason"))
        );
        assertEq(digest, vm.parseJsonBytes32(_json, ".verdict.digest"), "verdict digest");
        _assertSignedBySigner(digest, ".verdict.signature", "verdict");
    }

    function test_withheldDigest_matchesTheVector() public view {
        uint256 leafIndex = vm.parseJsonUint(_json, ".withheld.leafIndex");
        assertTrue(leafIndex <= type(uint32).max, "leafIndex is a uint32");
        bytes32 digest = _slasher.withheldDigest(
            vm.parseJsonAddress(_json, ".withheld.node"),
            vm.parseJsonUint(_json, ".withheld.batchId"),
            uint32(leafIndex)
        );
        assertEq(digest, vm.parseJsonBytes32(_json, ".withheld.digest"), "withheld digest");
        _assertSignedBySigner(digest, ".withheld.signature", "withheld");
    }

    function test_digests_dependOnTheAddress() public view {
        // The same code at its deployed address signs a different domain: the etch is what makes
        // the vector match, not a hard-coded separator.
        assertTrue(
            slasher.receiptDigest(_leaf()) != vm.parseJsonBytes32(_json, ".receipt.digest"),
            "receipt digest is bound to the contract address"
        );
        assertTrue(
            slasher.withheldDigest(
                vm.parseJsonAddress(_json, ".withheld.node"),
                vm.parseJsonUint(_json, ".withheld.batchId"),
                uint32(vm.parseJsonUint(_json, ".withheld.leafIndex"))
            ) != vm.parseJsonBytes32(_json, ".withheld.digest"),
            "withheld digest is bound to the contract address"
        );
    }
}
