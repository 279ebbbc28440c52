"""Every SPEC §9 refusal, end to end: real gateway, real chain, real plugin.

Each answer is RFC 9457 problem JSON with a stable code and the request id.
"""

from __future__ import annotations

import pytest

from gateway.dev.chain import free_port
from tests.support.stack import BROKE, OWNER, START_CREDITS, SUBSCRIBER, base_config
from tests.support.upstreams import HeldUpstream

pytestmark = pytest.mark.asyncio
QUERY = {"queries": [{"query": "love"}]}


async def problem(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["status"] == status and body["code"] == code
    assert body["request_id"] == resp.headers["X-Request-Id"]
    assert set(body) >= {"type", "title", "status", "detail", "code", "request_id"}
    return body


async def test_open_endpoint_needs_no_token(gateway):
    async with gateway.request("GET", "/.well-known/ai-plugin.json") as resp:
        assert resp.status == 200
        assert (await resp.json())["name_for_human"] == "Song Summarizer"


async def test_protected_without_token_is_401_missing_token_with_challenge(gateway):
    async with gateway.request("POST", "/query", json=QUERY) as resp:
        await problem(resp, 401, "missing_token")
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="elvis"'


async def test_garbage_token_is_401_invalid_token(gateway):
    async with gateway.request("POST", "/query", json=QUERY, token="not.a.jwt") as resp:
        await problem(resp, 401, "invalid_token")
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="elvis", error="invalid_token"')


async def test_token_without_credits_is_402_with_the_plan(gateway, chain):
    async with gateway.request("POST", "/query", json=QUERY, token=gateway.token(BROKE)) as resp:
        body = await problem(resp, 402, "payment_required")
    assert body["plan"] == {
        "chain_id": 31337, "contract": chain.credits_plan, "token_id": 1, "standard": "erc1155",
        "credits": 1, "balance": 0, "checkout_url": "https://example.com/buy",
    }


async def test_call_costing_more_than_the_balance_is_402(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(base_config(chain, plugin, signing_key, protected_endpoints=[
        {"endpoint": "POST /ask", "credits": START_CREDITS + 1}]))
    async with gw.request("POST", "/ask", json={"question": "x"}, token=gw.token(SUBSCRIBER)) as resp:
        body = await problem(resp, 402, "payment_required")
    assert body["plan"]["credits"] == START_CREDITS + 1 and body["plan"]["balance"] == START_CREDITS


async def test_token_with_credits_is_forwarded(gateway):
    async with gateway.request("POST", "/query", json=QUERY, token=gateway.token(SUBSCRIBER)) as resp:
        assert resp.status == 200
        assert (await resp.json())["subscriber"] == SUBSCRIBER


async def test_owner_calls_are_free_even_without_credits(gateway):
    async with gateway.request("POST", "/query", json=QUERY, token=gateway.token(OWNER)) as resp:
        assert resp.status == 200


async def test_token_for_another_service_is_403_wrong_audience(gateway):
    token = gateway.token(SUBSCRIBER, audience=["other-service"])
    async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
        await problem(resp, 403, "wrong_audience")


async def test_unknown_host_is_404_unknown_service(gateway):
    async with gateway.request("GET", "/health", host="nobody.proxy.localhost") as resp:
        await problem(resp, 404, "unknown_service")


async def test_did_label_host_reaches_the_service(make_gateway, chain, plugin, signing_key):
    did = "did:nv:27ca72cfc79dccf35e4e54a54f0ed3e3b04873ce682fd5bf351fe9aa377d68c4"
    gw = await make_gateway(base_config(chain, plugin, signing_key, did=did))
    async with gw.request("GET", "/health", host="ZPAROLNV3LQWTJK26XFKGUSTPBBK9GZ9SO4X30ZFE5V8X8WQS.proxy.localhost:80") as resp:
        assert resp.status == 200


async def test_unlisted_endpoint_is_404_endpoint_not_exposed(gateway):
    async with gateway.request("POST", "/upsert", json={}, token=gateway.token(SUBSCRIBER)) as resp:
        await problem(resp, 404, "endpoint_not_exposed")


async def test_ambiguous_path_is_400(gateway):
    async with gateway.request("GET", "/a%2Fb") as resp:
        await problem(resp, 400, "bad_request")


async def test_announced_oversized_body_is_413_and_not_forwarded(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(base_config(chain, plugin, signing_key, max_body="1KiB"))
    async with gw.request("POST", "/query", data=b"x" * 2048, token=gw.token(SUBSCRIBER)) as resp:
        await problem(resp, 413, "body_too_large")


async def test_streamed_oversized_body_is_413(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(base_config(chain, plugin, signing_key, max_body="1KiB"))

    async def chunks():
        for _ in range(8):
            yield b"y" * 512

    async with gw.request("POST", "/query", data=chunks(), token=gw.token(SUBSCRIBER)) as resp:
        await problem(resp, 413, "body_too_large")


async def test_unreachable_upstream_is_502(make_gateway, chain, signing_key):
    gw = await make_gateway(base_config(chain, None, signing_key, upstream=f"http://127.0.0.1:{free_port()}"))
    async with gw.request("GET", "/health") as resp:
        await problem(resp, 502, "upstream_unavailable")


async def test_rpc_down_is_503_chain_unavailable(make_gateway, chain, plugin, signing_key):
    data = base_config(chain, plugin, signing_key)
    data["chains"]["local"]["rpc_urls"] = [f"http://127.0.0.1:{free_port()}"]
    gw = await make_gateway(data)
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER)) as resp:
        await problem(resp, 503, "chain_unavailable")


async def test_slow_upstream_is_504(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:  # answers only when released: never, within 200 ms
        gw = await make_gateway(base_config(chain, None, signing_key, upstream=upstream.url, timeout="200ms",
                                            open_endpoints=["GET /hold"]))
        async with gw.request("GET", "/hold") as resp:
            await problem(resp, 504, "upstream_timeout")
        assert len(upstream.requests) == 1


async def test_upstream_status_passes_through(gateway):
    for code in (200, 404, 418, 500, 503):
        async with gateway.request("GET", f"/status/{code}") as resp:
            assert resp.status == code
            assert not resp.headers["Content-Type"].startswith("application/problem+json")


async def test_gateway_plan_endpoint(gateway, chain):
    async with gateway.request("GET", "/.gateway/plan") as resp:
        body = await resp.json()
    assert body["plan"]["contract"] == chain.credits_plan
    assert {"endpoint": "POST /ask", "credits": 2} in body["plan"]["endpoints"]


async def test_gateway_jwks_publishes_the_own_key(gateway):
    async with gateway.request("GET", "/.gateway/jwks.json") as resp:
        keys = (await resp.json())["keys"]
    assert [k["kid"] for k in keys] == [gateway.issuer.kid]
    assert all("d" not in k for k in keys)  # public parts only
