"""Header hygiene between client and upstream (SPEC §7).

Pure functions over header multidicts, so every rule is unit-tested without a
network: what the upstream may see, and what the client may see.
"""

from __future__ import annotations

import re
import uuid

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import ServiceConfig

# RFC 9110 §7.6.1 connection-specific fields, plus the de-facto ones proxies also strip.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
        "Upgrade", "Proxy-Authorization", "Proxy-Authenticate",
    )
)
# Set by the gateway only; anything a client sends under these names is a spoof.
GATEWAY_PREFIX = "x-gateway-"
_OVERWRITTEN = frozenset({"host", "authorization", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "expect"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Names the sender listed in `Connection`: hop-by-hop for this one hop only."""
    names = set()
    for value in headers.getall("Connection", []):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def request_id(incoming: str | None) -> str:
    """Keep a well-formed id from an upstream load balancer (traceability); otherwise mint one."""
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    service: ServiceConfig,
    *,
    peer: str | None,
    public_host: str,
    public_scheme: str,
    req_id: str,
    subscriber: str | None,
) -> CIMultiDict[str]:
    """Headers for the upstream: the client's, cleaned, plus the gateway's own."""
    drop = HOP_BY_HOP | _OVERWRITTEN | connection_listed(incoming)
    auth = service.upstream_auth
    if auth.header_name:
        # Why: a client must never be able to supply (or duplicate) the owner's credential.
        drop = drop | {auth.header_name.lower()}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        # Why: client-sent X-Gateway-* would let a caller claim to be any subscriber.
        if lower in drop or lower.startswith(GATEWAY_PREFIX):
            continue
        out.add(name, value)
    if auth.header_name and auth.header_value:
        out[auth.header_name] = auth.header_value
    forwarded_for = ", ".join([*incoming.getall("X-Forwarded-For", []), *([peer] if peer else [])])
    if forwarded_for:
        out["X-Forwarded-For"] = forwarded_for
    out["X-Forwarded-Proto"] = public_scheme
    out["X-Forwarded-Host"] = public_host
    out["X-Request-Id"] = req_id
    if subscriber is not None:
        out["X-Gateway-Subscriber"] = subscriber
        out["X-Gateway-Service"] = service.id
    return out


def client_response_headers(
    upstream: CIMultiDictProxy[str], *, strip: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """The upstream's answer headers minus hop-by-hop ones and any the gateway consumes."""
    drop = HOP_BY_HOP | connection_listed(upstream) | strip
    return CIMultiDict((k, val) for k, val in upstream.items() if k.lower() not in drop)
