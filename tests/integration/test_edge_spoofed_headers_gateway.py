"""Issue 10 item 9: headers an upstream may trust never come from the client.

Upstreams that honour `X-Original-URL`, `X-HTTP-Method-Override` & co. (PHP/IIS/Spring/Express/
Symfony stacks) would serve another route or method than the one the rules allowed; upstreams
that believe `X-Real-IP`, `Forwarded`... would take the client's word for its address or scheme.
Steering headers are always dropped; client-describing ones pass only from `trusted_proxies`.
"""

from __future__ import annotations

import pytest

from tests.support.spoofed_headers import CLIENT_FACTS, STEERING
from tests.support.stack import base_config


# --- against the real app, in front of an upstream that echoes what it receives (httpbin) ----------

def spoofs() -> dict[str, str]:
    return dict(STEERING[:-2] + CLIENT_FACTS + [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https"),
                                                ("X-Forwarded-Host", "admin.internal"), ("X-Custom", "kept")])


async def echoed_headers(gw, method: str = "GET") -> dict[str, str]:
    # show_env=1: httpbin itself would otherwise hide X-Forwarded-*, X-Real-Ip & co. from its echo
    async with gw.request(method, "/anything/x?show_env=1", headers=spoofs()) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["method"] == method  # what the rules allowed, whatever the override headers said
    return {name.lower(): value for name, value in body["headers"].items()}


@pytest.mark.asyncio
async def test_spoofed_routing_and_client_headers_never_reach_a_real_upstream(make_gateway, chain, httpbin_url,
                                                                              signing_key):
    gw = await make_gateway(base_config(chain, None, signing_key, upstream=httpbin_url, upstream_auth={"type": "none"},
                                        open_endpoints=["GET,POST /anything/x"], protected_endpoints=[]))
    for method in ("GET", "POST"):
        seen = await echoed_headers(gw, method)
        assert seen["x-custom"] == "kept"  # the echo works: what is missing below was dropped
        leaked = {name for name, _ in STEERING + CLIENT_FACTS if name.lower() in seen}
        assert leaked == set()
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-host"] == "elvis.proxy.localhost"


@pytest.mark.asyncio
async def test_a_trusted_proxy_may_describe_the_client_but_never_steer_the_route(make_gateway, chain, httpbin_url,
                                                                               signing_key):
    data = base_config(chain, None, signing_key, upstream=httpbin_url, upstream_auth={"type": "none"},
                       open_endpoints=["GET,POST /anything/x"], protected_endpoints=[])
    data["trusted_proxies"] = ["127.0.0.1/32"]
    gw = await make_gateway(data)
    seen = await echoed_headers(gw)
    assert {name for name, _ in STEERING if name.lower() in seen} == set()
    assert seen["x-real-ip"] == "10.0.0.1" and seen["forwarded"] == "for=10.0.0.1;proto=https"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
