"""Compressed request bodies at the edge (issue 10, item 10), against the real gateway app and
real upstreams: the upstream gets exactly the client's bytes and headers; what the gateway must
read (MCP pricing, sign-in) it decodes itself, bounded, so a decompression bomb is a 413."""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
import zlib

import brotlicffi
import pytest

from gateway.ledger.database import sqlite_path
from tests.support.edge_upstreams import RawEchoUpstream
from tests.support.mcp import mcp_config, rpc
from tests.support.signin import nonce_of, sign, siwe
from tests.support.stack import SUBSCRIBER, base_config
from tests.support.upstreams import HeldUpstream

pytestmark = pytest.mark.asyncio
ENCODERS = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotlicffi.compress}


def charges(gw) -> list[int]:
    with sqlite3.connect(sqlite_path(gw.config.metering.ledger)) as conn:
        return [amount for (amount,) in conn.execute("SELECT amount FROM charges ORDER BY id")]


async def test_a_gzip_body_reaches_the_upstream_byte_for_byte_with_its_encoding_and_length(
        make_gateway, chain, signing_key):
    async with RawEchoUpstream() as upstream:
        gw = await make_gateway(base_config(chain, None, signing_key, upstream=upstream.url,
                                            open_endpoints=["POST /echo/:x"]))
        sent = gzip.compress(json.dumps({"lyrics": "blue highway " * 500}).encode())
        async with gw.request("POST", "/echo/upload", data=sent, headers={
                "Content-Encoding": "gzip", "Content-Type": "application/json"}) as resp:
            assert resp.status == 200
            echoed = await resp.json()
    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert base64.b64decode(echoed["body_b64"]) == sent  # not decompressed on the way
    assert headers["content-encoding"] == "gzip" and headers["content-length"] == str(len(sent))


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
async def test_a_compressed_mcp_tools_call_is_priced_as_its_tool(make_gateway, chain, signing_key, encoding):
    async with RawEchoUpstream() as upstream:  # answers 200: the call is charged
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/echo/mcp"))
        sent = ENCODERS[encoding](json.dumps(rpc(1, "tools/call", "search", query="river")).encode())
        async with gw.request("POST", "/echo/mcp", token=gw.token(SUBSCRIBER), data=sent, headers={
                "Content-Encoding": encoding, "Content-Type": "application/json"}) as resp:
            assert resp.status == 200 and resp.headers["X-Credits-Charged"] == "2"  # search: 2 credits
            echoed = await resp.json()
    assert base64.b64decode(echoed["body_b64"]) == sent  # forwarded as sent, priced as decoded
    assert charges(gw) == [2]


async def test_a_gzip_bomb_to_the_mcp_path_is_413(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/hold") | {"max_body": "1MiB"})
        bomb = gzip.compress(b"\0" * 10_000_000)  # ~10 KB that inflate to 10 MB
        assert len(bomb) < 64 * 1024
        async with gw.request("POST", "/hold", token=gw.token(SUBSCRIBER), data=bomb,
                              headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}) as resp:
            problem = await resp.json(content_type=None)
            assert resp.status == 413 and problem["code"] == "body_too_large"
        assert upstream.requests == []
    assert charges(gw) == []


@pytest.mark.parametrize("encoding, body, status, code", [
    ("zstd", b"(\xb5/\xfd", 415, "unsupported_encoding"),     # cannot be read, so cannot be priced
    ("gzip", b"not gzip at all", 400, "bad_request"),
    ("gzip", gzip.compress(b'{"jsonrpc": "2.0"}')[:-6], 400, "bad_request"),  # truncated
])
async def test_an_mcp_body_the_gateway_cannot_decode_is_refused_not_forwarded(
        make_gateway, chain, signing_key, encoding, body, status, code):
    async with HeldUpstream() as upstream:
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/hold"))
        async with gw.request("POST", "/hold", token=gw.token(SUBSCRIBER), data=body,
                              headers={"Content-Encoding": encoding, "Content-Type": "application/json"}) as resp:
            problem = await resp.json(content_type=None)
            assert (resp.status, problem["code"], problem["status"]) == (status, code, status)
        assert upstream.requests == []


async def test_a_gzip_sign_in_body_is_read_decoded(gateway):
    text = siwe(await nonce_of(gateway))
    body = gzip.compress(json.dumps({"message": text, "signature": sign(text)}).encode())
    async with gateway.request("POST", "/.gateway/login", data=body,
                               headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["access_token"]
    async with gateway.request("POST", "/.gateway/login", data=gzip.compress(b"\0" * 1_000_000),
                               headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}) as resp:
        assert resp.status == 413  # sign-in bodies are small: a bomb is refused while inflating
