"""The JSON Schema (Draft 2020-12) of `gateway.yaml`, for editors: `gateway config-schema` prints it.

It describes the file as written, before `${VAR}` substitution: every scalar may also be a string
holding `${VAR}` or `${VAR:-default}`. It is hand-written beside the loader (which is code, not
declarations) but built from the loader's own patterns and choices where they exist, and
`tests/unit/test_config_schema.py` keeps the two honest: every key the loader reads is in the schema
and every key of the schema is read by the loader. The loader stays the judge: it also checks
what a schema cannot say (cross-field rules, files, addresses' checksums).
"""

from __future__ import annotations

from typing import Any

from gateway.config import values as v
from gateway.config.load import ALGORITHMS
from gateway.config.model import McpConfig
from gateway.config.services import DYNAMIC_PRICE_KEYS, TOOL_PRICE_KEYS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ENV = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
       "description": "${VAR} or ${VAR:-default}, substituted from the environment when the file is loaded"}


def _env_or(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"anyOf": [schema, {"$ref": "#/$defs/env"}]}
    if description:
        out["description"] = description
    return out


def _anchored(pattern: str) -> str:
    return f"^\\s*(?:{pattern})\\s*$"


def _integer(minimum: int | None = None, maximum: int | None = None, description: str | None = None) -> dict:
    number: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        number["minimum"] = minimum
    if maximum is not None:
        number["maximum"] = maximum
    digits = {"type": "string", "pattern": r"^\s*\d+\s*$"}  # `${VAR}` substitution always yields text
    out: dict[str, Any] = {"anyOf": [number, digits, {"$ref": "#/$defs/env"}]}
    if description:
        out["description"] = description
    return out


def _string(description: str | None = None, pattern: str | None = None) -> dict:
    out: dict[str, Any] = {"type": "string"}
    if pattern:
        out = _env_or({"type": "string", "pattern": _anchored(pattern)})
    if description:
        out["description"] = description
    return out


def _choice(*options: str, description: str | None = None) -> dict:
    return _env_or({"enum": list(options)}, description)


