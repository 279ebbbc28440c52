"""Sign-in rate limit: a token bucket per client address (`tokens.signin_rate`, default 30/1m).

`GET /.gateway/nonce` and `POST /.gateway/login` are anonymous, and a login with a fresh key
(free to make) costs the gateway a signature recovery, a chain read (the balance it answers)
and a row in the shared balances table; so each client address gets `count` requests of
either kind, refilled at `count` per `per` seconds. Above it: 429 `rate_limited` with
`Retry-After`, before any work is done.

The client address is the TCP peer, or, when the peer is one of `trusted_proxies`, the
right-most address of `X-Forwarded-For` that is not itself a trusted proxy (the left part of
the header is whatever the client wrote). IPv6 addresses are keyed by their /64: one host
usually owns a whole /64 and could otherwise rotate through it.

Per process: each worker keeps its own buckets (in memory, bounded: an LRU of
`MAX_ADDRESSES`; emptied by a config reload), so with `workers: N` an address gets up to N
times the rate. That is still a fixed bound per address, and costs no shared state (no ledger
write) on the hot path of an attack.
"""

from __future__ import annotations

import math
import time
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Callable, Sequence

from aiohttp import web
from cachetools import LRUCache

from gateway.http.headers import trusted_peer
from gateway.http.problems import Problem

# Buckets kept per worker (~6 MB when full); the least recently seen address is forgotten, and a
# forgotten one starts full again: a client with more addresses than this is not held back by a
# per-address limit anyway.
MAX_ADDRESSES = 20_000


class SigninRateLimit:
    """`check(request)` takes one token of the client's bucket or raises Problem 429."""

    def __init__(self, rate: tuple[int, float] | None, trusted_proxies: Sequence[IPv4Network | IPv6Network] = (),
                 clock: Callable[[], float] = time.monotonic, max_addresses: int = MAX_ADDRESSES) -> None:
        self.rate, self.trusted, self.clock = rate, tuple(trusted_proxies), clock
        # address key -> (tokens left, when they were counted)
        self._buckets: LRUCache[str, tuple[float, float]] = LRUCache(maxsize=max_addresses)

    def check(self, request: web.Request) -> None:
        if self.rate is None:
            return  # Why: the operator turned it off (`signin_rate: off`), e.g. a limiter in front does it
        count, per = self.rate
        key, now = self.client_key(request), self.clock()
        # Why a forgotten (or new) address starts full: forgetting can only be generous, never lock out.
        tokens, then = self._buckets.get(key, (float(count), now))
        tokens = min(float(count), tokens + (now - then) * count / per)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry = max(1, math.ceil((1.0 - tokens) * per / count))
            # Why refuse before any work: this is what makes sign-in cheap to abuse no more.
            raise Problem(429, "rate_limited", f"too many sign-in requests from this address; "
                          f"try again in {retry} s", headers={"Retry-After": str(retry)})
        self._buckets[key] = (tokens - 1.0, now)

    def client_key(self, request: web.Request) -> str:
        return _key(client_address(request, self.trusted))


def client_address(request: web.Request, trusted: Sequence[IPv4Network | IPv6Network]) -> str:
    """The client's address: the peer, or what trusted proxies say it was (see module doc)."""
    peer = request.remote or ""
    if not trusted_peer(peer, trusted):
        return peer
    hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",")]
    for hop in reversed(hops):
        if not trusted_peer(hop, trusted):
            # Why the right-most untrusted hop: it was written by our own proxy, the rest by the client.
            return hop
    return peer  # every hop is one of ours: the request comes from our own network


def _key(address: str) -> str:
    try:
        parsed = ip_address(address)
    except ValueError:
        return address[:64]  # Why bounded: a proxy may write anything; a unix socket peer is ""
    if isinstance(parsed, IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)  # Why: ::ffff:a.b.c.d is the IPv4 client a.b.c.d
        return str(ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
