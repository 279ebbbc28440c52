"""MCP servers behind the gateway: the official MCP Python SDK on both sides.

Upstream: the example Song tools server (`examples.song_mcp`, SDK `MCPServer` under uvicorn).
Client: the SDK's own `Client` over Streamable HTTP, talking to the gateway with a bearer token.
Real chain, real ledger; tool runs are read back from the server itself (`/debug/calls`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3

import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from gateway.ledger.database import sqlite_path
from tests.support.mcp import TOOLS, McpUpstream, mcp_config, rpc
from tests.support.stack import BROKE, HOST, OWNER, START_CREDITS, SUBSCRIBER
from tests.support.upstreams import HeldUpstream

async def tool_runs(session, upstream: McpUpstream) -> dict:
    async with session.get(f"{upstream.url}/debug/calls", headers={"Authorization": f"Bearer {upstream.secret}"}) as r:
        return await r.json()


def charges(gw) -> list[int]:
    with sqlite3.connect(sqlite_path(gw.config.metering.ledger)) as conn:
        return [amount for (amount,) in conn.execute("SELECT amount FROM charges ORDER BY id")]


class Traffic:
    """What the SDK client saw at the HTTP level (httpx event hook): status and headers per answer."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []

    async def hook(self, response) -> None:
        self.answers.append((response.status_code, dict(response.headers)))

    def credit_headers(self) -> list[tuple[str, str]]:
        return [(h["x-credits-charged"], h["x-credits-remaining"]) for _, h in self.answers if "x-credits-charged" in h]


def sdk_client(gw, token: str | None, traffic: Traffic, mode: str = "auto") -> tuple[Client, object]:
    headers = {"Host": HOST} | ({"Authorization": f"Bearer {token}"} if token else {})
    http = create_mcp_http_client(headers=headers)
    http.event_hooks["response"].append(traffic.hook)
    return Client(streamable_http_client(f"{gw.url}/mcp", http_client=http), mode=mode), http


# --- the SDK client through the gateway ------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["legacy", "auto"])  # initialize + SSE answers / server/discover + JSON
async def test_sdk_client_lists_free_and_pays_per_tool(make_gateway, chain, signing_key, mcp_upstream, mode):
    await asyncio.to_thread(chain.dev.mint_credits, chain.credits_plan, SUBSCRIBER, 1, 10)  # 15 credits
    gw = await make_gateway(mcp_config(chain, signing_key, mcp_upstream))
    before = (await tool_runs(gw.session, mcp_upstream))["runs"]
    traffic = Traffic()
    client, http = sdk_client(gw, gw.token(SUBSCRIBER), traffic, mode)
    async with http, client:
        tools = await client.list_tools()
        assert sorted(t.name for t in tools.tools) == ["count_songs", "search", "summarize"]
        assert charges(gw) == []  # the handshake and tools/list are free
        found = await client.call_tool("search", {"query": "blue highway"})
        assert found.structured_content["result"], found
        song_id = found.structured_content["result"][0]["id"]
        summary = await client.call_tool("summarize", {"song_id": song_id})
        assert json.loads(summary.content[0].text)["song_id"] == song_id
        count = await client.call_tool("count_songs", {})
        assert count.structured_content == {"result": 3}
    assert charges(gw) == [2, 5, 1]
    assert traffic.credit_headers() == [("2", "13"), ("5", "8"), ("1", "7")]
    if mode == "legacy":  # the legacy handshake answers in server-sent events: they streamed through
        assert any(h.get("content-type", "").startswith("text/event-stream") for _, h in traffic.answers)
    after = await tool_runs(gw.session, mcp_upstream)
    assert {k: after["runs"].get(k, 0) - before.get(k, 0) for k in TOOLS | {"count_songs": 1}} == \
        {"search": 1, "summarize": 1, "count_songs": 1}
    # The upstream saw the owner's secret (it answered) and the subscriber the gateway vouched for.
    assert after["seen"][-1] == {"subscriber": SUBSCRIBER, "service": "elvis"}


