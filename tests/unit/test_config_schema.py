"""The config's JSON Schema (`gateway config-schema`) kept honest against the loader.

Every key the loader reads appears in the schema and every key of the schema is read by the
loader (the loader's reads are recorded while it parses configs that open every section); the
example config and the test configs validate against it with `jsonschema` (Draft 2020-12).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from jsonschema import Draft202012Validator

from gateway.auth.issuer import generate_signing_key
from gateway.config.load import parse_config
from gateway.config.nodes import Node
from gateway.config.schema import config_schema
from gateway.config.services import DYNAMIC_PRICE_KEYS, TOOL_PRICE_KEYS
from gateway.config.x402 import EXTRA_KEYS as X402_EXTRA_KEYS
from gateway.dev.process import REPO
from tests.support.stack import base_config

ADDR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
SCHEMA = config_schema()


def every_section(key_file: str) -> dict:
    """A valid config that opens every section and each kind of upstream credential and price."""
    plan = {"chain": "local", "standard": "erc1155", "contract": ADDR, "token_id": 1, "credits": 1,
            "checkout_url": "https://example.com/buy"}
    return {
        "listen": "127.0.0.1:8080", "admin_listen": "127.0.0.1:9090", "workers": 2, "public_scheme": "http",
        "base_domain": "proxy.localhost", "max_body": "1MiB", "shutdown_grace": "30s",
        "upstream_connections": 100, "trusted_proxies": ["10.0.0.0/8"], "pid_file": "/tmp/gateway.pid",
        "plan_cache": {"ttl": "10s", "negative_ttl": "2s", "stale_if_error": "0s", "size": 10},
        "connections": {"header_timeout": "10s", "keepalive_timeout": "15s", "max_per_worker": 10, "admin_max": 2},
        "log": {"level": "info", "format": "json"},
        "chains": {"local": {"chain_id": 31337, "rpc_urls": ["http://127.0.0.1:8545"], "timeout": "2s"}},
        "tokens": {
            "issuers": [{"issuer": "https://idp.test", "algorithms": ["HS256"], "secret": "k" * 32}],
            "own": {"issuer": "https://gw.test", "signing_key_file": key_file, "ttl": "1d",
                    "previous_key_files": [key_file]},
            "leeway": "30s", "cache_size": 10, "nonce_ttl": "5m", "revocation_refresh": "5s", "signin_rate": "30/1m",
        },
        "services": {
            "elvis": {
                "upstream": "http://127.0.0.1:9000", "upstream_auth": {"type": "bearer", "token": "t"},
                "timeout": "60s", "did": "did:nv:" + "ab" * 32, "hosts": ["elvis.example.com"], "owner": ADDR,
                "open_endpoints": ["GET /health"],
                "protected_endpoints": ["POST /query", {"endpoint": "POST /ask", "credits": 2, "x402": "0.05"},
                                        {"endpoint": "POST /sum", "credits": {"header": "X-C", "min": 1, "max": 9}}],
                "plan": plan, "max_body": 1000,
                "mcp": {"path": "/mcp", "tools": {"search": 2, "summarize": {"credits": 5}},
                        "default_tool_credits": 1, "max_batch": 10},
                "cors": {"origins": ["https://app.example.com"], "allow_headers": ["X-A"],
                         "expose_headers": ["X-B"], "max_age": "10m"},
                "x402": {"network": "eip155:31337", "asset": ADDR, "pay_to": ADDR, "price": "0.01", "decimals": 6,
                         "extra": {"name": "USD Coin", "version": "2"}, "max_timeout": "60s",
                         "facilitator_url": "https://facilitator.example.com"},
            },
            "basic": {"upstream": "http://127.0.0.1:9001",
                      "upstream_auth": {"type": "basic", "username": "u", "password": "p"}},
            "header": {"upstream": "http://127.0.0.1:9002",
                       "upstream_auth": {"type": "header", "name": "X-Key", "value": "v"}},
        },
        "metering": {"ledger": "sqlite:///ledger.db", "operator_key": "0x" + "11" * 32, "settle_every": "30s",
                     "hold_margin": "60s"},
        "oauth": {"enabled": True, "access_token_ttl": "1h", "refresh_token_ttl": "30d", "registration": True,
                  "client_metadata_documents": True, "metadata_private_addresses": False,
                  "clients": [{"client_id": "gpt", "secret": "s" * 32, "name": "GPT",
                               "redirect_uris": ["https://chat.openai.com/aip/g-1/oauth/callback"]}]},
    }


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("schema") / "own.pem"
    generate_signing_key(path, "ES256")
    return str(path)


def generic(path: str) -> str:
    """`services.elvis.protected_endpoints[2].credits` -> `services.*.protected_endpoints[].credits`."""
    parts = re.sub(r"\[\d+\]", "[]", path).split(".")
    if parts[0] in ("services", "chains") and len(parts) > 1:
        parts[1] = "*"
    return ".".join(parts)


def loader_keys(data: dict, monkeypatch) -> set[str]:
    """Every key the loader reads (present or not) while it parses `data`."""
    read: set[str] = set()
    get, child = Node.get, Node.child

    def recording_get(self, key, *args, **kwargs):
        read.add(generic(self.at(key)))
        return get(self, key, *args, **kwargs)

    def recording_child(self, key, *args, **kwargs):
        read.add(generic(self.at(key)))
        return child(self, key, *args, **kwargs)

    monkeypatch.setattr(Node, "get", recording_get)
    monkeypatch.setattr(Node, "child", recording_child)
    parse_config(data, {})
    monkeypatch.undo()
    # Two small mappings are read by value parsers, not through a Node: their declared keys.
    read |= {f"services.*.protected_endpoints[].credits.{k}" for k in DYNAMIC_PRICE_KEYS}
    read |= {f"services.*.mcp.tools.*.{k}" for k in TOOL_PRICE_KEYS}
    read |= {f"services.*.x402.extra.{k}" for k in X402_EXTRA_KEYS}
    return read


def schema_keys(node: Any, path: str = "") -> Iterator[str]:
    """Every named key of the schema, as a generic path; `*` for maps of any key, `[]` for list items."""
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        yield from schema_keys(SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]], path)
    for key, sub in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        yield here
        yield from schema_keys(sub, here)
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_keys(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from schema_keys(node["items"], f"{path}[]")
    for branch in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
        yield from schema_keys(branch, path)


def test_the_schema_is_a_valid_draft_2020_12_schema():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_key_the_loader_reads_is_in_the_schema_and_back(key_file, monkeypatch):
    loader, schema = loader_keys(every_section(key_file), monkeypatch), set(schema_keys(SCHEMA))
    assert loader - schema == set(), "read by the loader, missing from gateway/config/schema.py"
    assert schema - loader == set(), "in the schema, never read by the loader"


def validate(data: dict) -> None:
    errors = sorted(Draft202012Validator(SCHEMA).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_the_example_config_validates_as_written():
    # As written: `${VAR:-default}` strings stand where numbers and choices will be.
    validate(yaml.safe_load((REPO / "config" / "gateway.yaml").read_text()))


@pytest.mark.parametrize("changes", [
    {},
    {"mcp": {"path": "/mcp", "tools": {"search": 2, "summarize": {"credits": 5}}, "default_tool_credits": 1}},
    {"cors": {"origins": ["https://app.example.com"], "max_age": "1m"}},
])
def test_the_test_configs_validate(key_file, changes):
    validate(base_config(None, None, Path(key_file), **changes))
    validate(every_section(key_file))


@pytest.mark.parametrize("change, where", [
    ({"colour": "blue"}, ""),                                                  # unknown key
    ({"workers": "many"}, "workers"),
    ({"metering": {"ledger": "redis://localhost:6379/0"}}, "metering.ledger"),
    ({"services": {"Bad_Id": {"upstream": "http://x"}}}, "services"),
    ({"log": {"level": "loud"}}, "log.level"),
])
def test_the_schema_refuses_what_the_loader_refuses(key_file, change, where):
    data = every_section(key_file) | change
    errors = list(Draft202012Validator(SCHEMA).iter_errors(data))
    assert errors and any(".".join(map(str, e.path)) == where for e in errors), [e.message for e in errors]