def _object(properties: dict[str, Any], required: tuple[str, ...] = (), description: str | None = None) -> dict:
    """A mapping of known keys; an optional key may be left empty (null or ""), as the loader allows."""
    optional = {key: _may_be_unset(prop) for key, prop in properties.items() if key not in required}
    # Why additionalProperties false: the loader reports every unknown key (a typo is a problem).
    out: dict[str, Any] = {"type": "object", "properties": properties | optional, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def _may_be_unset(prop: dict) -> dict:
    bare = {k: val for k, val in prop.items() if k != "description"}
    out: dict[str, Any] = {"anyOf": [bare, {"$ref": "#/$defs/unset"}]}
    if "description" in prop:
        out["description"] = prop["description"]
    return out


def _list(items: dict, min_items: int = 0, description: str | None = None) -> dict:
    out: dict[str, Any] = {"type": "array", "items": items}
    if min_items:
        out["minItems"] = min_items
    if description:
        out["description"] = description
    return out


DURATION = {"$ref": "#/$defs/duration"}
SIZE = {"$ref": "#/$defs/size"}
HTTP_URL = _string("an http(s) URL", r"https?://[^\s/?#]+[^\s]*")
DOMAIN = _string("a host name", r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
HEADER_NAME = _string("an HTTP header name", v._TOKEN_CHARS.pattern)
LISTEN = _string("HOST:PORT or [IPv6]:PORT", r"\[[0-9a-fA-F:.]+\]:\d+|[^:\[\]]+:\d+")
ADDRESS = _string("an Ethereum address (0x + 40 hex digits, any case)", v._HEX40.pattern)
SECRET_FILE = _string("a file holding the key without `_file` (instead of it): not readable by every user")


X402_PRICE = {"anyOf": [_string("a price in tokens such as \"0.01\"", r"[0-9]+(\.[0-9]+)?"), {"type": "number"}]}


def _endpoint_rules(with_price: bool) -> dict:
    rule = {"type": "string", "minLength": 1, "description": "[METHOD[,METHOD...]] PATTERN, e.g. `POST /ask/:id`"}
    if not with_price:
        return _list(rule)
    dynamic = _object(dict(zip(DYNAMIC_PRICE_KEYS, (HEADER_NAME, _integer(0), _integer(0)))), ("max",),
                      "dynamic price read from a response header, reserved at max")
    priced = _object({"endpoint": rule, "credits": {"anyOf": [_integer(0), dynamic]}, "x402": X402_PRICE},
                     ("endpoint",))
    return _list({"anyOf": [rule, priced]})


def _service() -> dict:
    tool_price = _object(dict(zip(TOOL_PRICE_KEYS, (_integer(0), X402_PRICE))), (),
                         "credits per call, and the x402 price per call (in tokens) that also sells it")
    tool_price["minProperties"] = 1
    return _object({
        "upstream": _string("the service's URL: scheme://host[:port][/base]", r"https?://\S+"),
        "upstream_auth": _object({
            "type": _choice("none", "bearer", "basic", "header"),
            "token": _string("bearer: the token"), "username": _string("basic"), "password": _string("basic"),
            "name": HEADER_NAME, "value": _string("header: its value"),
            "token_file": SECRET_FILE, "password_file": SECRET_FILE, "value_file": SECRET_FILE,
        }, ("type",), "the owner's credential the gateway sends in place of the client's"),
        "timeout": DURATION,
        "did": _string("did:nv:<64 hex>; <base36 of it>.<base_domain> also reaches the service",
                       r"did:nv:[0-9a-fA-F]{64}"),
        "hosts": _list(DOMAIN, description="more host names that reach this service"),
        "owner": ADDRESS,
        "open_endpoints": _endpoint_rules(with_price=False),
        "protected_endpoints": _endpoint_rules(with_price=True),
        "plan": _object({
            "chain": _string("a name under `chains`"),
            "standard": _choice("erc1155", "erc721"),
            "contract": ADDRESS,
            "token_id": _integer(0, description="erc1155 only"),
            "credits": _integer(0, description="default price of a protected call"),
            "checkout_url": HTTP_URL,
        }, ("chain", "contract")),
        "max_body": SIZE,
        "mcp": _object({
            "path": _string("a literal path such as /mcp"),
            "tools": {"type": "object", "additionalProperties": {"anyOf": [_integer(0), tool_price]},
                      "description": "tool name -> credits per call, or {credits, x402}"},
            "default_tool_credits": _integer(0),
            "max_batch": _integer(1, 10_000, f"JSON-RPC messages per POST (default {McpConfig.max_batch})"),
        }),
        "x402": _object({
            "network": _string("CAIP-2 eip155:<chain id>", r"eip155:[1-9][0-9]*"), "asset": ADDRESS,
            "pay_to": ADDRESS, "price": X402_PRICE, "decimals": _integer(0, 36),
            "extra": _object({"name": _string(), "version": _string()}, (), "the token's EIP-712 domain"),
            "max_timeout": DURATION, "facilitator_url": HTTP_URL,
        }, ("network", "asset", "pay_to"), "per-call payments (x402 `exact`, EIP-3009 tokens)"),
        "cors": _object({
            "origins": _list(_string("scheme://host[:port] or *"), min_items=1),
            "allow_headers": _list(HEADER_NAME), "expose_headers": _list(HEADER_NAME), "max_age": DURATION,
        }, ("origins",)),
    }, ("upstream",))


def _tokens() -> dict:
    issuer = _object({
        "issuer": _string("the `iss` claim"),
        "algorithms": _list(_choice(*ALGORITHMS), min_items=1),
        "jwks_url": HTTP_URL, "jwks_file": _string("a JWKS file"), "public_key_file": _string("a PEM public key"),
        "secret": _string("HS256 only, 32+ bytes"),
        "secret_file": _string("a file holding the secret (32+ bytes once a trailing newline is stripped)"),
    }, ("issuer",), "exactly one of jwks_url, jwks_file, public_key_file, secret, secret_file")
    own = _object({
        "issuer": _string(), "signing_key_file": _string("PEM: EC P-256 (ES256) or Ed25519 (EdDSA)"),
        "ttl": DURATION, "previous_key_files": _list(_string(), description="still verify (key rotation)"),
    }, ("issuer", "signing_key_file"))
    rate = {"anyOf": [{"const": False}, _string("N/period such as 30/1m, or off", r"off|\d+/" + v._DURATION.pattern)]}
    return _object({
        "issuers": _list(issuer), "own": own, "leeway": DURATION, "cache_size": _integer(0),
        "nonce_ttl": DURATION, "revocation_refresh": DURATION, "signin_rate": rate,
    })


def _oauth() -> dict:
    flag = _env_or({"type": "boolean"})
    client = _object({
        "client_id": _string("printable, no spaces, no '://'"),
        "secret": _string("32+ bytes (prefer secret_file)"), "secret_file": SECRET_FILE,
        "redirect_uris": _list(_string("https://..., http://127.0.0.1..., or an app's own scheme"), min_items=1),
        "name": _string("shown on the consent page"),
        "require_pkce": _env_or({"type": "boolean"}, "false only for clients that cannot send PKCE (GPT Actions)"),
    }, ("client_id", "redirect_uris"), "a confidential client (GPT Actions): exactly one of secret, secret_file")
    return _object({
        "enabled": flag, "access_token_ttl": DURATION, "refresh_token_ttl": DURATION, "registration": flag,
        "client_metadata_documents": flag, "metadata_private_addresses": flag, "clients": _list(client),
    }, description="the OAuth 2.1 authorization server (needs tokens.own)")


def config_schema() -> dict[str, Any]:
    """The schema as a JSON-ready dict."""
    return {
        "$schema": DRAFT,
        "title": "gateway.yaml",
        "description": "Payment-plan gateway config. `gateway check-config` is the full check.",
        "type": "object",
        "additionalProperties": False,
        "required": ["base_domain", "services"],
        "$defs": {
            "env": ENV,
            "unset": {"enum": [None, ""], "description": "left unset: the default applies"},
            "duration": _string("500ms, 30s, 5m, 1h, 30d", v._DURATION.pattern),
            "size": {"anyOf": [{"type": "integer", "minimum": 0},
                               _string("bytes, or 512KiB, 10MiB, 1GB", r"\d+\s*(?:[KkMmGg][Ii]?[Bb]|[Bb])?")]},
        },
        "properties": {
            "listen": LISTEN,
            "admin_listen": LISTEN,
            "workers": _integer(1, 256, "worker processes (default: the CPUs this process may use)"),
            "public_scheme": _choice("http", "https"),
            "base_domain": DOMAIN,
            "max_body": SIZE,
            "plan_cache": _object({"ttl": DURATION, "negative_ttl": DURATION, "stale_if_error": DURATION,
                                   "size": _integer(1)}),
            "shutdown_grace": DURATION,
            "upstream_connections": _integer(1),
            "trusted_proxies": _list(_string("an IP address or network")),
            "pid_file": _string(),
            "connections": _object({"header_timeout": DURATION, "keepalive_timeout": DURATION,
                                    "max_per_worker": _integer(1), "admin_max": _integer(1)}),
            "log": _object({"level": _choice("debug", "info", "warning", "error"),
                            "format": _choice("auto", "json", "console")}),
            "chains": {"type": "object", "additionalProperties": _object({
                "chain_id": _integer(1), "rpc_urls": _list(HTTP_URL, min_items=1), "timeout": DURATION,
            }, ("chain_id", "rpc_urls"))},
            "tokens": _tokens(),
            "oauth": _oauth(),
            "services": {"type": "object", "minProperties": 1, "additionalProperties": _service(),
                         "propertyNames": {"pattern": f"^{v.LABEL.pattern}$"}},
            "metering": _object({
                "ledger": _string("sqlite:///PATH (relative to this file), sqlite:////ABSOLUTE, or "
                                  "postgresql://USER@HOST:PORT/DB (no password in it)", r"^(sqlite:///.+|postgres(ql)?://.+)$"),
                "ledger_password": _string("PostgreSQL's password (prefer ledger_password_file, PGPASSWORD or PGPASSFILE)"),
                "ledger_password_file": _string("a file holding ledger_password (instead of it)"),
                "operator_key": _string("the burner's private key (0x + 64 hex)", v._HEX64.pattern),
                "operator_key_file": _string("a file holding operator_key (instead of it)"),
                "operator_keystore": _string("an encrypted eth-keyfile JSON holding the operator key (instead of it)"),
                "operator_keystore_password_file": _string("the keystore's password, in a file"),
                "settle_every": DURATION,
                "hold_margin": DURATION,
                "ledger_pool": _integer(1, 1000),
                "x402_key": _string("the key that submits x402 transfers (default: operator_key)", v._HEX64.pattern),
                "x402_key_file": _string("a file holding x402_key (instead of it)"),
            }),
        },
    }
