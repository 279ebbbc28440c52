"""Header hygiene: what reaches the upstream and what reaches the client."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.model import ServiceConfig, UpstreamAuth
from gateway.http.headers import client_response_headers, request_id, upstream_request_headers


def service(auth: UpstreamAuth) -> ServiceConfig:
    return ServiceConfig(id="elvis", upstream="http://127.0.0.1:9", upstream_auth=auth, timeout=60.0)


def forward(incoming: list[tuple[str, str]], auth=UpstreamAuth("bearer", "Authorization", "Bearer owner"),
            subscriber: str | None = "0xabc") -> CIMultiDict[str]:
    return upstream_request_headers(
        CIMultiDictProxy(CIMultiDict(incoming)), service(auth), peer="10.0.0.9",
        public_host="elvis.proxy.localhost", public_scheme="https", req_id="rid-1", subscriber=subscriber,
    )


def test_client_authorization_is_replaced_by_the_owners_credential():
    out = forward([("Authorization", "Bearer subscriber.jwt"), ("Authorization", "Basic x")])
    assert out.getall("Authorization") == ["Bearer owner"]


def test_custom_header_auth_cannot_be_supplied_by_the_client():
    auth = UpstreamAuth("header", "X-Api-Key", "owner-key")
    out = forward([("X-Api-Key", "spoof"), ("Authorization", "Bearer jwt")], auth=auth)
    assert out.getall("X-Api-Key") == ["owner-key"]
    assert "Authorization" not in out


def test_no_auth_strips_the_subscriber_token():
    out = forward([("Authorization", "Bearer jwt")], auth=UpstreamAuth("none"))
    assert "Authorization" not in out


def test_hop_by_hop_and_connection_listed_headers_are_removed():
    out = forward([
        ("Connection", "keep-alive, X-Secret-Hop"), ("Keep-Alive", "timeout=5"), ("X-Secret-Hop", "1"),
        ("TE", "trailers"), ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Proxy-Authorization", "x"),
        ("Accept", "application/json"),
    ])
    for name in ("Connection", "Keep-Alive", "X-Secret-Hop", "TE", "Transfer-Encoding", "Upgrade", "Proxy-Authorization"):
        assert name not in out, name
    assert out["Accept"] == "application/json"


def test_spoofed_gateway_headers_are_dropped_and_set_by_the_gateway():
    out = forward([("X-Gateway-Subscriber", "0xspoof"), ("x-gateway-service", "other"), ("X-Gateway-Anything", "1")])
    assert out.getall("X-Gateway-Subscriber") == ["0xabc"]
    assert out.getall("X-Gateway-Service") == ["elvis"]
    assert "X-Gateway-Anything" not in out


def test_open_calls_carry_no_subscriber_headers_even_if_spoofed():
    out = forward([("X-Gateway-Subscriber", "0xspoof")], subscriber=None)
    assert "X-Gateway-Subscriber" not in out and "X-Gateway-Service" not in out


def test_forwarded_headers_append_the_peer_and_overwrite_proto_and_host():
    out = forward([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "gopher"), ("X-Forwarded-Host", "evil"),
                   ("Host", "elvis.proxy.localhost")])
    assert out["X-Forwarded-For"] == "10.0.0.9"  # a chain is kept from trusted proxies only (test_edge_spoofed_headers)
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "elvis.proxy.localhost"
    assert "Host" not in out  # the client library sets the upstream's own Host
    assert out["X-Request-Id"] == "rid-1"


def test_request_id_keeps_well_formed_ids_only():
    assert request_id("abc-123") == "abc-123"
    assert len(request_id("bad id\r\nX: y")) == 32
    assert len(request_id(None)) == 32
    assert request_id(None) != request_id(None)


def test_client_response_headers_drop_hop_by_hop_and_consumed_headers():
    upstream = CIMultiDictProxy(CIMultiDict([
        ("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"), ("Connection", "close, X-Hop"),
        ("X-Hop", "1"), ("X-Credits-Consumed", "3"), ("Content-Encoding", "gzip"), ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]))
    out = client_response_headers(upstream, strip=frozenset({"x-credits-consumed"}))
    assert list(out.items()) == [("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip"),
                                 ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
