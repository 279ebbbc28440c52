"""Typed, frozen configuration.

These dataclasses are what the rest of the gateway sees: built once by
`gateway.config.load.load_config` (which validates everything and reports all
problems at once) and never mutated afterwards. Addresses are checksummed,
durations are seconds, endpoint patterns are compiled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping

DEFAULT_MAX_BODY = 10 * 1024 * 1024
DEFAULT_PRICE_HEADER = "X-Credits-Consumed"


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ChainConfig:
    name: str
    chain_id: int
    rpc_urls: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class IssuerConfig:
    """An external issuer whose JWTs are accepted. Exactly one key source is set."""

    issuer: str
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    jwks_file: Path | None = None
    public_key_file: Path | None = None
    secret: str | None = field(default=None, repr=False)  # HS256 only, 32+ bytes


@dataclass(frozen=True)
class OwnIssuerConfig:
    """The gateway's own issuer: `token issue` and sign-in tokens.

    `signing_key_file` signs; `previous_key_files` still verify (key rotation) until removed.
    """

    issuer: str
    signing_key_file: Path
    ttl: float
    previous_key_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class TokensConfig:
    issuers: tuple[IssuerConfig, ...]
    own: OwnIssuerConfig | None
    leeway: float
    cache_size: int = 10_000
    nonce_ttl: float = 300.0             # sign-in nonces expire after this long
    revocation_refresh: float = 5.0      # a revocation reaches every replica within this delay
    # Sign-in requests (GET /.gateway/nonce, POST /.gateway/login) per client address and worker:
    # (count, per seconds), a token bucket of `count`; None: not limited (`signin_rate: off`).
    signin_rate: tuple[int, float] | None = (30, 60.0)


@dataclass(frozen=True)
class UpstreamAuth:
    """The owner's credential that the gateway puts in place of the client's."""

    type: Literal["none", "bearer", "basic", "header"]
    header_name: str | None = None
    header_value: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Price:
    """What a call costs: a fixed number of credits, or read from a response header."""

    fixed: int | None = None
    header: str | None = None
    min: int = 0
    max: int = 0

    @property
    def is_dynamic(self) -> bool:
        return self.header is not None

    @property
    def reserve(self) -> int:
        """Credits to hold before forwarding: the fixed price or the dynamic maximum."""
        return self.max if self.is_dynamic else int(self.fixed or 0)


@dataclass(frozen=True)
class EndpointRule:
    source: str                           # the rule as written in the config (for logs)
    methods: frozenset[str] | None        # None: any method
    pattern: re.Pattern[str]              # matched with fullmatch on the normalized path
    price: Price | None = None            # None: the plan's default price
    x402: Decimal | None = None           # per-call x402 price in tokens (None: the service's x402 price)

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.pattern.fullmatch(path) is not None


@dataclass(frozen=True)
class PlanConfig:
    chain: str
    standard: Literal["erc1155", "erc721"]
    contract: str                         # checksummed
    token_id: int | None                  # erc1155 only
    credits: int                          # default price of a protected call
    checkout_url: str | None = None


@dataclass(frozen=True)
class X402Config:
    """Per-call payments with x402's `exact` scheme (EIP-3009 `transferWithAuthorization`), a price
    in an ERC-20 token, paid to `pay_to`: settled by the gateway itself with the operator key
    (on the chain named `chain`), or by a remote facilitator when `facilitator_url` is set."""

    network: str                          # CAIP-2: eip155:<chain id>
    chain_id: int
    chain: str | None                     # the name under `chains` with that id (self-facilitated RPC)
    asset: str                            # checksummed token contract
    pay_to: str                           # checksummed
    price: Decimal | None                 # per call, in tokens (e.g. 0.01); None: only rules' own prices
    decimals: int = 6
    name: str = "USD Coin"                # the token's EIP-712 domain name and version
    version: str = "2"
    max_timeout: int | None = None        # seconds a payment must stay valid (None: the call's timeout + 30 s)
    facilitator_url: str | None = None    # None: self-facilitated

    def atomic(self, price: Decimal) -> int:
        """A price in tokens as the token's smallest units."""
        return int(price.scaleb(self.decimals))


@dataclass(frozen=True)
class McpConfig:
    """An MCP server behind the gateway: JSON-RPC `tools/call` requests on `path` are priced by tool."""

    path: str                             # e.g. /mcp (a literal path)
    rule: EndpointRule                    # matches exactly `path`, any method (for classification and logs)
    tools: Mapping[str, int]              # tool name -> credits per call
    default_tool_credits: int             # a tool not listed in `tools`
    max_batch: int = 100                  # JSON-RPC messages in one POST; more is 400 before any pricing
    # tool name -> its x402 price per call, in tokens (a tool not listed: the service's `x402.price`)
    tool_x402: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class CorsConfig:
    """Cross-origin calls from browsers: the gateway answers preflights and adds the CORS headers."""

    origins: tuple[str, ...]              # exact origins (scheme://host[:port]), or ("*",)
    allow_headers: tuple[str, ...] = ()   # request headers allowed besides the defaults
    expose_headers: tuple[str, ...] = ()  # response headers exposed besides the defaults
    max_age: float = 600.0                # how long a browser may cache a preflight answer


