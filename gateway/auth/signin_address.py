"""Which address a Sign-In with Ethereum message must name: the service's public address.

EIP-4361 binds a message to the site that asked for it (its `domain`, and the `URI` of the
resource); a message signed for another site, another service or another port of the same
host (another application there) must not log in here.

The service's public address is: the scheme the client used (`public_scheme`, or a trusted
proxy's `X-Forwarded-Proto`); any of the service's names (its id label and its DID label under
`base_domain`, and its `hosts`); and the port of `config.public_url(service)`, i.e. the scheme's
default port when `public_scheme` is https or the listen port is 80/443 (TLS or a proxy in
front), else the listen port. The client's `Host` header is not consulted: the router already
matched it to the service, and its port is the client's to write. A listen port of 0 (an
ephemeral port: tests) names no port; then the scheme's default port and the local port the
connection actually reached are the public ones (neither comes from the client).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from gateway.config.model import GatewayConfig, ServiceConfig
from gateway.http.problems import Problem
from gateway.http.public_url import DEFAULT_PORTS, public_base
from gateway.auth.siwe import Authority, parse_authority, split_uri

@dataclass(frozen=True)
class Origin:
    """How the client reached us: the scheme the gateway is served with (`public_scheme`, or a
    trusted proxy's `X-Forwarded-Proto`) and the local port of the connection."""

    scheme: str
    local_port: int | None = None


def origin_of(config: GatewayConfig, request: web.Request) -> Origin:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
    return Origin(public_base(config, request).split("://", 1)[0], port)


@dataclass(frozen=True)
class PublicAddress:
    """Where this service is published: scheme, (host, port) pairs, and the canonical one to show."""

    scheme: str
    endpoints: frozenset[tuple[str, str]]
    shown: str

    @classmethod
    def of(cls, config: GatewayConfig, service: ServiceConfig, origin: Origin) -> "PublicAddress":
        base = config.base_domain.strip().lower().rstrip(".")
        names = [f"{service.id}.{base}", *service.hosts] + ([f"{service.did_label}.{base}"] if service.did_label else [])
        hosts = {name.strip().lower().rstrip(".") for name in names}  # as the router keys them
        default = _default_port(origin.scheme)
        port = urlsplit(config.public_url(service)).port
        # Why (module doc): the config's public port, never the Host header's.
        if port is None:
            ports = {default}
        elif port == 0:
            ports = {default, str(origin.local_port or default)}
        else:
            ports = {str(port)}
        shown_port = "" if port in (None, 0) or str(port) == default else f":{port}"
        return cls(origin.scheme, frozenset((h, p) for h in hosts for p in ports),
                   f"{origin.scheme}://{service.id}.{base}{shown_port}")

    def names(self, scheme: str, authority: Authority) -> bool:
        return authority.userinfo is None and _endpoint(scheme, authority) in self.endpoints

    def check_domain(self, scheme: str | None, domain: str) -> None:
        """The message's [scheme://]domain must be this address (EIP-4361 domain binding)."""
        authority = parse_authority(domain)
        # Why: a message signed for another site (phishing), another service, or another port of
        # the same host must not log in here. A missing scheme means the scheme we are served
        # with (we know it; the EIP's https default is for wallets); a missing port means that
        # scheme's default. The userinfo is never ours.
        if (scheme is not None and scheme.lower() != self.scheme) or not self.names(scheme or self.scheme, authority):
            raise Problem(401, "domain_mismatch", f"the message's domain must be {self.shown}, "
                          "where this service is published")

    def check_uri(self, uri: str) -> None:
        scheme, authority, _ = split_uri(uri)
        # Why: the URI names the resource the subscriber agrees to sign in to; it must be this service.
        if scheme.lower() != self.scheme or authority is None or not self.names(self.scheme, authority):
            raise Problem(401, "uri_mismatch", f"the message's URI must be on {self.shown}")


def _endpoint(scheme: str, authority: Authority) -> tuple[str, str]:
    """(host, port) with the default port of the scheme filled in; host lower-case, no final dot."""
    host = authority.host.lower()
    host = host[:-1] if host.endswith(".") else host
    return host, authority.port or _default_port(scheme)


def _default_port(scheme: str) -> str:
    return str(DEFAULT_PORTS[scheme]) if scheme in DEFAULT_PORTS else ""
