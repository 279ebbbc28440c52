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

from conftest import BROKE, HOST, OWNER, SUBSCRIBER, START_CREDITS, Plugin, base_config, example_server
from gateway.config.model import McpConfig
from gateway.config.load import ConfigError, parse_config
from gateway.ledger.database import sqlite_path
from gateway.http.mcp import parse_messages, price_messages
from gateway.http.problems import Problem
from tests.support.upstreams import HeldUpstream

TOOLS = {"search": 2, "summarize": {"credits": 5}}  # count_songs: the default (1)
OPERATOR_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


McpUpstream = Plugin  # url: http://127.0.0.1:PORT (the MCP endpoint is /mcp), secret: the owner's


@pytest.fixture(scope="session")
def mcp_upstream():
    with example_server("examples.song_mcp", "SONG_MCP_TOKEN") as server:
        yield server


def mcp_config(chain, signing_key, upstream: McpUpstream | str, secret: str | None = None, **mcp):
    url = upstream.url if isinstance(upstream, McpUpstream) else upstream
    data = base_config(chain, None, signing_key, upstream=url, open_endpoints=[], protected_endpoints=[],
                       upstream_auth={"type": "bearer", "token": upstream.secret if isinstance(upstream, McpUpstream)
                                      else (secret or "x")},
                       mcp={"path": "/mcp", "tools": TOOLS, "default_tool_credits": 1} | mcp)
    data["metering"] |= {"operator_key": OPERATOR_KEY, "settle_every": "1h"}
    return data


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
                                     "authorization_servers": ["https://gateway.test"],
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

def rpc(i, method, name=None, **params):
    message = {"jsonrpc": "2.0", "id": i, "method": method}
    if name is not None:
        message["params"] = {"name": name, "arguments": params}
    return message


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


# --- pricing and configuration (no network) -------------------------------------------------------

MCP = McpConfig(path="/mcp", rule=None,  # type: ignore[arg-type]
                tools={"search": 2, "summarize": 5}, default_tool_credits=1)


@pytest.mark.parametrize("messages, credits, tools", [
    ([rpc(1, "initialize")], 0, ()),
    ([rpc(1, "server/discover")], 0, ()),
    ([rpc(1, "tools/list")], 0, ()),
    ([{"jsonrpc": "2.0", "method": "notifications/initialized"}], 0, ()),
    ([{"jsonrpc": "2.0", "id": 7, "result": {}}], 0, ()),                      # a response to the server
    ([rpc(1, "tools/call", "search")], 2, ("search",)),
    ([rpc(1, "tools/call", "translate")], 1, ("translate",)),                  # unlisted: the default
    ([{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}], 1, ("?",)),        # no name: never free
    ([{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}], 1, ("?",)),
    ([{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "summarize"}}], 5, ("summarize",)),  # no id
    ([rpc(1, "tools/call", "search"), rpc(2, "tools/call", "summarize"), 42], 7, ("search", "summarize")),
    ([rpc(1, "Tools/Call", "summarize")], 0, ()),                              # not the method: nothing runs
])
def test_price_of_messages(messages, credits, tools):
    call = price_messages(MCP, b"", messages, batch=True)
    assert (call.price.fixed, call.tools) == (credits, tools)


def test_parse_messages_keeps_a_single_message_single():
    assert parse_messages(b'{"a": 1}') == ([{"a": 1}], False)
    assert parse_messages(b'[{"a": 1}]') == ([{"a": 1}], True)
    with pytest.raises(Problem):
        parse_messages(b'{"a": 1, "a": 2}')


@pytest.mark.parametrize("mcp, problem", [
    ({"path": "mcp"}, "services.elvis.mcp.path: must be a literal path"),
    ({"path": "/mc(p)?"}, "services.elvis.mcp.path: must be a literal path"),
    ({"path": "/a/../mcp"}, "services.elvis.mcp.path: must be a literal path"),
    ({"path": "/.well-known/mcp"}, "services.elvis.mcp.path: must not be under"),
    ({"tools": {"search": -1}}, "services.elvis.mcp.tools: tool 'search': credits must be >= 0"),
    ({"tools": {"search": {"credit": 2}}}, "services.elvis.mcp.tools: tool 'search': only {credits: N}"),
    ({"tools": ["search"]}, "services.elvis.mcp.tools: must map tool names to credits"),
    ({"prices": {}}, "services.elvis.mcp.prices: unknown key"),
])
def test_mcp_config_problems(signing_key, mcp, problem):
    data = base_config(None, None, signing_key, mcp=mcp)
    with pytest.raises(ConfigError) as err:
        parse_config(data, {})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_mcp_config_defaults_and_plan_requirements(signing_key):
    data = base_config(None, None, signing_key, mcp={})
    service = parse_config(data, {}).services["elvis"]
    assert (service.mcp.path, dict(service.mcp.tools), service.mcp.default_tool_credits) == ("/mcp", {}, 1)
    no_plan = base_config(None, None, signing_key, mcp={}, protected_endpoints=[])
    del no_plan["services"]["elvis"]["plan"]
    with pytest.raises(ConfigError) as err:
        parse_config(no_plan, {})
    assert "services.elvis.plan: required when mcp is set (its calls are protected)" in err.value.problems
    pass_plan = base_config(None, None, signing_key, mcp={"tools": {"search": 2}}, protected_endpoints=[])
    pass_plan["services"]["elvis"]["plan"] |= {"standard": "erc721"}
    del pass_plan["services"]["elvis"]["plan"]["token_id"]
    with pytest.raises(ConfigError) as err:
        parse_config(pass_plan, {})
    assert "services.elvis.mcp: an erc721 pass plan has no credits to price tools with" in err.value.problems


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
