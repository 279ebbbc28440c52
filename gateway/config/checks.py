"""Config checks across sections: rules no single value can check alone.

Each rule here is one that `gateway serve` would otherwise meet only at start-up (a router that
cannot be built, a socket that cannot be bound); checked while loading, `gateway check-config`
refuses the same files `serve` would, with the YAML path of the part to change. Every check
appends to `problems` and never stops at the first one.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Iterator, Mapping

from gateway.config.model import ListenAddress, ServiceConfig, TokensConfig


def check_hosts(services: Mapping[str, ServiceConfig], base_domain: str | None, problems: list[str]) -> None:
    """Every host name answers for one service only: the names `ServiceRouter` builds its table from.

    Why full names, not labels: the router matches `<id>.<base_domain>`, `<did label>.<base_domain>`
    and each `hosts` entry as written; `hosts: [api.example.com]` collides with a service `api`
    only when base_domain is `example.com`.
    """
    owner: dict[str, str] = {}
    for sid, service in services.items():
        for path, name in _host_names(sid, service, base_domain):
            other = owner.setdefault(name, sid)
            # Why: two services on one host would make routing depend on config order; one service
            # naming its own host twice is harmless (the router allows it).
            if other != sid:
                problems.append(f"{path}: host {name!r} is also used by service {other!r}")


def _host_names(sid: str, service: ServiceConfig, base: str | None) -> Iterator[tuple[str, str]]:
    if base:
        yield f"services.{sid}", f"{sid}.{base}"
        if service.did_label:
            yield f"services.{sid}.did", f"{service.did_label}.{base}"
    for i, host in enumerate(service.hosts):
        yield f"services.{sid}.hosts[{i}]", host


def check_issuers_for_protected(services: Mapping[str, ServiceConfig], tokens: TokensConfig,
                                problems: list[str]) -> None:
    # Why: a protected endpoint nobody can get a token for is a misconfiguration, not a lock.
    if any(s.protected_endpoints or s.mcp for s in services.values()) and not (tokens.issuers or tokens.own):
        problems.append("tokens: protected endpoints need at least one issuer (tokens.issuers or tokens.own)")


def check_listeners(listen: ListenAddress | None, admin: ListenAddress | None, problems: list[str]) -> None:
    """`admin_listen` must not be an address `listen` already binds: `serve` binds both before it starts."""
    if listen is None or admin is None or listen.port == 0 or listen.port != admin.port:
        return  # port 0: each listener gets its own free port
    if _overlap(listen.host, admin.host):
        # Why: the second bind fails with "address in use" and `serve` exits 1; the admin listener
        # also needs its own address so that a public flood never reaches /healthz or /metrics.
        problems.append(f"admin_listen: {admin} is also bound by listen ({listen}); give it its own address or port")


def _overlap(a: str, b: str) -> bool:
    """Two hosts on one port that cannot both be bound: the same host, or a wildcard and an address of its family."""
    if a == b:
        return True
    family = {h: _family(h) for h in (a, b)}
    for wildcard, other in ((a, b), (b, a)):
        if wildcard in ("0.0.0.0", "::") and family[other] == family[wildcard]:
            return True
    return False


def _family(host: str) -> int | None:
    try:
        return ip_address(host).version
    except ValueError:
        return None  # a name: it may resolve to anything, only an identical name is known to collide
