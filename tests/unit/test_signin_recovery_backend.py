"""Sign-in recovers signers with libsecp256k1 (coincurve, pinned in requirements.lock): ~0.1 ms a
recovery instead of ~5 ms with eth-keys' pure-Python backend, with the same answers."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys import KeyAPI
from eth_keys.backends import CoinCurveECCBackend, NativeECCBackend, get_backend

from gateway.auth.signin import _recovers_to


@pytest.mark.skipif("ECC_BACKEND_CLASS" in os.environ, reason="a backend is forced by ECC_BACKEND_CLASS")
def test_eth_keys_uses_the_libsecp256k1_backend():
    assert isinstance(get_backend(), CoinCurveECCBackend)


def test_both_backends_recover_the_same_signer():
    account = Account.from_key("0x" + "22" * 32)
    message = encode_defunct(text="proxy.localhost wants you to sign in with your Ethereum account")
    signed = account.sign_message(message)
    assert _recovers_to("proxy.localhost wants you to sign in with your Ethereum account", signed.signature,
                        account.address)
    digest = signed.message_hash
    fast, slow = KeyAPI(CoinCurveECCBackend), KeyAPI(NativeECCBackend)
    for backend in (fast, slow):
        signature = backend.Signature(signed.signature[:64] + bytes([signed.signature[64] - 27]))
        assert backend.ecdsa_recover(digest, signature).to_checksum_address() == account.address
