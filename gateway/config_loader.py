"""Load `gateway.yaml`: substitute `${VAR}`, validate everything, report every problem.

`load_config(path)` returns a frozen `GatewayConfig` or raises `ConfigError`
holding ALL problems found, each prefixed with its YAML path
(`services.elvis.plan.contract: not an address`), so an operator fixes a file
in one pass. Nothing here runs after start-up.
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from types import MappingProxyType
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

import yaml

from gateway import config_values as v
from gateway.config import (
    ChainConfig,
    CorsConfig,
    EndpointRule,
    GatewayConfig,
    IssuerConfig,
    McpConfig,
    MeteringConfig,
    OwnIssuerConfig,
    PlanCacheConfig,
    PlanConfig,
    Price,
    ServiceConfig,
    TokensConfig,
    UpstreamAuth,
    DEFAULT_MAX_BODY,
    DEFAULT_PRICE_HEADER,
)
from gateway.endpoint_rules import RuleError, compile_rule

T = TypeVar("T")
_MISSING: Any = object()
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ALGORITHMS = ("ES256K", "ES256", "EdDSA", "RS256", "HS256")


class ConfigError(Exception):
    """The config has problems; `problems` lists every one as 'path: message'."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Node:
    """A YAML mapping and its path; remembers read keys so unknown keys can be reported."""

    def __init__(self, value: Any, path: str, problems: list[str]) -> None:
        self.path, self.problems, self.read = path, problems, set()
        if isinstance(value, Mapping):
            self.value = value
        else:
            self.value = {}
            problems.append(f"{path or '(top level)'}: must be a mapping")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, parse: Callable[[Any], T], default: Any = _MISSING) -> T | None:
        """Parse `key`; a missing key is a problem unless a default is given."""
        self.read.add(key)
        raw = self.value.get(key)
        if raw is None or raw == "":  # `${VAR:-}` is how an optional value is left unset
            raw = None
        if raw is None:
            if default is _MISSING:
                self.problems.append(f"{self.at(key)}: required")
                return None
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            self.problems.append(f"{self.at(key)}: {exc}")
            return None

    def child(self, key: str, required: bool = False) -> "_Node | None":
        self.read.add(key)
        if self.value.get(key) is None:
            if required:
                self.problems.append(f"{self.at(key)}: required")
            return None
        return _Node(self.value[key], self.at(key), self.problems)

    def done(self) -> None:
        for key in self.value:
            if key not in self.read:
                self.problems.append(f"{self.at(str(key))}: unknown key")


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(data, environ if environ is not None else os.environ, base_dir=path.parent, source=path)


def parse_config(
    data: Any, environ: Mapping[str, str], base_dir: Path = Path("."), source: Path | None = None
) -> GatewayConfig:
    problems: list[str] = []
    data = _substitute(data, "", environ, problems)
    root = _Node(data, "", problems)
    listen = root.get("listen", v.listen_address, v.listen_address("0.0.0.0:8080"))
    cores = os.cpu_count() or 1
    config_kwargs = dict(
        listen=listen,
        admin_listen=root.get("admin_listen", v.listen_address, None),
        workers=root.get("workers", v.integer(1, 256), cores),
        public_scheme=root.get("public_scheme", v.choice("http", "https"), "https"),
        base_domain=root.get("base_domain", v.domain),
        max_body=root.get("max_body", v.size, DEFAULT_MAX_BODY),
        plan_cache=_plan_cache(root.child("plan_cache")),
        shutdown_grace=root.get("shutdown_grace", v.duration, 30.0),
        trusted_proxies=tuple(root.get("trusted_proxies", v.list_of(_network), ()) or ()),
        pid_file=root.get("pid_file", lambda raw: v.relative_path(raw, base_dir), None),
        **_log(root.child("log")),
    )
    chains = _chains(root.child("chains"), problems)
    tokens = _tokens(root.child("tokens"), base_dir, problems)
    services = _services(root.child("services", required=True), chains, config_kwargs["max_body"], problems)
    # Why: a protected endpoint nobody can get a token for is a misconfiguration, not a lock.
    if any(s.protected_endpoints or s.mcp for s in services.values()) and not (tokens.issuers or tokens.own):
        problems.append("tokens: protected endpoints need at least one issuer (tokens.issuers or tokens.own)")
    metering = _metering(root.child("metering"), base_dir)
    root.done()
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


