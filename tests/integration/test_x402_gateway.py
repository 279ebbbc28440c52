"""x402 per-call payments through the real `gateway serve` on anvil, paid by the official SDK's
client: a real EIP-3009 token (chain/contracts/PaymentToken.sol), self-facilitated settlement
(the gateway submits transferWithAuthorization with the operator key), balances read on chain."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest
from x402.http import decode_payment_response_header

from gateway.auth.issuer import OwnIssuer
from gateway.dev.process import REPO, ChildProcess
from tests.support.served import Served
from tests.support.stack import BROKE, DEV_ACCOUNTS, HOST
from tests.support.x402 import (ASK_PRICE, FUNDS, PAYEE, PAYER, decoded, exact, funded_payment_token, pay,
                                paying_http, sell_per_call, signed, terms)

pytestmark = pytest.mark.asyncio
FACILITATOR = DEV_ACCOUNTS[7]


@pytest.fixture
def token(chain):
    return funded_payment_token(chain)


@pytest.fixture
def served(chain, plugin, signing_key, tmp_path, token):
    s = Served(chain, plugin, signing_key, tmp_path)
    sell_per_call(s, token)
    yield s
    s.stop()


def balances(chain, token) -> tuple[int, int]:
    return chain.dev.token_balance(token, PAYER[0]), chain.dev.token_balance(token, PAYEE)


def payments(served: Served) -> list[tuple]:
    return served.ledger("SELECT status, amount, tx_hash IS NOT NULL FROM x402_payments ORDER BY id")


async def test_the_sdk_client_pays_one_call_with_no_subscription(served, chain, token):
    served.start()
    async with paying_http(token) as http:  # no token, no plan: the 402's `exact` entry is paid
        resp = await http.post(f"http://127.0.0.1:{served.port}/ask", json={"question": "blue highway?"})
    assert resp.status_code == 200, resp.text
    settled = decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.payer == PAYER[0] and settled.network == "eip155:31337"
    receipt = chain.dev.w3.eth.get_transaction_receipt(settled.transaction)
    assert receipt["status"] == 1
    assert balances(chain, token) == (FUNDS - ASK_PRICE, ASK_PRICE)
    assert payments(served) == [("settled", str(ASK_PRICE), 1)]
    assert "X-Credits-Charged" not in resp.headers  # no credits were involved
    report = subprocess.run([sys.executable, "-m", "gateway", "usage", "--config", str(served.path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "x402 payments" in report
    assert re.search(rf"elvis\s+{PAYER[0].lower()}\s+settled\s+1\s+{ASK_PRICE}\s+{token.lower()}", report), report


async def test_the_402_offers_exact_beside_credits_and_a_token_keeps_the_credits_path(served, chain, token):
    served.start()
    required = await terms(served)
    assert [a.scheme for a in required.accepts] == ["erc1155-credits", "exact"]
    offer = exact(required)
    assert (offer.amount, offer.pay_to, offer.asset) == (str(ASK_PRICE), PAYEE, token)
    async with httpx.AsyncClient(headers={"Host": HOST}) as http:  # the plan lists the same terms
        plan = (await http.get(f"http://127.0.0.1:{served.port}/.gateway/plan")).json()["plan"]
    sold = {e["endpoint"]: e.get("x402", {}).get("amount") for e in plan["endpoints"]}
    assert sold == {"POST /query": "10000", "POST /ask": str(ASK_PRICE), "GET /status/:code": "10000"}
    status, headers = served.call()  # a subscriber's token: credits, as before
    assert (status, headers["X-Credits-Charged"]) == (200, "2")
    assert balances(chain, token) == (FUNDS, 0)


async def test_a_replayed_payment_is_refused_and_paid_once(served, chain, token):
    served.start()
    signature = await signed(token, exact(await terms(served)))
    assert (await pay(served, signature)).status_code == 200
    replay = await pay(served, signature)
    assert replay.status_code == 402
    assert replay.json()["code"] == "payment_invalid"
    assert decoded(replay.headers["PAYMENT-REQUIRED"])["error"] == "this payment authorization was already used"
    assert balances(chain, token) == (FUNDS - ASK_PRICE, ASK_PRICE)


@pytest.mark.parametrize("changes, reason", [
    ({"pay_to": PAYER[0]}, "invalid_exact_evm_payload_recipient_mismatch"),
    ({"amount": str(ASK_PRICE - 1)}, "invalid_exact_evm_payload_authorization_value_mismatch"),
    ({"max_timeout_seconds": 1}, "invalid_exact_evm_payload_authorization_valid_before"),  # expires at once
])
async def test_a_payment_that_does_not_pay_for_the_call_is_402(served, chain, token, changes, reason):
    served.start()
    resp = await pay(served, await signed(token, exact(await terms(served)), **changes))
    assert resp.status_code == 402
    body = resp.json()
    assert body["code"] == "payment_invalid" and reason in body["detail"]
    assert [a["scheme"] for a in decoded(resp.headers["PAYMENT-REQUIRED"])["accepts"]] == ["erc1155-credits", "exact"]
    assert balances(chain, token) == (FUNDS, 0) and payments(served) == []


async def test_a_malformed_payment_is_400(served):
    served.start()
    resp = await pay(served, "not base64 json")
    assert (resp.status_code, resp.json()["code"]) == (400, "bad_payment")


async def test_an_upstream_error_is_not_settled(served, chain, token):
    served.start()
    offer = exact(await terms(served, "/status/500", "GET"))
    resp = await pay(served, await signed(token, offer), "/status/500", "GET")
    assert resp.status_code == 500 and "PAYMENT-RESPONSE" not in resp.headers
    assert balances(chain, token) == (FUNDS, 0)  # the payer keeps the money
    assert payments(served) == [("void", "10000", 0)]


async def test_funds_moved_away_before_settlement_is_refused(served, chain, token):
    served.start()
    signature = await signed(token, exact(await terms(served)))
    chain.dev.transact(token, "PaymentToken", "transfer", PAYEE, FUNDS, sender_key=PAYER[1])
    resp = await pay(served, signature)
    assert resp.status_code == 402 and resp.json()["code"] == "payment_invalid"
    assert balances(chain, token) == (0, FUNDS)


@pytest.mark.parametrize("crash_at", ["x402_owed", "x402_sent"])
async def test_kill_between_record_and_send_transfers_exactly_once(served, chain, token, crash_at):
    served.start(crash_at=crash_at)
    signature = await signed(token, exact(await terms(served)))
    with pytest.raises(httpx.TransportError):  # the process SIGKILLs itself: the connection drops
        await pay(served, signature)
    assert served.child.proc.wait(timeout=30) == -signal.SIGKILL
    assert payments(served) == [("owed", str(ASK_PRICE), 0)]
    assert balances(chain, token) == ((FUNDS, 0) if crash_at == "x402_owed" else (FUNDS - ASK_PRICE, ASK_PRICE))

    served.start()  # the settling process reconciles at start: from authorizationState, never twice
    served.child.wait_for(r'"event": "x402_reconciled"', timeout=30)
    assert balances(chain, token) == (FUNDS - ASK_PRICE, ASK_PRICE)
    # x402_sent: not sent again; its transaction found by the token's AuthorizationUsed event
    assert payments(served) == [("settled", str(ASK_PRICE), 1)]
    assert (await pay(served, signature)).status_code == 402  # and the authorization stays spent


async def test_each_call_is_paid_by_its_own_authorization(served, chain, token):
    served.start()
    async with paying_http(token) as http:
        first = await http.post(f"http://127.0.0.1:{served.port}/ask", json={"question": "what happens on the blue highway"})
        second = await http.post(f"http://127.0.0.1:{served.port}/ask", json={"question": "who sings the blue highway"})
    assert (first.status_code, second.status_code) == (200, 200)
    assert balances(chain, token) == (FUNDS - 2 * ASK_PRICE, 2 * ASK_PRICE)  # two calls, two payments
    assert [row[0] for row in payments(served)] == ["settled", "settled"]



@pytest.fixture
def facilitator(chain):
    """The SDK's own facilitator in a process of its own, submitting with a key of its own."""
    child = ChildProcess([sys.executable, "-m", "tests.support.x402_facilitator", "--rpc-url", chain.rpc_url],
                         ready=r"x402 facilitator listening on (http://\S+)",
                         env={"X402_FACILITATOR_KEY": FACILITATOR[1]})
    yield child.ready_match.group(1)
    child.stop()


