// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC3009} from "@openzeppelin/contracts/token/ERC20/extensions/draft-ERC3009.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title PaymentToken
/// @notice A small USDC-like ERC-20 (6 decimals) with EIP-3009 `transferWithAuthorization`,
/// `receiveWithAuthorization`, `cancelAuthorization` and `authorizationState` (OpenZeppelin's
/// ERC3009), so x402 `exact` payments can be made and settled on a local chain. The EIP-712 domain
/// is (name, version "1", chainid, this contract): the `extra: {name, version}` of an x402 offer.
/// The owner mints (demo payers); nothing else is special.
contract PaymentToken is ERC20, EIP712, ERC3009, Ownable {
    constructor(address owner_, string memory name_, string memory symbol_)
        ERC20(name_, symbol_)
        EIP712(name_, "1")
        Ownable(owner_)
    {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
