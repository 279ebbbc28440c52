"""Revert reasons decoded for the operator's logs."""

from __future__ import annotations

from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector as selector

from gateway.credits.settlement import decode_revert


def revert(sig: str, types: list[str], args: list) -> str:
    return "0x" + (selector(sig) + encode(types, args)).hex()


def test_missing_burner_role_is_named_with_its_arguments():
    data = revert("AccessControlUnauthorizedAccount(address,bytes32)", ["address", "bytes32"],
                  ["0x976EA74026E726554dB657fA54763abd0C3a0aa9", b"\x01" * 32])
    reason = decode_revert({"data": data})
    assert reason.startswith("reverted: AccessControlUnauthorizedAccount(0x976ea74026e726554db657fa54763abd0c3a0aa9, ")
    assert "01" * 32 in reason


def test_insufficient_balance_and_error_string():
    data = revert("ERC1155InsufficientBalance(address,uint256,uint256,uint256)", ["address", "uint256", "uint256", "uint256"],
                  ["0x976EA74026E726554dB657fA54763abd0C3a0aa9", 1, 5, 1])
    assert decode_revert(data) == "reverted: ERC1155InsufficientBalance(0x976ea74026e726554db657fa54763abd0c3a0aa9, 1, 5, 1)"
    assert decode_revert(revert("Error(string)", ["string"], ["nope"])) == "reverted: Error(nope)"


def test_unknown_or_missing_data():
    assert decode_revert("0xdeadbeef") == "reverted with unknown error 0xdeadbeef"
    assert decode_revert(None) == "reverted (no reason given)"
    assert decode_revert("0x12") == "reverted (no reason given)"
