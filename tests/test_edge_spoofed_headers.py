"""Issue 10 item 9: headers an upstream may trust never come from the client.

Upstreams that honour `X-Original-URL`, `X-HTTP-Method-Override` & co. (PHP/IIS/Spring/Express/
Symfony stacks) would serve another route or method than the one the rules allowed; upstreams
that believe `X-Real-IP`, `Forwarded`... would take the client's word for its address or scheme.
Steering headers are always dropped; client-describing ones pass only from `trusted_proxies`.
"""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from conftest import base_config
from gateway.config.model import ServiceConfig, UpstreamAuth
from gateway.http.headers import upstream_request_headers

# Make the upstream serve another path, method or host: dropped whoever sends them.
STEERING = [
    ("X-Original-URL", "/paid"), ("X-Rewrite-URL", "/paid"), ("X-Original-URI", "/paid"), ("X-Rewrite-URI", "/paid"),
    ("X-Override-URL", "/paid"), ("X-Forwarded-URI", "/paid"), ("X-Forwarded-Path", "/paid"),
    ("X-Forwarded-Prefix", "/admin"), ("X-Script-Name", "/admin"), ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"), ("X-Method-Override", "DELETE"), ("X-Original-Method", "DELETE"),
    ("X-HTTP-DestinationURL", "http://internal/"), ("X-Original-Host", "admin.internal"), ("X-Host", "admin.internal"),
    ("X-HTTP-Host-Override", "admin.internal"), ("X-Forwarded-Server", "admin.internal"),
    ("X-Proxy-URL", "http://internal/"), ("X-Envoy-Original-Path", "/paid"), ("X-Envoy-Internal", "true"),
    ("X-Original-Anything", "x"), ("x-http-method-override", "PUT"), ("X-ORIGINAL-URL", "/paid"),
]
# Describe the client (address, scheme, port): believed from trusted proxies only.
CLIENT_FACTS = [
    ("Forwarded", "for=10.0.0.1;proto=https"), ("Forwarded-For", "10.0.0.1"), ("X-Forwarded", "for=10.0.0.1"),
    ("X-Real-IP", "10.0.0.1"), ("True-Client-IP", "10.0.0.1"), ("X-Client-IP", "10.0.0.1"),
    ("X-Cluster-Client-IP", "10.0.0.1"), ("CF-Connecting-IP", "10.0.0.1"), ("Fastly-Client-IP", "10.0.0.1"),
    ("X-Originating-IP", "10.0.0.1"), ("X-Remote-IP", "10.0.0.1"), ("X-Remote-Addr", "10.0.0.1"),
    ("Client-IP", "10.0.0.1"), ("X-ProxyUser-Ip", "10.0.0.1"), ("X-Azure-ClientIP", "10.0.0.1"),
    ("X-Url-Scheme", "https"), ("Front-End-Https", "on"), ("X-Forwarded-Port", "443"), ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"), ("X-Forwarded-Protocol", "https"), ("X-Forwarded-Anything", "x"),
]
INNOCENT = [("Accept", "application/json"), ("X-Custom", "kept"), ("X-Forward", "not a forwarding header"),
            ("User-Agent", "curl/8"), ("X-Originality", "high")]
TRUSTED = (ip_network("10.9.0.0/16"), ip_network("fd00::/8"))


def forward(incoming: list[tuple[str, str]], peer: str | None = "198.51.100.7", public_scheme: str = "https"):
    service = ServiceConfig(id="elvis", upstream="http://127.0.0.1:9", upstream_auth=UpstreamAuth("none"), timeout=60.0)
    return upstream_request_headers(
        CIMultiDictProxy(CIMultiDict(incoming)), service, peer=peer, public_host="elvis.proxy.localhost",
        public_scheme=public_scheme, req_id="rid-1", subscriber="0xabc", trusted_proxies=TRUSTED,
    )


@pytest.mark.parametrize("peer", ["198.51.100.7", "10.9.3.4", "fd00::1", None])
@pytest.mark.parametrize("name, value", STEERING)
def test_route_and_method_steering_headers_never_reach_the_upstream(name, value, peer):
    out = forward([(name, value), ("Accept", "*/*")], peer=peer)
    assert name not in out
    assert out["Accept"] == "*/*"


