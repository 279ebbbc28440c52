"""Self-facilitated x402 settlement signs with the operator key in every worker and replica: when
another sender took the nonce a settlement picked, the node refuses it unmined and the gateway's
signer signs it again with the next free nonce (gateway.x402.facilitators), on a real anvil."""

from __future__ import annotations

import pytest
from eth_account import Account

from gateway.dev.chain import DEV_ACCOUNTS, load_artifact
from gateway.x402 import facilitators

OPERATOR, OPERATOR_KEY = DEV_ACCOUNTS[0]
RECEIVER = DEV_ACCOUNTS[5][0]


@pytest.fixture
def token(chain) -> str:
    return chain.dev.deploy_payment_token(owner=OPERATOR)


def signer_whose_first_nonce_was_taken(chain):
    """The gateway's signer, whose first pick is a nonce another sender already used."""
    signer = facilitators._signer(OPERATOR_KEY, chain.rpc_url)
    taken = chain.dev.w3.eth.get_transaction_count(OPERATOR, "latest") - 1  # the deploy's, mined
    picks = []
    real = signer._reserve_nonce

    def reserve() -> int:
        picks.append(taken if not picks else real())
        return picks[-1]

    signer._reserve_nonce = reserve
    return signer, picks


def test_a_settlement_whose_nonce_was_taken_is_sent_again_with_a_free_one_and_mined_once(chain, token):
    signer, picks = signer_whose_first_nonce_was_taken(chain)
    abi = load_artifact("PaymentToken")["abi"]
    tx_hash = signer.write_contract(token, abi, "mint", RECEIVER, 7)
    assert len(picks) == 2 and picks[1] > picks[0]  # refused ("nonce too low"), then a free nonce
    assert signer.wait_for_transaction_receipt(tx_hash).status == 1
    assert chain.dev.token_balance(token, RECEIVER) == 7  # sent once


def test_other_send_failures_are_not_retried(chain, token):
    broke = Account.create()  # no ether: the node refuses the transaction for its funds, not its nonce
    signer = facilitators._signer("0x" + bytes(broke.key).hex(), chain.rpc_url)
    picks = []
    real = signer._reserve_nonce
    signer._reserve_nonce = lambda: picks.append(1) or real()
    with pytest.raises(Exception) as failed:
        signer.write_contract(token, load_artifact("PaymentToken")["abi"], "mint", RECEIVER, 1)
    assert "insufficient funds" in str(failed.value).lower()
    assert len(picks) == 1  # signed once: only a taken nonce is worth signing again