def _log(node: _Node | None) -> dict:
    if node is None:
        return {}
    log = {"log_level": node.get("level", v.choice("debug", "info", "warning", "error"), "info"),
           "log_format": node.get("format", v.choice("auto", "json", "console"), "auto")}
    node.done()
    return log


def _plan_cache(node: _Node | None) -> PlanCacheConfig:
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


def _chains(node: _Node | None, problems: list[str]) -> dict[str, ChainConfig]:
    chains: dict[str, ChainConfig] = {}
    for name, raw in (node.value.items() if node else ()):
        c = _Node(raw, node.at(str(name)), problems)
        chains[str(name)] = ChainConfig(
            name=str(name),
            chain_id=c.get("chain_id", v.integer(1)),
            rpc_urls=tuple(c.get("rpc_urls", v.list_of(v.http_url, min_items=1)) or ()),
            timeout=c.get("timeout", v.duration, 2.0),
        )
        c.done()
    return chains


def _tokens(node: _Node | None, base_dir: Path, problems: list[str]) -> TokensConfig:
    if node is None:
        return TokensConfig(issuers=(), own=None, leeway=30.0)
    issuers = []
    for i, raw in enumerate(node.get("issuers", v.list_of(lambda x: x), []) or []):
        issuers.append(_issuer(_Node(raw, node.at(f"issuers[{i}]"), problems), base_dir))
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
    )
    node.done()
    return tokens


def _issuer(n: _Node, base_dir: Path) -> IssuerConfig:
    issuer = IssuerConfig(
        issuer=n.get("issuer", v.non_empty),
        algorithms=tuple(n.get("algorithms", v.list_of(v.choice(*ALGORITHMS), min_items=1), ()) or ()),
        jwks_url=n.get("jwks_url", v.http_url, None),
        jwks_file=n.get("jwks_file", v.existing_file(base_dir), None),
        public_key_file=n.get("public_key_file", v.existing_file(base_dir), None),
        secret=n.get("secret", v.non_empty, None),
    )
    sources = [k for k in ("jwks_url", "jwks_file", "public_key_file", "secret") if n.value.get(k) is not None]
    if len(sources) != 1:
        n.problems.append(f"{n.path}: exactly one of jwks_url, jwks_file, public_key_file, secret is required")
    # Why: mixing HMAC with public-key algorithms is the classic algorithm-confusion hole
    # (an attacker signs HS256 with the public key); a secret issuer is HS256 and nothing else.
    if issuer.secret is not None:
        if set(issuer.algorithms) != {"HS256"}:
            n.problems.append(f"{n.at('algorithms')}: an issuer with a secret allows exactly [HS256]")
        if len(issuer.secret.encode()) < 32:
            n.problems.append(f"{n.at('secret')}: must be at least 32 bytes")
    elif "HS256" in issuer.algorithms:
        n.problems.append(f"{n.at('algorithms')}: HS256 needs a `secret` (32+ bytes) and no public key")
    n.done()
    return issuer