@dataclass(frozen=True)
class ServiceConfig:
    id: str
    upstream: str                         # scheme://host[:port][/base], no trailing slash
    upstream_auth: UpstreamAuth
    timeout: float
    did: str | None = None
    did_label: str | None = None          # base36 form of the DID's number
    hosts: tuple[str, ...] = ()
    owner: str | None = None              # checksummed
    open_endpoints: tuple[EndpointRule, ...] = ()
    protected_endpoints: tuple[EndpointRule, ...] = ()
    plan: PlanConfig | None = None
    max_body: int = DEFAULT_MAX_BODY
    mcp: McpConfig | None = None          # an MCP server (Streamable HTTP) priced per tool
    cors: CorsConfig | None = None        # browsers on these origins may call the service
    x402: X402Config | None = None        # protected calls may also be paid per call (x402)


@dataclass(frozen=True)
class PlanCacheConfig:
    ttl: float = 10.0                     # positive answers
    negative_ttl: float = 2.0             # balances that cover nothing
    stale_if_error: float = 0.0           # serve a recent positive answer when no RPC answers
    size: int = 100_000


@dataclass(frozen=True)
class ConnectionsConfig:
    """Client connections, per worker process (`connections:`): slow and idle clients are cut off."""

    header_timeout: float = 10.0          # a request head must be complete this long after it began
    keepalive_timeout: float = 15.0       # an idle kept-alive connection is closed after this long
    max_per_worker: int = 10_000          # open public connections per worker; above it, closed at once
    admin_max: int = 64                   # open admin connections (a budget of its own)


@dataclass(frozen=True)
class MeteringConfig:
    """Where charges are kept (also the sign-in state) and how they are burned on chain."""

    ledger: str = "sqlite:///var/lib/gateway/ledger.db"  # or postgresql://USER@HOST:PORT/DB (replicas)
    ledger_password: str | None = field(default=None, repr=False)  # PostgreSQL's; else libpq's environment
    operator_key: str | None = field(default=None, repr=False)
    settle_every: float = 30.0
    hold_margin: float = 60.0             # a credit hold lives the service's timeout + this, renewed while in flight
    ledger_pool: int = 10                 # PostgreSQL: pooled connections per worker (SQLite: one thread)
    x402_key: str | None = field(default=None, repr=False)  # submits x402 transfers; None: operator_key


@dataclass(frozen=True)
class OAuthClientConfig:
    """A confidential OAuth client declared by the operator (GPT Actions): its secret and redirect URIs."""

    client_id: str
    secret: str = field(repr=False)
    redirect_uris: tuple[str, ...] = ()
    name: str | None = None
    require_pkce: bool = True             # false only for a client that cannot send it (GPT Actions)


@dataclass(frozen=True)
class OAuthConfig:
    """The OAuth 2.1 authorization server (`gateway.oauth`), served when `tokens.own` is set."""

    enabled: bool = True
    access_token_ttl: float = 3600.0          # OAuth access tokens are short-lived; refresh tokens renew them
    refresh_token_ttl: float = 30 * 86400.0   # each rotation starts a new period
    registration: bool = True                 # RFC 7591 dynamic client registration (public clients)
    client_metadata_documents: bool = True    # HTTPS client_id URLs (Client ID Metadata Documents)
    metadata_private_addresses: bool = False  # may such a URL resolve to a loopback/private address
    clients: tuple[OAuthClientConfig, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    listen: ListenAddress
    admin_listen: ListenAddress | None
    workers: int
    public_scheme: Literal["http", "https"]
    base_domain: str
    chains: Mapping[str, ChainConfig]
    tokens: TokensConfig
    services: Mapping[str, ServiceConfig]
    plan_cache: PlanCacheConfig
    metering: MeteringConfig
    max_body: int = DEFAULT_MAX_BODY
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()  # their X-Forwarded-Proto is believed
    shutdown_grace: float = 30.0          # on SIGTERM, calls in flight (streams too) get this long
    upstream_connections: int = 10_000    # per worker: open upstream connections (streams hold one each)
    pid_file: Path | None = None          # written by `serve`, read by `gateway reload`
    connections: ConnectionsConfig = field(default_factory=ConnectionsConfig)
    oauth: OAuthConfig = field(default_factory=OAuthConfig)
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    source: Path | None = None

    def public_url(self, service: ServiceConfig) -> str:
        """The URL clients use for a service (its id label under base_domain)."""
        port = "" if self.listen.port in (80, 443) or self.public_scheme == "https" else f":{self.listen.port}"
        return f"{self.public_scheme}://{service.id}.{self.base_domain}{port}"
