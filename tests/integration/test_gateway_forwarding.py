"""Forwarding, end to end: headers, status, raw bytes, streaming both ways, WebSocket.

Upstreams: httpbin's endpoints (tests/support/httpbin_subset.py), the example plugin, and a
held upstream that lets a test prove a stream is relayed before the upstream finishes.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp
import pytest
import pytest_asyncio

from tests.support.stack import SUBSCRIBER, base_config
from tests.support.upstreams import HeldUpstream

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def via_httpbin(make_gateway, chain, httpbin_url, signing_key):
    return await make_gateway(base_config(
        chain, None, signing_key, upstream=httpbin_url,
        upstream_auth={"type": "header", "name": "X-Api-Key", "value": "owner-key"},
        open_endpoints=["GET /status/:code", "GET /gzip", "GET /stream-bytes/:n", "GET /response-headers"],
        protected_endpoints=["GET /headers"],
    ))


async def test_httpbin_sees_cleaned_headers_and_the_owner_credential(via_httpbin):
    token = via_httpbin.token(SUBSCRIBER)
    headers = {"X-Gateway-Subscriber": "0xspoof", "Connection": "X-Hop", "X-Hop": "1", "X-Forwarded-For": "203.0.113.7",
               "X-Custom": "kept"}
    async with via_httpbin.request("GET", "/headers?show_env=1", token=token, headers=headers) as resp:
        assert resp.status == 200
        seen = (await resp.json())["headers"]
    assert seen["X-Api-Key"] == "owner-key"
    assert "Authorization" not in seen
    assert seen["X-Gateway-Subscriber"] == SUBSCRIBER and seen["X-Gateway-Service"] == "elvis"
    assert "X-Hop" not in seen
    assert seen["X-Custom"] == "kept"
    assert seen["X-Forwarded-For"] == "127.0.0.1"  # a client's own chain only from trusted_proxies (test_edge_spoofed_headers)
    assert seen["X-Forwarded-Proto"] == "http" and seen["X-Forwarded-Host"] == "elvis.proxy.localhost"
    assert seen["X-Request-Id"] == resp.headers["X-Request-Id"]
    assert seen["Host"].startswith("127.0.0.1:")  # the upstream's own Host


@pytest_asyncio.fixture
async def via_echo(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:
        yield await make_gateway(base_config(chain, None, signing_key, upstream=upstream.url + "/echo",
                                             protected_endpoints=["* /.*"]))


async def test_method_body_and_raw_target_reach_the_upstream_unchanged(via_echo):
    body = b'{"a": [1, 2, 3]}'
    async with via_echo.request("PUT", "/x%20y/%7Ez?b=2&a=1&a=%2F&c", data=body, token=via_echo.token(SUBSCRIBER),
                                headers={"Content-Type": "application/json"}) as resp:
        echo = await resp.json()
    assert echo["method"] == "PUT"
    assert echo["body"] == body.decode()
    # Only the unreserved %7E was decoded; the query is passed byte for byte.
    assert echo["raw_path"] == "/echo/x%20y/~z?b=2&a=1&a=%2F&c"


async def test_chunked_request_body_is_streamed_upstream(via_echo):
    async def chunks():
        for i in range(5):
            yield f"part{i};".encode()

    async with via_echo.request("POST", "/upload", data=chunks(), token=via_echo.token(SUBSCRIBER)) as resp:
        echo = await resp.json()
    assert echo["body"] == "part0;part1;part2;part3;part4;" and echo["chunked"]


async def test_sized_request_body_keeps_its_content_length(via_echo):
    async with via_echo.request("POST", "/upload", data=b"z" * 1000, token=via_echo.token(SUBSCRIBER)) as resp:
        echo = await resp.json()
    assert dict(echo["headers"])["Content-Length"] == "1000" and not echo["chunked"]


async def test_status_codes_pass_through(via_httpbin):
    for code in (201, 204, 302, 404, 418, 500):
        async with via_httpbin.request("GET", f"/status/{code}", allow_redirects=False) as resp:
            assert resp.status == code


async def test_compressed_bytes_pass_through_untouched(via_httpbin):
    async with via_httpbin.request("GET", "/gzip", headers={"Accept-Encoding": "gzip"}) as resp:
        raw = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
        assert int(resp.headers.get("Content-Length", len(raw))) == len(raw)
    assert json.loads(gzip.decompress(raw))["gzipped"] is True


async def test_upstream_response_headers_reach_the_client(via_httpbin):
    async with via_httpbin.request("GET", "/response-headers?X-Thing=1&Set-Cookie=a%3D1") as resp:
        assert resp.headers["X-Thing"] == "1"
        assert resp.headers.getall("Set-Cookie") == ["a=1"]


async def test_large_stream_arrives_whole(via_httpbin):
    async with via_httpbin.request("GET", "/stream-bytes/100000?seed=7&chunk_size=10000") as resp:
        data = await resp.read()
    assert len(data) == 100000


async def test_sse_first_event_reaches_the_client_before_the_upstream_finishes(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:
        gw = await make_gateway(base_config(chain, None, signing_key, upstream=upstream.url,
                                            protected_endpoints=["GET /sse"]))
        async with gw.request("GET", "/sse", token=gw.token(SUBSCRIBER)) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=10)
            assert first == b"event: first\ndata: 1\n\n"
            assert not upstream.finished.is_set()  # the upstream is still holding its stream open
            upstream.release()
            rest = await resp.content.read()
        assert rest == b"event: last\ndata: 2\n\n"


async def test_plugin_sse_stream_is_relayed_in_order(gateway):
    async with gateway.request("GET", "/stream?count=3&interval_ms=10", token=gateway.token(SUBSCRIBER)) as resp:
        text = (await resp.read()).decode()
    assert [line for line in text.splitlines() if line.startswith("event:")] == ["event: line"] * 3 + ["event: done"]


async def test_websocket_is_proxied_after_the_checks(gateway):
    url = gateway.url + "/ws"
    headers = {"Host": "elvis.proxy.localhost", "Authorization": f"Bearer {gateway.token(SUBSCRIBER)}"}
    async with gateway.session.ws_connect(url, headers=headers) as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=10)) == "echo: hello"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_bytes(timeout=10)) == b"\x00\x01"


async def test_websocket_without_token_is_refused_before_upgrade(gateway):
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        async with gateway.session.ws_connect(gateway.url + "/ws", headers={"Host": "elvis.proxy.localhost"}):
            pass
    assert exc.value.status == 401
