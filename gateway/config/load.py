"""Load `gateway.yaml`: substitute `${VAR}`, validate everything, report every problem.

`load_config(path)` returns a frozen `GatewayConfig` or raises `ConfigError`
holding ALL problems found, each prefixed with its YAML path
(`services.elvis.plan.contract: not an address`), so an operator fixes a file
in one pass. Rules across sections are in `gateway.config.checks`. Nothing here runs after
start-up, and nothing that runs at start-up refuses a config this accepted.
`load_metering(path)` reads the `metering` section alone, for commands that only read the ledger.
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Mapping

import yaml

from gateway.config import checks
from gateway.config import values as v
from gateway.config.cpus import usable_cpus
from gateway.config.model import (
    DEFAULT_MAX_BODY,
    ChainConfig,
    ConnectionsConfig,
    GatewayConfig,
    IssuerConfig,
    MeteringConfig,
    OwnIssuerConfig,
    PlanCacheConfig,
    TokensConfig,
)
from gateway.config.nodes import ConfigError, Node
from gateway.config.secret_files import inline_or_file, keystore_key
from gateway.config.oauth import parse_oauth
from gateway.config.services import parse_services
from gateway.config.x402 import check_x402_settlement

__all__ = ["ConfigError", "load_config", "load_metering", "parse_config"]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ALGORITHMS = ("ES256K", "ES256", "EdDSA", "RS256", "HS256")


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    path = Path(path)
    data = _read(path)
    return parse_config(data, environ if environ is not None else os.environ, base_dir=path.parent, source=path)


def load_metering(path: str | Path, environ: Mapping[str, str] | None = None) -> MeteringConfig:
    """The `metering` section alone, for commands that only read the ledger (`gateway usage`).

    Why a section alone: an operator reading the ledger should not need the secrets serving needs
    (a signing key file, upstream tokens). ${VAR} is substituted in `metering` only, and no other
    section is checked; `serve` and `check-config` still check the whole file."""
    path = Path(path)
    data = _read(path)
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError(["(top level): must be a mapping"])
    section = _substitute(data.get("metering"), "metering", environ if environ is not None else os.environ, problems)
    metering = _metering(Node(section, "metering", problems) if section is not None else None, path.parent)
    if problems:
        raise ConfigError(problems)
    return metering


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None


def parse_config(
    data: Any, environ: Mapping[str, str], base_dir: Path = Path("."), source: Path | None = None
) -> GatewayConfig:
    problems: list[str] = []
    data = _substitute(data, "", environ, problems)
    root = Node(data, "", problems)
    listen = root.get("listen", v.listen_address, v.listen_address("0.0.0.0:8080"))
    cores = usable_cpus()  # Why not os.cpu_count(): a 2-CPU container on a 64-core host needs 2 workers
    config_kwargs = dict(
        listen=listen,
        admin_listen=root.get("admin_listen", v.listen_address, None),
        workers=root.get("workers", v.integer(1, 256), cores),
        public_scheme=root.get("public_scheme", v.choice("http", "https"), "https"),
        base_domain=root.get("base_domain", v.domain),
        max_body=root.get("max_body", v.size, DEFAULT_MAX_BODY),
        plan_cache=_plan_cache(root.child("plan_cache")),
        shutdown_grace=root.get("shutdown_grace", v.duration, 30.0),
        upstream_connections=root.get("upstream_connections", v.integer(1), 10_000),
        trusted_proxies=tuple(root.get("trusted_proxies", v.list_of(_network), ()) or ()),
        pid_file=root.get("pid_file", lambda raw: v.relative_path(raw, base_dir), None),
        connections=_connections(root.child("connections")),
        **_log(root.child("log")),
    )
    chains = _chains(root.child("chains"), problems)
    tokens = _tokens(root.child("tokens"), base_dir, problems)
    services = parse_services(root.child("services", required=True), chains, config_kwargs["max_body"], problems,
                              base_dir)
    metering = _metering(root.child("metering"), base_dir)
    config_kwargs["oauth"] = parse_oauth(root.child("oauth"), base_dir, tokens.own is not None)
    root.done()
    # Rules across sections, which `serve` would otherwise meet only at start-up.
    checks.check_hosts(services, config_kwargs["base_domain"], problems)
    checks.check_issuers_for_protected(services, tokens, problems)
    checks.check_listeners(listen, config_kwargs["admin_listen"], problems)
    check_x402_settlement(services, metering.x402_key or metering.operator_key, problems)
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(
        chains=chains, tokens=tokens, services=services, metering=metering, source=source, **config_kwargs
    )


def _substitute(value: Any, path: str, environ: Mapping[str, str], problems: list[str]) -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string scalar (never in keys)."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ and environ[name] != "":
                return environ[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set")
            return ""
        return _ENV.sub(repl, value)
    if isinstance(value, Mapping):
        return {k: _substitute(item, f"{path}.{k}" if path else str(k), environ, problems) for k, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, f"{path}[{i}]", environ, problems) for i, item in enumerate(value)]
    return value


def _log(node: Node | None) -> dict:
    if node is None:
        return {}
    log = {"log_level": node.get("level", v.choice("debug", "info", "warning", "error"), "info"),
           "log_format": node.get("format", v.choice("auto", "json", "console"), "auto")}
    node.done()
    return log


def _plan_cache(node: Node | None) -> PlanCacheConfig:
    if node is None:
        return PlanCacheConfig()
    d = PlanCacheConfig()
    cache = PlanCacheConfig(
        ttl=node.get("ttl", v.duration, d.ttl),
        negative_ttl=node.get("negative_ttl", v.duration, d.negative_ttl),
        stale_if_error=node.get("stale_if_error", v.duration, d.stale_if_error),
        size=node.get("size", v.integer(1), d.size),
    )
    node.done()
    return cache


def _connections(node: Node | None) -> ConnectionsConfig:
    d = ConnectionsConfig()
    if node is None:
        return d
    positive = v.integer(1)
    limits = ConnectionsConfig(
        header_timeout=node.get("header_timeout", _positive_duration, d.header_timeout),
        keepalive_timeout=node.get("keepalive_timeout", _positive_duration, d.keepalive_timeout),
        max_per_worker=node.get("max_per_worker", positive, d.max_per_worker),
        admin_max=node.get("admin_max", positive, d.admin_max),
    )
    node.done()
    return limits


def _positive_duration(raw: Any) -> float:
    seconds = v.duration(raw)
    if seconds <= 0:  # Why: 0 would mean "no deadline", exactly what a slow client wants
        raise ValueError("must be a positive duration")
    return seconds


def _chains(node: Node | None, problems: list[str]) -> dict[str, ChainConfig]:
    chains: dict[str, ChainConfig] = {}
    for name, raw in (node.value.items() if node else ()):
        c = Node(raw, node.at(str(name)), problems)
        chains[str(name)] = ChainConfig(
            name=str(name),
            chain_id=c.get("chain_id", v.integer(1)),
            rpc_urls=tuple(c.get("rpc_urls", v.list_of(v.http_url, min_items=1)) or ()),
            timeout=c.get("timeout", v.duration, 2.0),
        )
        c.done()
    return chains


def _tokens(node: Node | None, base_dir: Path, problems: list[str]) -> TokensConfig:
    if node is None:
        return TokensConfig(issuers=(), own=None, leeway=30.0)
    issuers = []
    for i, raw in enumerate(node.get("issuers", v.list_of(lambda x: x), []) or []):
        issuers.append(_issuer(Node(raw, node.at(f"issuers[{i}]"), problems), base_dir))
    own = None
    own_node = node.child("own")
    if own_node is not None:
        own = OwnIssuerConfig(
            issuer=own_node.get("issuer", v.non_empty),
            signing_key_file=own_node.get("signing_key_file", v.signing_key_file(base_dir)),
            ttl=own_node.get("ttl", v.duration, 30 * 86400.0),
            previous_key_files=tuple(
                own_node.get("previous_key_files", v.list_of(v.signing_key_file(base_dir)), ()) or ()
            ),
        )
        own_node.done()
    names = [i.issuer for i in issuers] + ([own.issuer] if own else [])
    if len(set(names)) != len(names):
        problems.append(f"{node.at('issuers')}: an issuer is listed twice (the own issuer included)")
    tokens = TokensConfig(
        issuers=tuple(issuers),
        own=own,
        leeway=node.get("leeway", v.duration, 30.0),
        cache_size=node.get("cache_size", v.integer(0), 10_000),
        nonce_ttl=node.get("nonce_ttl", v.duration, 300.0),
        revocation_refresh=node.get("revocation_refresh", v.duration, 5.0),
        signin_rate=node.get("signin_rate", v.rate, TokensConfig.signin_rate),
    )
    node.done()
    return tokens


def _issuer(n: Node, base_dir: Path) -> IssuerConfig:
    issuer = IssuerConfig(
        issuer=n.get("issuer", v.non_empty),
        algorithms=tuple(n.get("algorithms", v.list_of(v.choice(*ALGORITHMS), min_items=1), ()) or ()),
        jwks_url=n.get("jwks_url", v.http_url, None),
        jwks_file=n.get("jwks_file", v.jwks_file(base_dir), None),
        public_key_file=n.get("public_key_file", v.public_key_file(base_dir), None),
        secret=inline_or_file(n, "secret", v.non_empty, base_dir, None),
    )
    keys = ("jwks_url", "jwks_file", "public_key_file", "secret", "secret_file")
    sources = {"secret" if k == "secret_file" else k for k in keys if n.value.get(k) is not None}
    if len(sources) != 1:  # secret and secret_file together: reported once, by inline_or_file
        n.problems.append(f"{n.path}: exactly one of jwks_url, jwks_file, public_key_file, secret is required"
                          " (secret_file is a secret)")
    # Why: mixing HMAC with public-key algorithms is the classic algorithm-confusion hole
    # (an attacker signs HS256 with the public key); a secret issuer is HS256 and nothing else.
    if issuer.secret is not None:
        if set(issuer.algorithms) != {"HS256"}:
            n.problems.append(f"{n.at('algorithms')}: an issuer with a secret allows exactly [HS256]")
        if len(issuer.secret.encode()) < 32:  # a file's content counts, its trailing newline stripped
            key = "secret" if n.value.get("secret") else "secret_file"
            n.problems.append(f"{n.at(key)}: must be at least 32 bytes")
    elif "HS256" in issuer.algorithms and "secret" not in sources:  # a bad secret is already reported
        n.problems.append(f"{n.at('algorithms')}: HS256 needs a `secret` (32+ bytes) and no public key")
    n.done()
    return issuer


def _network(raw: Any) -> IPv4Network | IPv6Network:
    try:
        return ip_network(v.non_empty(raw), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or network (got {raw!r})") from None


def _metering(m: Node | None, base_dir: Path) -> MeteringConfig:
    if m is None:
        return MeteringConfig(ledger=v.ledger_url(MeteringConfig.ledger, base_dir))
    metering = MeteringConfig(
        ledger=m.get("ledger", lambda raw: v.ledger_url(raw, base_dir), v.ledger_url(MeteringConfig.ledger, base_dir)),
        ledger_password=inline_or_file(m, "ledger_password", v.non_empty, base_dir, None),
        operator_key=_operator_key(m, base_dir),
        settle_every=m.get("settle_every", v.duration, 30.0),
        hold_margin=m.get("hold_margin", v.duration, MeteringConfig.hold_margin),
        ledger_pool=m.get("ledger_pool", v.integer(1, 1000), MeteringConfig.ledger_pool),
        x402_key=inline_or_file(m, "x402_key", v.private_key, base_dir, None),
    )
    m.done()
    return metering


def _operator_key(m: Node, base_dir: Path) -> str | None:
    """`operator_key`, `operator_key_file` or `operator_keystore` (+ its password file): at most one."""
    key = inline_or_file(m, "operator_key", v.private_key, base_dir, None)
    stored = keystore_key(m, "operator_keystore", base_dir)
    # Why refuse two sources: which key burns would be a guess (and a key holds BURNER_ROLE).
    if m.value.get("operator_keystore") and (m.value.get("operator_key") or m.value.get("operator_key_file")):
        m.problems.append(f"{m.path}: exactly one of operator_key, operator_key_file, operator_keystore")
        return None
    return key if key is not None else stored