async def test_a_remote_facilitator_verifies_and_settles(chain, plugin, signing_key, tmp_path, token, facilitator):
    served = Served(chain, plugin, signing_key, tmp_path)
    sell_per_call(served, token, facilitator_url=facilitator)
    served.start()
    try:
        async with paying_http(token) as http:
            resp = await http.post(f"http://127.0.0.1:{served.port}/ask", json={"question": "what happens on the blue highway"})
        assert resp.status_code == 200, resp.text
        settled = decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"])
        transaction = chain.dev.w3.eth.get_transaction(settled.transaction)
        assert transaction["from"] == FACILITATOR[0]  # submitted by the facilitator, not the gateway
        assert balances(chain, token) == (FUNDS - ASK_PRICE, ASK_PRICE)
        signature = await signed(token, exact(await terms(served)))
        assert (await pay(served, signature)).status_code == 200
        replay = await pay(served, signature)
        assert (replay.status_code, replay.json()["code"]) == (402, "payment_invalid")
        assert balances(chain, token) == (FUNDS - 2 * ASK_PRICE, 2 * ASK_PRICE)
    finally:
        served.stop()


async def test_a_token_without_credits_is_offered_exact_and_the_sdk_pays_with_it(served, chain, token, plugin):
    served.start()
    broke = OwnIssuer(served.config.tokens.own).issue(BROKE, ["elvis"])  # a valid token, no credits
    async with paying_http(token) as http:
        resp = await http.post(f"http://127.0.0.1:{served.port}/ask", json={"question": "what happens on the blue highway"},
                               headers={"Authorization": f"Bearer {broke}"})
    # The SDK retried the very request (its Authorization too) with PAYMENT-SIGNATURE: paid per call.
    assert resp.status_code == 200 and decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"]).success
    assert balances(chain, token) == (FUNDS - ASK_PRICE, ASK_PRICE)
    async with httpx.AsyncClient() as http:
        seen = (await http.get(f"{plugin.url}/debug/requests", headers={"Authorization": f"Bearer {plugin.secret}"})).json()
    asked = [r["headers"] for r in seen if r["path"] == "/ask"][-1]
    assert not {"payment-signature", "x-payment"} & {k.lower() for k in asked}  # the upstream is paid, not told
