"""x402 inside MCP tool calls, in-process: the `mcp.tools.NAME.x402` config, which tool calls are
sold per call, the payment in `_meta` (read, and stripped before forwarding), the terms as a tool
result, and finding / rewriting the call's response in a JSON or server-sent-events answer. The
official SDKs through the real gateway are in tests/integration/test_x402_mcp_gateway.py."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from x402.schemas import PaymentRequirements, SettleResponse

from gateway.config.load import ConfigError, parse_config
from gateway.http.mcp import offer as mcp_offer
from gateway.http.mcp_payments import _events_end
from gateway.x402.mcp import (events, forwarded, payload_of, payment_required_result, response_in, rewritten,
                              sale_of, served, with_settlement)
from gateway.x402.offers import exact_offer, sells_tools, tool_price
from tests.support.stack import base_config

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAYEE = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"
X402 = {"network": "eip155:31337", "asset": TOKEN, "pay_to": PAYEE, "extra": {"name": "Demo USD", "version": "1"}}
OFFER = PaymentRequirements(scheme="exact", network="eip155:31337", asset=TOKEN, amount="50000", pay_to=PAYEE,
                            max_timeout_seconds=90, extra={"name": "Demo USD", "version": "1"})
PAYMENT = {"x402Version": 2, "accepted": OFFER.model_dump(by_alias=True),
           "payload": {"signature": "0x" + "ab" * 65, "authorization": {"from": PAYEE, "nonce": "0x" + "01" * 32}}}


def service(signing_key, tools, **x402):
    data = base_config(None, None, signing_key, open_endpoints=[], protected_endpoints=[],
                       mcp={"path": "/mcp", "tools": tools, "default_tool_credits": 1}, x402=X402 | x402)
    data["metering"]["operator_key"] = "0x" + "11" * 32
    return parse_config(data, {}).services["elvis"]


def call(i, name, meta=None, **arguments):
    params = {"name": name, "arguments": arguments} | ({"_meta": meta} if meta is not None else {})
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}


# --- config and offers ------------------------------------------------------------------------------

def test_a_tool_is_sold_at_its_own_price_else_the_services(signing_key):
    s = service(signing_key, {"search": {"credits": 2, "x402": "0.05"}, "summarize": 5, "count": {"x402": 1}})
    assert dict(s.mcp.tools) == {"search": 2, "summarize": 5}  # count: credits by default_tool_credits
    assert dict(s.mcp.tool_x402) == {"search": Decimal("0.05"), "count": Decimal(1)}
    assert (tool_price(s, "search"), tool_price(s, "summarize")) == (Decimal("0.05"), None)
    assert sells_tools(s) and exact_offer(s, None, "search").amount == "50000"
    assert exact_offer(s, None, "summarize") is None
    everything = service(signing_key, {"search": 2}, price="0.01")  # a service-wide price sells every tool
    assert exact_offer(everything, None, "anything").amount == "10000"
    assert not sells_tools(service(signing_key, {"search": 2}))


def test_a_tool_price_finer_than_the_token_is_a_problem(signing_key):
    with pytest.raises(ConfigError) as err:
        service(signing_key, {"search": {"x402": "0.0000015"}})
    assert "services.elvis.mcp.tools.search.x402: 0.0000015 has more than 6 decimals" in str(err.value)


# --- the request: sold or not, the payment ---------------------------------------------------------

def offer_of(tool):
    return OFFER if tool in ("search", "summarize") else None


@pytest.mark.parametrize("message, sold", [
    (call(1, "search"), True),
    (call(0, "summarize"), True),                                   # id 0 is an id
    (call(1, "count_songs"), False),                                # sold for credits only
    ({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "search"}}, False),  # a notification
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, False),
    (None, False),                                                  # a batch (no single message)
])
def test_which_calls_are_sold_per_call(message, sold):
    assert (sale_of(message, offer_of, lambda tool: 2) is not None) == sold


def test_the_payment_is_read_from_meta_and_stripped_before_forwarding():
    meta = {"x402/payment": PAYMENT, "progressToken": 7, "io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    sale = sale_of(call(3, "search", meta, query="blue"), offer_of, lambda tool: 2)
    assert sale.payment == PAYMENT and sale.credits == 2 and sale.tagged
    assert payload_of(sale.payment).accepted.amount == "50000"
    sent = json.loads(forwarded(sale))
    assert sent["params"]["_meta"] == {"progressToken": 7, "io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    assert sent["params"]["arguments"] == {"query": "blue"} and sent["id"] == 3
    alone = sale_of(call(4, "search", {"x402/payment": PAYMENT}), offer_of, lambda tool: 2)
    assert "_meta" not in json.loads(forwarded(alone))["params"]  # nothing else was in it


@pytest.mark.parametrize("raw", ["a string", {"x402Version": 2}, PAYMENT | {"x402Version": 1}])
def test_a_payment_that_is_not_a_v2_payload_is_refused(raw):
    with pytest.raises(ValueError, match='_meta\\["x402/payment"\\]'):
        payload_of(raw)


def test_the_terms_are_a_tool_result_in_both_forms():
    terms = {"x402Version": 2, "error": "pay", "accepts": [OFFER.model_dump(by_alias=True)]}
    legacy = sale_of(call(9, "search"), offer_of, lambda tool: 2)
    answer = payment_required_result(legacy, terms, {"status": 402, "code": "payment_required"})
    result = answer["result"]
    assert answer["id"] == 9 and "error" not in answer and "resultType" not in result
    assert result["isError"] and result["structuredContent"] == terms
    assert json.loads(result["content"][0]["text"]) == terms
    assert result["_meta"]["gateway/problem"]["code"] == "payment_required"
    modern = sale_of(call(9, "search", {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}),
                     offer_of, lambda tool: 2)
    assert payment_required_result(modern, terms, {})["result"]["resultType"] == "complete"


# --- the answer: find the response, settle only a success, add the settlement ---------------------

OK = {"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "hi"}], "_meta": {"k": 1}}}
SETTLED = SettleResponse(success=True, transaction="0x" + "aa" * 32, network="eip155:31337", payer=PAYEE)


@pytest.mark.parametrize("message, ok", [
    (OK, True),
    ({"jsonrpc": "2.0", "id": 3, "result": {"content": [], "isError": True}}, False),
    ({"jsonrpc": "2.0", "id": 3, "error": {"code": -32602, "message": "unknown tool"}}, False),
    ({"jsonrpc": "2.0", "id": 3, "result": {"content": [], "isError": False}}, True),
])
def test_only_a_successful_tool_result_is_served(message, ok):
    assert served(message) == ok


def test_the_response_is_found_in_json_by_its_id_and_type():
    body = json.dumps(OK).encode()
    assert response_in(body, False, 3) == (OK, -1)
    assert response_in(body, False, "3") == (None, -1)  # "3" is another request than 3
    assert response_in(b"not json", False, 3) == (None, -1)
    message, _ = response_in(body, False, 3)
    settled = json.loads(rewritten(body, False, -1, with_settlement(message, SETTLED)))
    assert settled["result"]["_meta"] == {"k": 1, "x402/payment-response": SETTLED.model_dump(by_alias=True,
                                                                                               exclude_none=True)}
    assert settled["result"]["content"] == OK["result"]["content"]


def test_the_response_is_found_among_events_and_only_its_event_is_rewritten():
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    body = (b"event: message\r\ndata: " + json.dumps(progress).encode() + b"\r\n\r\n"
            b"event: message\r\nid: e2\r\ndata: " + json.dumps(OK).encode() + b"\r\n\r\n"
            b"event: mess")  # a partial event: not one
    assert len(events(body)) == 2
    message, index = response_in(body, True, 3)
    assert (message, index) == (OK, 1)
    out = rewritten(body, True, index, with_settlement(message, SETTLED))
    first, second = events(out)
    assert json.loads(first.split(b"data: ", 1)[1]) == progress
    assert second.startswith(b"event: message\nid: e2\ndata: ")
    assert json.loads(second.split(b"data: ", 1)[1])["result"]["_meta"]["x402/payment-response"]["success"]
    assert out.endswith(b"\n\n") and out.count(b"event: ") == 2  # the partial event is not relayed


def test_the_end_of_complete_events_is_found_after_what_was_looked_at():
    body = bytearray(b"data: 1\n\ndata: 2\r\n\r\ndata: 3")
    assert _events_end(body, 0) == body.index(b"data: 3")
    assert _events_end(bytearray(b"data: partial"), 0) == 0
    assert _events_end(body, body.index(b"data: 3")) == 0  # nothing complete after that


def test_the_plan_lists_the_terms_of_tools_sold_per_call(signing_key):
    s = service(signing_key, {"search": {"credits": 2, "x402": "0.05"}}, price="0.01")
    doc = mcp_offer(s)
    assert doc["tools"] == {"search": 2}
    assert doc["x402"]["search"]["amount"] == "50000" and doc["default_tool_x402"]["amount"] == "10000"
    assert "x402" not in mcp_offer(service(signing_key, {"search": 2}))  # nothing sold per call