@pytest.mark.parametrize("name, value", CLIENT_FACTS)
def test_spoofed_client_address_and_scheme_headers_are_dropped_from_untrusted_peers(name, value):
    assert name not in forward([(name, value)], peer="198.51.100.7")


@pytest.mark.parametrize("peer", ["10.9.3.4", "fd00::1"])
@pytest.mark.parametrize("name, value", CLIENT_FACTS)
def test_client_address_and_scheme_headers_pass_from_trusted_proxies(name, value, peer):
    assert forward([(name, value)], peer=peer).getall(name) == [value]


@pytest.mark.parametrize("peer", ["198.51.100.7", "10.9.3.4"])
@pytest.mark.parametrize("name, value", INNOCENT)
def test_ordinary_headers_still_pass(name, value, peer):
    assert forward([(name, value)], peer=peer)[name] == value


@pytest.mark.parametrize("peer, incoming, expected", [
    ("198.51.100.7", [("X-Forwarded-For", "1.2.3.4")], "198.51.100.7"),  # a client's claim is not kept
    ("198.51.100.7", [("X-Forwarded-For", "1.2.3.4"), ("x-forwarded-for", "5.6.7.8")], "198.51.100.7"),
    ("198.51.100.7", [("Connection", "X-Forwarded-For"), ("X-Forwarded-For", "1.2.3.4")], "198.51.100.7"),
    ("10.9.3.4", [("X-Forwarded-For", "1.2.3.4")], "1.2.3.4, 10.9.3.4"),  # a trusted proxy's chain is extended
    ("10.9.3.4", [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8")], "1.2.3.4, 5.6.7.8, 10.9.3.4"),
    ("10.9.3.4", [], "10.9.3.4"),
])
def test_x_forwarded_for_is_the_connections_peer_unless_a_trusted_proxy_sent_a_chain(peer, incoming, expected):
    assert forward(incoming, peer=peer).getall("X-Forwarded-For") == [expected]


@pytest.mark.parametrize("peer, sent, public_scheme, expected", [
    ("198.51.100.7", "http", "https", "https"),  # a client cannot downgrade what the upstream is told
    ("198.51.100.7", "https", "http", "http"),  # ... nor upgrade it
    ("10.9.3.4", "https", "http", "https"),  # a trusted proxy terminating TLS says how the client came
    ("10.9.3.4", "https, http", "http", "https"),
    ("10.9.3.4", "gopher", "http", "http"),  # nonsense even from a proxy: the config's scheme
    ("10.9.3.4", None, "https", "https"),
])
def test_x_forwarded_proto_comes_from_the_config_or_a_trusted_proxy(peer, sent, public_scheme, expected):
    incoming = [("X-Forwarded-Proto", sent)] if sent else []
    assert forward(incoming, peer=peer, public_scheme=public_scheme).getall("X-Forwarded-Proto") == [expected]


def test_x_forwarded_host_is_always_the_host_the_gateway_routed_on():
    for peer in ("198.51.100.7", "10.9.3.4"):
        out = forward([("X-Forwarded-Host", "admin.internal"), ("X-Forwarded-Host", "x")], peer=peer)
        assert out.getall("X-Forwarded-Host") == ["elvis.proxy.localhost"]


def test_an_unparsable_peer_is_never_trusted():
    out = forward([("X-Real-IP", "10.0.0.1"), ("X-Forwarded-For", "1.2.3.4")], peer="/run/gateway.sock")
    assert "X-Real-IP" not in out and out["X-Forwarded-For"] == "/run/gateway.sock"


# --- against the real app, in front of an upstream that echoes what it receives (httpbin) ----------

def spoofs() -> dict[str, str]:
    return dict(STEERING[:-2] + CLIENT_FACTS + [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https"),
                                                ("X-Forwarded-Host", "admin.internal"), ("X-Custom", "kept")])


async def echoed_headers(gw, method: str = "GET") -> dict[str, str]:
    # show_env=1: httpbin otherwise hides X-Forwarded-*, X-Real-Ip & co. from its echo
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
