"""Header hygiene between client and upstream (SPEC §7).

Pure functions over header multidicts, so every rule is unit-tested without a
network: what the upstream may see, and what the client may see. Headers an
upstream may trust for routing (`X-Original-URL`, method overrides, ...) never
come from outside; headers about the client (`Forwarded`, `X-Real-IP`, ...)
come only from `trusted_proxies`.
"""

from __future__ import annotations

import os
import random
import re
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.model import ServiceConfig

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
_OVERWRITTEN = frozenset({"host", "authorization", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                          "x-request-id", "expect"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Headers that make an upstream (PHP/IIS/Spring/Express/Symfony stacks, Envoy sidecars) serve another
# path, method or host than the one the rules allowed: the gateway decided those, nobody may re-decide
# them downstream, not even a trusted proxy in front.
_STEERING = frozenset(
    h.lower()
    for h in (
        "X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Rewrite-URI", "X-Override-URL", "X-Forwarded-URI",
        "X-Forwarded-Path", "X-Forwarded-Prefix", "X-Script-Name", "X-HTTP-Method-Override", "X-HTTP-Method",
        "X-Method-Override", "X-Original-Method", "X-HTTP-Destinationurl", "X-Original-Host", "X-Host",
        "X-HTTP-Host-Override", "X-Forwarded-Server", "X-Proxy-URL",
    )
)
_STEERING_PREFIXES = ("x-original-", "x-envoy-", "x-rewrite-")
# Headers by which a proxy in front tells the upstream who the client is and how it connected
# (address, scheme, port). True only when a proxy of ours says so: believed from `trusted_proxies`,
# dropped from anyone else (a client would pick its own address for the upstream's rate limits,
# allow-lists and audit logs, or claim https).
_CLIENT_FACTS = frozenset(
    h.lower()
    for h in (
        "Forwarded", "Forwarded-For", "X-Forwarded", "X-Real-IP", "True-Client-IP", "X-Client-IP",
        "X-Cluster-Client-IP", "CF-Connecting-IP", "Fastly-Client-IP", "X-Originating-IP", "X-Remote-IP",
        "X-Remote-Addr", "Client-IP", "X-ProxyUser-Ip", "X-Azure-ClientIP", "X-Azure-SocketIP", "X-Url-Scheme",
        "Front-End-Https", "X-Forwarded-Port", "X-Forwarded-Ssl", "X-Forwarded-Scheme", "X-Forwarded-Protocol",
    )
)
_CLIENT_FACTS_PREFIXES = ("x-forwarded-",)  # any other X-Forwarded-* spelling is of the same kind
SERVER_NAME = "payment-gateway"  # the `Server` header of every answer: no product versions to fingerprint


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
    # Why not uuid4: it draws from the OS (a system call) on every request for a value that must be
    # unique, not secret (a client may send its own). Not a counter either: ids would tell clients
    # how busy the gateway is. 128 bits from a generator seeded from the OS, per process.
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random()  # seeded from os.urandom
os.register_at_fork(after_in_child=_ids.seed)  # each forked worker its own sequence


def is_steering(name: str) -> bool:
    """A header that would make the upstream route or dispatch differently: never forwarded."""
    lower = name.lower()
    return lower in _STEERING or lower.startswith(_STEERING_PREFIXES)


def is_client_fact(name: str) -> bool:
    """A header stating the client's address, scheme or port: forwarded from trusted proxies only."""
    lower = name.lower()
    return lower in _CLIENT_FACTS or lower.startswith(_CLIENT_FACTS_PREFIXES)


def trusted_peer(peer: str | None, trusted_proxies: Iterable[IPv4Network | IPv6Network]) -> bool:
    """Whether the connection comes from one of the operator's own proxies (`trusted_proxies`)."""
    if not peer or not trusted_proxies:  # most gateways trust no proxy: no address to parse
        return False
    if isinstance(trusted_proxies, tuple):  # the config's (immutable): the answer per peer is cached
        return _trusted_cached(peer, trusted_proxies)
    return _trusted(peer, trusted_proxies)


def _trusted(peer: str, trusted_proxies: Iterable[IPv4Network | IPv6Network]) -> bool:
    try:
        address = ip_address(peer)
    except ValueError:  # a unix socket peer, for instance
        return False
    return any(address in network for network in trusted_proxies)


_trusted_cached = lru_cache(maxsize=4096)(_trusted)


# x402 payments (v2 and v1 names): the gateway verifies and settles them; the upstream is paid, not told.
_PAYMENT = frozenset({"payment-signature", "x-payment"})
_DROPPED = HOP_BY_HOP | _OVERWRITTEN | _PAYMENT
_NEVER_PREFIXES = (GATEWAY_PREFIX, *_STEERING_PREFIXES)  # is_steering's prefixes, and ours
_NONE: frozenset[str] = frozenset()


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    service: ServiceConfig,
    *,
    peer: str | None,
    public_host: str,
    public_scheme: str,
    req_id: str,
    subscriber: str | None,
    trusted_proxies: Iterable[IPv4Network | IPv6Network] = (),
) -> CIMultiDict[str]:
    """Headers for the upstream: the client's, cleaned, plus the gateway's own.

    From a peer in `trusted_proxies` the client-describing headers (`Forwarded`, `X-Real-IP`,
    `X-Forwarded-Port`...) pass and `X-Forwarded-For` extends the proxy's chain; from anyone else
    they are dropped and `X-Forwarded-For` is the peer alone. Steering headers never pass."""
    trusted = trusted_peer(peer, trusted_proxies)
    # Hop-by-hop and overwritten headers, and any the client listed in Connection, never pass.
    listed = connection_listed(incoming) if "Connection" in incoming else _NONE
    auth = service.upstream_auth
    # Why: a client must never be able to supply (or duplicate) the owner's credential.
    credential = auth.header_name.lower() if auth.header_name else None
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in _DROPPED or lower in listed or lower == credential:
            continue
        # Why: client-sent X-Gateway-* would let a caller claim to be any subscriber; X-Original-URL,
        # X-HTTP-Method-Override & co. would let the upstream serve another route or method than
        # the one the rules allowed (and priced).
        if lower in _STEERING or lower.startswith(_NEVER_PREFIXES):
            continue
        # Why: only a proxy of ours knows the client's real address and scheme; anyone else lies.
        if not trusted and (lower in _CLIENT_FACTS or lower.startswith(_CLIENT_FACTS_PREFIXES)):
            continue
        out.add(name, value)
    if auth.header_name and auth.header_value:
        out[auth.header_name] = auth.header_value
    chain = incoming.getall("X-Forwarded-For", []) if trusted else []
    forwarded_for = ", ".join([*chain, *([peer] if peer else [])])
    if forwarded_for:
        out["X-Forwarded-For"] = forwarded_for
    proto = incoming.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() if trusted else ""
    # Why: the scheme the client used is known from the config, or from a proxy of ours in front.
    out["X-Forwarded-Proto"] = proto if proto in ("http", "https") else public_scheme
    out["X-Forwarded-Host"] = public_host
    out["X-Request-Id"] = req_id
    if subscriber is not None:
        out["X-Gateway-Subscriber"] = subscriber
        out["X-Gateway-Service"] = service.id
    return out


async def set_server_header(request, response) -> None:
    """`on_response_prepare`: one fixed `Server` value on every answer, the relayed ones included.

    Why: aiohttp's default names Python's and aiohttp's versions, an upstream's names its own stack
    (the upstream is private behind the gateway): neither helps a client, both help an attacker."""
    response.headers["Server"] = SERVER_NAME


def client_response_headers(
    upstream: CIMultiDictProxy[str], *, strip: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """The upstream's answer headers minus hop-by-hop ones and any the gateway consumes."""
    listed = connection_listed(upstream) if "Connection" in upstream else _NONE
    drop = HOP_BY_HOP | listed | strip if listed or strip else HOP_BY_HOP
    return CIMultiDict([(k, val) for k, val in upstream.items() if k.lower() not in drop])