@pytest.mark.asyncio
async def test_a_call_beyond_the_balance_is_refused_with_402_and_the_tool_does_not_run(
        make_gateway, chain, signing_key, mcp_upstream):
    gw = await make_gateway(mcp_config(chain, signing_key, mcp_upstream))
    runs_before = (await tool_runs(gw.session, mcp_upstream))["runs"].get("summarize", 0)
    traffic = Traffic()
    client, http = sdk_client(gw, gw.token(BROKE), traffic)
    async with http, client:
        assert len((await client.list_tools()).tools) == 3  # free: a token without credits may look
        with pytest.raises(MCPError) as refused:
            await client.call_tool("summarize", {"song_id": "blue-highway"})
    error = refused.value.error
    assert error.code == 402 and "Payment Required" in error.message and "https://example.com/buy" in error.message
    assert error.data["code"] == "payment_required" and error.data["plan"]["credits"] == 5
    assert error.data["plan"]["balance"] == 0
    status, headers = traffic.answers[-1]
    assert status == 402
    terms = json.loads(base64.b64decode(headers["payment-required"]))
    assert terms["accepts"][0]["amount"] == "5" and terms["resource"]["url"] == f"http://{HOST}/mcp"
    assert (await tool_runs(gw.session, mcp_upstream))["runs"].get("summarize", 0) == runs_before
    assert charges(gw) == []


@pytest.mark.asyncio
async def test_the_owner_calls_tools_free(make_gateway, chain, signing_key, mcp_upstream):
    gw = await make_gateway(mcp_config(chain, signing_key, mcp_upstream))
    client, http = sdk_client(gw, gw.token(OWNER), Traffic())
    async with http, client:
        await client.call_tool("summarize", {"song_id": "blue-highway"})
    assert charges(gw) == []


@pytest.mark.asyncio
async def test_without_a_token_401_names_the_resource_metadata(make_gateway, chain, signing_key, mcp_upstream):
    gw = await make_gateway(mcp_config(chain, signing_key, mcp_upstream))
    traffic = Traffic()
    client, http = sdk_client(gw, None, traffic)
    with pytest.raises(Exception):
        async with http, client:
            pass
    status, headers = traffic.answers[0]
    metadata_url = f"http://{HOST}/.well-known/oauth-protected-resource/mcp"
    assert status == 401
    assert headers["www-authenticate"] == f'Bearer realm="elvis", resource_metadata="{metadata_url}"'
    async with gw.request("GET", "/.well-known/oauth-protected-resource/mcp") as resp:
        assert resp.status == 200
        assert await resp.json() == {"resource": f"http://{HOST}/mcp",
                                     # the service's own OAuth server (gateway.oauth), as the SDKs spell it
                                     "authorization_servers": [f"http://{HOST}/"],
                                     "bearer_methods_supported": ["header"], "resource_name": "elvis"}
    async with gw.request("GET", "/.well-known/oauth-protected-resource") as resp:
        assert (await resp.json())["resource"] == f"http://{HOST}"
    # A bad token: the same pointer, with the error.
    async with gw.request("POST", "/mcp", token="not.a.token", json={}) as resp:
        assert resp.status == 401 and f'resource_metadata="{metadata_url}"' in resp.headers["WWW-Authenticate"]
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


@pytest.mark.asyncio
async def test_every_method_on_the_mcp_path_needs_a_token(make_gateway, chain, signing_key, mcp_upstream):
    gw_data = mcp_config(chain, signing_key, mcp_upstream)
    gw_data["services"]["elvis"]["open_endpoints"] = ["/(.*)"]  # a broad open rule cannot expose it
    gw = await make_gateway(gw_data)
    for method, path in (("GET", "/mcp"), ("DELETE", "/mcp"), ("POST", "/mcp/"), ("POST", "//mcp")):
        async with gw.request(method, path) as resp:
            assert resp.status == 401, (method, path)


# --- raw JSON-RPC: batches, parser differentials, limits ------------------------------------------

