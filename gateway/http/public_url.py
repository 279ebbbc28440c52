"""The public base URL a client used to reach a service: `scheme://host[:port]`.

Written into the documents the gateway serves itself (the rewritten plugin manifest and
OpenAPI document, OAuth protected-resource metadata, the `Payment-Required` header), so that
every URL a client reads points back at the gateway, on the name and port it already uses.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config.model import GatewayConfig
from gateway.http.headers import trusted_peer

DEFAULT_PORTS = {"http": 80, "https": 443}  # what a URL without a port means


def public_base(config: GatewayConfig, request: web.Request) -> str:
    """Scheme from `public_scheme`, or from `X-Forwarded-Proto` when a trusted proxy sent it;
    host (and port) from the request's Host header.

    The Host header is safe to echo here: the router has already matched it against this
    service's own names (unknown hosts never get this far), so a client cannot make the gateway
    write an arbitrary host into a document.
    """
    host = request.headers.get("Host", "").strip().rstrip(".").lower()
    return f"{_scheme(config, request)}://{host}"


def _scheme(config: GatewayConfig, request: web.Request) -> str:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    # Why only from a trusted peer: anyone else could make the gateway advertise plain http.
    if forwarded in ("http", "https") and trusted_peer(request.remote, config.trusted_proxies):
        return forwarded
    return config.public_scheme