def _services(
    node: _Node | None, chains: Mapping[str, ChainConfig], max_body: int | None, problems: list[str]
) -> dict[str, ServiceConfig]:
    from gateway.routing import did_label

    services: dict[str, ServiceConfig] = {}
    seen_hosts: dict[str, str] = {}
    for sid, raw in (node.value.items() if node else ()):
        sid = str(sid)
        s = _Node(raw, node.at(sid), problems)
        if not v.LABEL.fullmatch(sid):
            problems.append(f"{s.path}: service id must be a DNS label (a-z, 0-9, '-')")
        did = s.get("did", v.did, None)
        plan_node = s.child("plan")
        plan = _plan(plan_node, chains) if plan_node else None
        protected = _rules(s, "protected_endpoints", with_price=True)
        service = ServiceConfig(
            id=sid,
            did=did,
            did_label=did_label(did) if did else None,
            hosts=tuple(s.get("hosts", v.list_of(v.domain), ()) or ()),
            upstream=s.get("upstream", v.upstream_url),
            upstream_auth=_upstream_auth(s.child("upstream_auth")),
            timeout=s.get("timeout", v.duration, 60.0),
            owner=s.get("owner", v.address, None),
            open_endpoints=_rules(s, "open_endpoints", with_price=False),
            protected_endpoints=protected,
            plan=plan,
            max_body=s.get("max_body", v.size, max_body or DEFAULT_MAX_BODY),
            mcp=_mcp(s.child("mcp"), plan),
            cors=_cors(s.child("cors")),
        )
        # Why: a protected endpoint without a plan could never be paid for; refuse the config.
        if protected and plan_node is None:
            problems.append(f"{s.at('plan')}: required when protected_endpoints are listed")
        if service.mcp is not None and plan_node is None:
            problems.append(f"{s.at('plan')}: required when mcp is set (its calls are protected)")
        if service.mcp is not None and plan is not None and plan.standard == "erc721" and (
                service.mcp.tools or s.value["mcp"].get("default_tool_credits") is not None):
            problems.append(f"{s.at('mcp')}: an erc721 pass plan has no credits to price tools with")
        if plan is not None and plan.standard == "erc721" and any(r.price for r in protected):
            problems.append(f"{s.at('protected_endpoints')}: an erc721 pass plan has no credits to price")
        for host in (sid, service.did_label, *service.hosts):
            if host and host in seen_hosts:
                problems.append(f"{s.path}: host label {host!r} is also used by service {seen_hosts[host]!r}")
            elif host:
                seen_hosts[host] = sid
        s.done()
        services[sid] = service
    if node is not None and not services:
        problems.append("services: at least one service is required")
    return services


def _rules(s: _Node, key: str, with_price: bool) -> tuple[EndpointRule, ...]:
    rules = []
    for i, raw in enumerate(s.get(key, v.list_of(lambda x: x), []) or []):
        path = f"{s.at(key)}[{i}]"
        price = None
        if isinstance(raw, Mapping) and with_price:
            r = _Node(raw, path, s.problems)
            text = r.get("endpoint", v.non_empty)
            price = r.get("credits", _price, None)
            r.done()
        elif isinstance(raw, str):
            text = raw
        else:
            s.problems.append(f"{path}: must be a string" + (" or {endpoint, credits}" if with_price else ""))
            continue
        if text is None:
            continue
        try:
            rules.append(compile_rule(text, price))
        except RuleError as exc:
            s.problems.append(f"{path}: {exc}")
    return tuple(rules)


def _price(raw: Any) -> Price:
    if isinstance(raw, bool):
        raise ValueError("must be a number of credits or {header, min, max}")
    if isinstance(raw, int):
        if raw < 0:
            raise ValueError("must be >= 0")
        return Price(fixed=raw)
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"header", "min", "max"}
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        lo, hi = raw.get("min", 0), raw.get("max")
        if not isinstance(lo, int) or not isinstance(hi, int) or lo < 0 or hi < lo:
            raise ValueError("dynamic credits need integers 0 <= min <= max (max is required)")
        return Price(header=str(raw.get("header") or DEFAULT_PRICE_HEADER), min=lo, max=hi)
    raise ValueError("must be a number of credits or {header, min, max}")


_MCP_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+")


def _mcp(m: _Node | None, plan: PlanConfig | None) -> McpConfig | None:
    """`mcp: {path: /mcp, tools: {search: 2, summarize: {credits: 5}}, default_tool_credits: 1}`."""
    if m is None:
        return None
    path = m.get("path", _mcp_path, "/mcp")
    tools = m.get("tools", _tool_prices, {})
    default = m.get("default_tool_credits", v.integer(0), plan.credits if plan else 1)
    m.done()
    if path is None or tools is None or default is None:
        return None
    rule = EndpointRule(source=f"mcp {path}", methods=None, pattern=re.compile(re.escape(path)))
    return McpConfig(path=path, rule=rule, tools=MappingProxyType(tools), default_tool_credits=default)


def _mcp_path(raw: Any) -> str:
    path = v.non_empty(raw)
    # Why literal and normalized: the path is compared to the normalized request path as a string.
    if not _MCP_PATH.fullmatch(path) or any(seg in (".", "..") for seg in path.split("/")):
        raise ValueError(f"must be a literal path such as /mcp (got {path!r})")
    if path.startswith(("/.gateway/", "/.well-known/")):
        raise ValueError("must not be under /.gateway/ or /.well-known/")
    return path


