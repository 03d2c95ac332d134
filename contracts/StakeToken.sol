// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title StakeToken: the devnet's stake and payment token.
/// @notice A plain ERC20 with EIP-2612 `permit`. The whole supply is minted once, to `holder`, at
/// deployment; there is no owner and no way to mint or burn afterwards, so the supply is fixed.
contract StakeToken is ERC20, ERC20Permit {
    /// @param name_ ERC20 name (also the EIP-712 domain name of `permit`).
    /// @param symbol_ ERC20 symbol.
    /// @param holder Receives the whole supply.
    /// @param supply Total supply in base units (18 decimals).
    constructor(string memory name_, string memory symbol_, address holder, uint256 supply)
        ERC20(name_, symbol_)
        ERC20Permit(name_)
    {
        _mint(holder, supply);
    }
}
