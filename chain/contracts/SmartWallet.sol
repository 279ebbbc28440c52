// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ERC1155Holder} from "@openzeppelin/contracts/token/ERC1155/utils/ERC1155Holder.sol";
import {ERC721Holder} from "@openzeppelin/contracts/token/ERC721/utils/ERC721Holder.sol";

/// @title SmartWallet
/// @notice A minimal EIP-1271 contract wallet: a signature is valid when it recovers to `owner`.
/// It accepts ERC-1155 and ERC-721 tokens so it can hold credits and passes as a subscriber.
contract SmartWallet is IERC1271, ERC1155Holder, ERC721Holder {
    bytes4 internal constant MAGIC_VALUE = 0x1626ba7e; // IERC1271.isValidSignature.selector
    bytes4 internal constant INVALID = 0xffffffff;

    address public immutable owner;

    constructor(address owner_) {
        owner = owner_;
    }

    function isValidSignature(bytes32 hash, bytes memory signature) external view returns (bytes4) {
        (address recovered, ECDSA.RecoverError err, ) = ECDSA.tryRecover(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == owner) {
            return MAGIC_VALUE;
        }
        return INVALID;
    }
}
