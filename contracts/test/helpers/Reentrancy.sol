// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice Implemented by contracts that want to hear about tokens they receive from `HookToken`.
interface ITokenReceiver {
    function onTokenReceived(address from, uint256 amount) external;
}

/// @title HookToken: an ERC20 that calls its receivers back (ERC-777 style), for reentrancy tests.
/// @notice A receiver opts in with `setHook(true)`; every transfer to it then calls
/// `onTokenReceived` after the balances moved, giving it a chance to re-enter the payer.
contract HookToken is ERC20 {
    mapping(address receiver => bool) public hooked;

    constructor(address holder, uint256 supply) ERC20("Hook", "HOOK") {
        _mint(holder, supply);
    }

    function setHook(bool on) external {
        hooked[msg.sender] = on;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (hooked[to]) ITokenReceiver(to).onTokenReceived(from, value);
    }
}

/// @title Reenterer: an account that makes one call back into a contract while it is being paid.
/// @notice `execute` makes any call as this contract; `arm` stores the call to make from
/// `onTokenReceived` (once). Reverts bubble up unchanged, so a test sees the inner error.
contract Reenterer is ITokenReceiver {
    address internal _target;
    bytes internal _data;

    constructor(HookToken token) {
        token.setHook(true);
    }

    function arm(address target, bytes calldata data) external {
        _target = target;
        _data = data;
    }

    function execute(address target, bytes calldata data) external returns (bytes memory) {
        return _call(target, data);
    }

    function onTokenReceived(address, uint256) external {
        address target = _target;
        if (target == address(0)) return;
        _target = address(0);
        _call(target, _data);
    }

    function _call(address target, bytes memory data) internal returns (bytes memory result) {
        bool ok;
        (ok, result) = target.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 0x20), mload(result))
            }
        }
    }
}
