// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC5267} from "@openzeppelin/contracts/interfaces/IERC5267.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

/// @title SaltedEIP712: an EIP-712 domain with a per-deployment salt.
/// @notice OpenZeppelin's `EIP712` binds name, version, chain id and contract address, so a
/// contract redeployed at the same address on the same chain (a devnet restarted from genesis)
/// would accept signatures made for the old one. The domain here adds the EIP-712 `salt` field,
/// chosen at deployment: `EIP712Domain(string name,string version,uint256 chainId,
/// address verifyingContract,bytes32 salt)`. ERC-5267's `eip712Domain` reports all five fields.
abstract contract SaltedEIP712 is IERC5267 {
    bytes32 private constant _TYPE_HASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract,bytes32 salt)"
    );

    bytes32 private immutable _nameHash;
    bytes32 private immutable _versionHash;
    bytes32 private immutable _salt;
    uint256 private immutable _cachedChainId;
    address private immutable _cachedThis;
    bytes32 private immutable _cachedDomainSeparator;
    string private _name;
    string private _version;

    constructor(string memory name_, string memory version_, bytes32 salt_) {
        _name = name_;
        _version = version_;
        _nameHash = keccak256(bytes(name_));
        _versionHash = keccak256(bytes(version_));
        _salt = salt_;
        _cachedChainId = block.chainid;
        _cachedThis = address(this);
        _cachedDomainSeparator = _buildDomainSeparator();
    }

    /// @inheritdoc IERC5267
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        return (hex"1f", _name, _version, block.chainid, address(this), _salt, new uint256[](0));
    }

    /// @dev The digest to sign for `structHash` under this domain (recomputed after a chain fork,
    /// or for code running at another address, as `eip712Domain` reports it).
    function _hashTypedData(bytes32 structHash) internal view returns (bytes32) {
        bytes32 separator = address(this) == _cachedThis && block.chainid == _cachedChainId
            ? _cachedDomainSeparator
            : _buildDomainSeparator();
        return MessageHashUtils.toTypedDataHash(separator, structHash);
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(_TYPE_HASH, _nameHash, _versionHash, block.chainid, address(this), _salt));
    }
}
