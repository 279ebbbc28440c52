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

from gateway.config.model import ServiceConfig, UpstreamAuth
from gateway.http.headers import upstream_request_headers
from tests.support.spoofed_headers import CLIENT_FACTS, STEERING
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