@pytest.mark.asyncio
async def test_a_batch_costs_the_sum_of_its_tools(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:  # /echo answers 200: the batch is charged
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/echo/mcp"))
        token = gw.token(SUBSCRIBER)
        too_much = [rpc(1, "tools/call", "summarize"), rpc(2, "tools/call", "search"), rpc(3, "tools/list")]
        async with gw.request("POST", "/echo/mcp", token=token, json=too_much) as resp:
            body = await resp.json()
            assert resp.status == 402 and resp.headers["Content-Type"].startswith("application/json")
        # One JSON-RPC error per request of the batch, each carrying the problem.
        assert [e["id"] for e in body] == [1, 2, 3] and {e["error"]["code"] for e in body} == {402}
        assert body[0]["error"]["data"]["plan"]["credits"] == 7
        fits = [rpc(1, "tools/call", "search"), rpc(2, "tools/call", "count_songs"), {"jsonrpc": "2.0",
                "method": "notifications/initialized"}]
        async with gw.request("POST", "/echo/mcp", token=token, json=fits) as resp:
            assert resp.status == 200 and resp.headers["X-Credits-Charged"] == "3"
            echoed = await resp.json()
        assert json.loads(echoed["body"]) == fits  # the bytes that were priced are the bytes forwarded
    assert charges(gw) == [3]


@pytest.mark.asyncio
@pytest.mark.parametrize("body, why", [
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "method": "tools/call", '
     b'"params": {"name": "summarize"}}', "duplicate key"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "name": "summarize"}}',
     "duplicate key"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call"', "JSON"),
    (b'\xff\xfe{}', "UTF-8"),
    (b'', "JSON"),
])
async def test_bodies_the_gateway_cannot_price_are_refused_not_forwarded(make_gateway, chain, signing_key, body, why):
    async with HeldUpstream() as upstream:
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/hold"))
        async with gw.request("POST", "/hold", token=gw.token(SUBSCRIBER), data=body,
                              headers={"Content-Type": "application/json"}) as resp:
            problem = await resp.json(content_type=None)
            assert resp.status == 400 and problem["code"] == "bad_request" and why in problem["detail"]
        assert upstream.requests == []


@pytest.mark.asyncio
async def test_an_mcp_body_over_max_body_is_413(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/hold") | {"max_body": "1KiB"})
        big = json.dumps(rpc(1, "tools/call", "search", query="x" * 2000)).encode()
        async with gw.request("POST", "/hold", token=gw.token(SUBSCRIBER), data=big) as resp:
            assert resp.status == 413
        chunks = (big[i:i + 256] for i in range(0, len(big), 256))

        async def stream():
            for chunk in chunks:
                yield chunk
        async with gw.request("POST", "/hold", token=gw.token(SUBSCRIBER), data=stream()) as resp:  # chunked
            assert resp.status == 413
        assert upstream.requests == []


@pytest.mark.asyncio
async def test_plan_lists_tool_prices_and_a_subscribers_balance(make_gateway, chain, signing_key, mcp_upstream):
    gw = await make_gateway(mcp_config(chain, signing_key, mcp_upstream))
    async with gw.request("GET", "/.gateway/plan") as resp:
        plan = (await resp.json())["plan"]
    assert plan["mcp"] == {"path": "/mcp", "tools": {"search": 2, "summarize": 5}, "default_tool_credits": 1}
    assert "balance" not in plan
    client, http = sdk_client(gw, gw.token(SUBSCRIBER), Traffic())
    async with http, client:
        await client.call_tool("search", {"query": "river"})
    async with gw.request("GET", "/.gateway/plan", token=gw.token(SUBSCRIBER)) as resp:
        document = await resp.json()
    # Net of the 2 credits charged (and not yet burned on chain).
    assert document["subscriber"] == SUBSCRIBER and document["plan"]["balance"] == START_CREDITS - 2
    async with gw.request("GET", "/.gateway/plan", token="bad.token.here") as resp:
        assert resp.status == 401
