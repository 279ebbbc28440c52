"""Issue 10 item 14: no path means one thing at the gateway and another upstream.

An escaped '%' followed by what decodes to another escape ("%252e", "%25%32%65", "%2570"...) is
one plain segment for the gateway but a dot, a slash or another letter for an upstream that
decodes twice (IIS, some servlet and proxy chains). Such spellings are refused with 400
`bad_request`, like single-encoded separators; so are overlong UTF-8 spellings of ASCII.
"""

from __future__ import annotations

import pytest

from tests.support.lenient_upstreams import DoubleDecodingUpstream
from tests.support.path_spellings import DOUBLE_ENCODED, OVERLONG
from tests.support.stack import SUBSCRIBER, base_config


@pytest.mark.asyncio
async def test_double_encoded_dot_segments_never_reach_a_protected_route_on_a_double_decoding_upstream(
        make_gateway, chain, signing_key):
    async with DoubleDecodingUpstream() as upstream:
        gw = await make_gateway(base_config(
            chain, None, signing_key, upstream=upstream.url, upstream_auth={"type": "none"},
            open_endpoints=["GET /open/(.*)", "GET /(.*)"], protected_endpoints=["GET /paid"]))
        async with gw.request("GET", "/open/x") as resp:  # the open route does reach this upstream
            assert resp.status == 200 and (await resp.json())["served"] == "/open/x"
        async with gw.request("GET", "/paid") as resp:  # the protected one needs a token
            assert resp.status == 401
        for raw in [*DOUBLE_ENCODED, *OVERLONG]:
            async with gw.request("GET", raw) as resp:
                body = await resp.json(content_type=None)
                assert (resp.status, body.get("code")) == (400, "bad_request"), raw
        assert "/paid" not in upstream.served
        assert upstream.served == ["/open/x"]
        async with gw.request("GET", "/paid", token=gw.token(SUBSCRIBER)) as resp:
            assert resp.status in (200, 402)  # a token is what it takes
