"""x402 inside MCP tool calls (x402's MCP transport) through the real `gateway serve` on anvil, in
front of the example Song tools server: x402's own MCP client on the MCP SDK's own client pays
with a real EIP-3009 token (chain/contracts/PaymentToken.sol); balances are read on chain and the
tool runs from the server itself (`/debug/calls`)."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from x402.schemas import PaymentRequired

from gateway.auth.issuer import OwnIssuer
from tests.support.served import Served
from tests.support.stack import BROKE
from tests.support.x402 import FUNDS, PAYEE, PAYER, exact, funded_payment_token, payer_client
from tests.support.x402_mcp import SEARCH_PRICE, SUMMARIZE_PRICE, paying_mcp, rpc, sell_tools, tool_call

pytestmark = pytest.mark.asyncio


@pytest.fixture
def token(chain):
    return funded_payment_token(chain)


@pytest.fixture
def served(chain, mcp_upstream, signing_key, tmp_path, token):
    s = Served(chain, mcp_upstream, signing_key, tmp_path)
    sell_tools(s, token)
    s.start()
    yield s
    s.stop()


def balances(chain, token) -> tuple[int, int]:
    return chain.dev.token_balance(token, PAYER[0]), chain.dev.token_balance(token, PAYEE)


def payments(served: Served) -> list[tuple]:
    return served.ledger("SELECT status, amount, tx_hash IS NOT NULL FROM x402_payments ORDER BY id")


async def tool_runs(upstream) -> dict:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{upstream.url}/debug/calls", headers={"Authorization": f"Bearer {upstream.secret}"})
    return resp.json()["runs"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # answers in server-sent events / in JSON
async def test_the_sdk_mcp_client_pays_a_tool_call_with_no_token(served, chain, token, mcp_upstream, mode):
    before = await tool_runs(mcp_upstream)
    async with paying_mcp(served, token, mode) as (x402_mcp, session):
        listed = await x402_mcp.list_tools()  # the handshake and tools/list: free, no token
        assert sorted(t.name for t in listed.tools) == ["count_songs", "search", "summarize"]
        result = await x402_mcp.call_tool("search", {"query": "blue highway"})
    assert result.payment_made and not result.is_error, result
    settled = result.payment_response
    assert settled.success and settled.payer == PAYER[0] and settled.network == "eip155:31337"
    assert chain.dev.w3.eth.get_transaction_receipt(settled.transaction)["status"] == 1
    assert balances(chain, token) == (FUNDS - SEARCH_PRICE, SEARCH_PRICE)
    assert payments(served) == [("settled", str(SEARCH_PRICE), 1)]
    unpaid, paid = session.raw  # the first answer carried the terms, the retry the tool's result
    assert unpaid.is_error
    assert exact(PaymentRequired.model_validate(unpaid.structured_content)).amount == str(SEARCH_PRICE)
    assert paid.structured_content["result"][0]["title"], paid
    runs = await tool_runs(mcp_upstream)
    assert runs.get("search", 0) - before.get("search", 0) == 1  # the unpaid call never reached the server
    kind = "text/event-stream" if mode == "legacy" else "application/json"
    assert session.content_types[-1].startswith(kind)  # the paid answer, read and rewritten in that form


async def test_an_unpaid_call_gets_the_terms_in_a_tool_result(served, chain, token):
    resp = await rpc(served, tool_call(7, "summarize", song_id="s1"))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["id"] == 7 and "error" not in answer
    result = answer["result"]
    required = PaymentRequired.model_validate(result["structuredContent"])
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    assert [a.scheme for a in required.accepts] == ["erc1155-credits", "exact"]
    offer = exact(required)
    assert (offer.amount, offer.pay_to, offer.asset) == (str(SUMMARIZE_PRICE), PAYEE, token)
    assert required.accepts[0].amount == "5"  # the tool's credits, for a subscriber's token
    problem = result["_meta"]["gateway/problem"]
    assert (problem["status"], problem["code"]) == (402, "payment_required")
    assert balances(chain, token) == (FUNDS, 0) and payments(served) == []


async def signed_payment(served: Served, token: str, name: str, **changes) -> dict:
    """A payment for `name`'s offer as the SDK's client signs it, after `changes` (amount, pay_to...)."""
    terms = PaymentRequired.model_validate((await rpc(served, tool_call(1, name, song_id="x", query="x")))
                                           .json()["result"]["structuredContent"])
    offer = exact(terms).model_copy(update=changes)
    payload = await payer_client(token).create_payment_payload(PaymentRequired(accepts=[offer]))
    return payload.model_dump(by_alias=True, exclude_none=True)


def answered(resp: httpx.Response) -> dict:
    """The JSON-RPC response in an answer (JSON, or the `data:` of its server-sent event)."""
    assert resp.status_code == 200, resp.text
    if resp.headers["Content-Type"].startswith("text/event-stream"):
        (data,) = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:")]
        return json.loads(data)
    return resp.json()


async def test_a_paid_call_answered_in_events_is_settled_once_and_a_replay_gets_the_terms(served, chain, token):
    payment = await signed_payment(served, token, "search")
    resp = await rpc(served, tool_call(3, "search", payment, query="blue highway"))
    assert resp.headers["Content-Type"].startswith("text/event-stream")  # the server's own SSE answer
    result = answered(resp)["result"]
    settled = result["_meta"]["x402/payment-response"]
    assert settled["success"] and settled["payer"] == PAYER[0] and not result.get("isError")
    assert resp.headers["PAYMENT-RESPONSE"]  # also as on the HTTP path
    replay = answered(await rpc(served, tool_call(4, "search", payment, query="blue highway")))["result"]
    assert replay["isError"] and replay["_meta"]["gateway/problem"]["code"] == "payment_invalid"
    assert replay["structuredContent"]["error"] == "this payment authorization was already used"
    assert balances(chain, token) == (FUNDS - SEARCH_PRICE, SEARCH_PRICE)
    assert payments(served) == [("settled", str(SEARCH_PRICE), 1)]


@pytest.mark.parametrize("changes, reason", [
    ({"amount": str(SEARCH_PRICE - 1)}, "invalid_exact_evm_payload_authorization_value_mismatch"),
    ({"pay_to": PAYER[0]}, "invalid_exact_evm_payload_recipient_mismatch"),
])
async def test_a_payment_that_does_not_pay_for_the_tool_gets_the_terms(served, chain, token, mcp_upstream,
                                                                       changes, reason):
    before = await tool_runs(mcp_upstream)
    payment = await signed_payment(served, token, "search", **changes)
    result = answered(await rpc(served, tool_call(5, "search", payment, query="blue highway")))["result"]
    assert result["isError"] and reason in result["structuredContent"]["error"]
    assert exact(PaymentRequired.model_validate(result["structuredContent"])).amount == str(SEARCH_PRICE)
    assert balances(chain, token) == (FUNDS, 0) and payments(served) == []
    assert await tool_runs(mcp_upstream) == before  # the tool never ran


async def test_a_malformed_payment_gets_the_terms(served, chain, token):
    result = answered(await rpc(served, tool_call(6, "search", {"x402Version": 2, "nonsense": True}, query="x")))
    assert result["result"]["isError"]
    assert result["result"]["_meta"]["gateway/problem"]["code"] == "payment_invalid"
    assert payments(served) == []


async def test_a_tool_that_fails_is_not_settled(served, chain, token):
    payment = await signed_payment(served, token, "summarize")
    result = answered(await rpc(served, tool_call(8, "summarize", payment, song_id="no-such-song")))["result"]
    assert result["isError"] and "x402/payment-response" not in (result.get("_meta") or {})
    assert balances(chain, token) == (FUNDS, 0)  # the payer keeps the money
    assert payments(served) == [("void", str(SUMMARIZE_PRICE), 0)]


async def test_a_token_keeps_the_credits_path_and_without_credits_gets_the_terms(served, chain, token):
    paid = await rpc(served, tool_call(9, "search", query="blue highway"), token=served.token)
    assert paid.headers["X-Credits-Charged"] == "2" and not answered(paid)["result"].get("isError")
    broke = OwnIssuer(served.config.tokens.own).issue(BROKE, ["elvis"])  # a valid token, no credits
    result = answered(await rpc(served, tool_call(10, "search", query="blue highway"), token=broke))["result"]
    assert result["isError"] and exact(PaymentRequired.model_validate(result["structuredContent"]))
    assert result["_meta"]["gateway/problem"]["code"] == "payment_required"
    assert balances(chain, token) == (FUNDS, 0) and payments(served) == []


async def test_what_is_not_sold_per_call_still_needs_a_token(served, mcp_upstream):
    before = await tool_runs(mcp_upstream)
    single = await rpc(served, tool_call(11, "count_songs"))  # sold for credits only
    batch = await rpc(served, [tool_call(12, "search", query="x"), tool_call(13, "search", query="y")])
    assert (single.status_code, batch.status_code) == (401, 401)
    assert await tool_runs(mcp_upstream) == before


@pytest.mark.parametrize("crash_at", ["x402_owed", "x402_sent"])
async def test_kill_between_record_and_send_transfers_exactly_once(chain, mcp_upstream, signing_key, tmp_path,
                                                                     token, crash_at):
    served = Served(chain, mcp_upstream, signing_key, tmp_path)
    sell_tools(served, token)
    served.start(crash_at=crash_at)
    try:
        payment = await signed_payment(served, token, "search")
        with pytest.raises(httpx.TransportError):  # the process SIGKILLs itself: the connection drops
            await rpc(served, tool_call(14, "search", payment, query="blue highway"))
        assert served.child.proc.wait(timeout=30) == -signal.SIGKILL
        assert payments(served) == [("owed", str(SEARCH_PRICE), 0)]
        served.start()  # the settling process reconciles at start: from authorizationState, never twice
        served.child.wait_for(r'"event": "x402_reconciled"', timeout=30)
        assert balances(chain, token) == (FUNDS - SEARCH_PRICE, SEARCH_PRICE)
        assert payments(served) == [("settled", str(SEARCH_PRICE), 1)]
        replay = answered(await rpc(served, tool_call(15, "search", payment, query="blue highway")))["result"]
        assert replay["isError"]  # and the authorization stays spent
    finally:
        served.stop()
