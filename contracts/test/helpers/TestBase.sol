// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {Vm} from "./Vm.sol";

/// @title TestBase: the few test helpers forge-std would give (asserts, bound, signing, targets).
/// @notice A failed assert reverts with a message naming both values, which fails the test.
abstract contract TestBase {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @dev secp256k1 group order, for building malleable (high-s) signatures.
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    address[] private _targetContracts;

    /// @notice Contracts the invariant fuzzer calls (read by the runner, as with forge-std).
    function targetContracts() public view returns (address[] memory) {
        return _targetContracts;
    }

    function targetContract(address target) internal {
        _targetContracts.push(target);
    }

    function assertEq(uint256 actual, uint256 expected, string memory what) internal pure {
        if (actual != expected) {
            revert(
                string.concat(
                    what, ": got ", Strings.toString(actual), ", expected ", Strings.toString(expected)
                )
            );
        }
    }

    function assertEq(address actual, address expected, string memory what) internal pure {
        if (actual != expected) {
            revert(
                string.concat(
                    what, ": got ", Strings.toHexString(actual), ", expected ", Strings.toHexString(expected)
                )
            );
        }
    }

    function assertEq(bytes32 actual, bytes32 expected, string memory what) internal pure {
        if (actual != expected) {
            revert(
                string.concat(
                    what,
                    ": got ",
                    Strings.toHexString(uint256(actual), 32),
                    ", expected ",
                    Strings.toHexString(uint256(expected), 32)
                )
            );
        }
    }

    function assertEq(bool actual, bool expected, string memory what) internal pure {
        if (actual != expected) revert(string.concat(what, expected ? ": expected true" : ": expected false"));
    }

    function assertTrue(bool condition, string memory what) internal pure {
        if (!condition) revert(string.concat(what, ": expected true"));
    }

    function assertFalse(bool condition, string memory what) internal pure {
        if (condition) revert(string.concat(what, ": expected false"));
    }

    /// @notice Maps any `x` into `[min, max]` (inclusive), keeping small values as they are
    /// where possible, so fuzzed inputs stay meaningful.
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        if (x >= min && x <= max) return x;
        uint256 size = max - min;
        if (size == type(uint256).max) return x;
        return min + (x % (size + 1));
    }

    /// @notice A 65-byte r || s || v signature of `digest` by `privateKey`.
    function sign(uint256 privateKey, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(privateKey, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @notice The other valid ECDSA signature of the same digest: s' = n - s, v flipped.
    /// `ecrecover` accepts it; OpenZeppelin's `ECDSA.tryRecover` must not.
    function malleate(bytes memory signature) internal pure returns (bytes memory) {
        (bytes32 r, bytes32 s, uint8 v) = splitSignature(signature);
        return abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), v == 27 ? uint8(28) : uint8(27));
    }

    /// @notice What plain `ecrecover` makes of a 65-byte signature (accepts malleable ones).
    function ecrecoverSignature(bytes32 digest, bytes memory signature) internal pure returns (address) {
        (bytes32 r, bytes32 s, uint8 v) = splitSignature(signature);
        return ecrecover(digest, v, r, s);
    }

    function splitSignature(bytes memory signature) internal pure returns (bytes32 r, bytes32 s, uint8 v) {
        require(signature.length == 65, "signature length");
        assembly ("memory-safe") {
            r := mload(add(signature, 0x20))
            s := mload(add(signature, 0x40))
            v := byte(0, mload(add(signature, 0x60)))
        }
    }
}