def _tool_prices(raw: Any) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        raise ValueError("must map tool names to credits (search: 2, or summarize: {credits: 5})")
    prices = {}
    for name, price in raw.items():
        if isinstance(price, Mapping):
            if set(price) != {"credits"}:
                raise ValueError(f"tool {name!r}: only {{credits: N}} is allowed")
            price = price["credits"]
        try:
            prices[str(name)] = v.integer(0)(price)
        except ValueError as exc:
            raise ValueError(f"tool {name!r}: credits {exc}") from None
    return prices


def _cors(c: _Node | None) -> CorsConfig | None:
    if c is None:
        return None
    cors = CorsConfig(
        origins=tuple(c.get("origins", v.list_of(_origin, min_items=1)) or ()),
        allow_headers=tuple(c.get("allow_headers", v.list_of(v.header_name), ()) or ()),
        expose_headers=tuple(c.get("expose_headers", v.list_of(v.header_name), ()) or ()),
        max_age=c.get("max_age", v.duration, 600.0),
    )
    c.done()
    return cors


def _origin(raw: Any) -> str:
    text = v.non_empty(raw)
    if text == "*":
        return text
    parts = urlsplit(text)
    # Why exact origins only: browsers send exactly scheme://host[:port]; a path or a "null"
    # origin (sandboxed frames, files) would either never match or let any such page in.
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query \
            or parts.fragment or parts.username or text.endswith("/"):
        raise ValueError(f"not an origin like https://app.example.com (got {text!r})")
    return text.lower()


def _network(raw: Any) -> IPv4Network | IPv6Network:
    try:
        return ip_network(v.non_empty(raw), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or network (got {raw!r})") from None


def _plan(p: _Node, chains: Mapping[str, ChainConfig]) -> PlanConfig:
    standard = p.get("standard", v.choice("erc1155", "erc721"), "erc1155")
    chain = p.get("chain", v.non_empty)
    if chain is not None and chain not in chains:
        p.problems.append(f"{p.at('chain')}: no chain named {chain!r} under `chains`")
    token_id = p.get("token_id", v.integer(0, 2**256 - 1), None)
    if standard == "erc1155" and token_id is None and p.value.get("token_id") is None:
        p.problems.append(f"{p.at('token_id')}: required for an erc1155 plan")
    if standard == "erc721" and token_id is not None:
        p.problems.append(f"{p.at('token_id')}: an erc721 pass plan counts every token of the contract")
    plan = PlanConfig(
        chain=chain,
        standard=standard,
        contract=p.get("contract", v.address),
        token_id=token_id,
        credits=p.get("credits", v.integer(0), 1),
        checkout_url=p.get("checkout_url", v.http_url, None),
    )
    p.done()
    return plan


def _upstream_auth(a: _Node | None) -> UpstreamAuth:
    if a is None:
        return UpstreamAuth(type="none")
    kind = a.get("type", v.choice("none", "bearer", "basic", "header"))
    auth = UpstreamAuth(type="none")
    if kind == "bearer":
        auth = UpstreamAuth("bearer", "Authorization", f"Bearer {a.get('token', v.header_value)}")
    elif kind == "basic":
        import base64

        user, password = a.get("username", v.header_value), a.get("password", v.header_value)
        credential = base64.b64encode(f"{user}:{password}".encode()).decode()
        auth = UpstreamAuth("basic", "Authorization", f"Basic {credential}")
    elif kind == "header":
        auth = UpstreamAuth("header", a.get("name", v.header_name), a.get("value", v.header_value))
    a.done()
    return auth


def _metering(m: _Node | None, base_dir: Path) -> MeteringConfig:
    if m is None:
        return MeteringConfig(ledger=v.ledger_url(MeteringConfig.ledger, base_dir))
    metering = MeteringConfig(
        ledger=m.get("ledger", lambda raw: v.ledger_url(raw, base_dir), v.ledger_url(MeteringConfig.ledger, base_dir)),
        operator_key=m.get("operator_key", v.private_key, None),
        settle_every=m.get("settle_every", v.duration, 30.0),
    )
    m.done()
    return metering
