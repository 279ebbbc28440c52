"""Config loading: env substitution, typed values, and every problem reported with its path."""

from __future__ import annotations

import pytest

from gateway.config.load import ConfigError, load_config, parse_config
from gateway.dev.process import REPO
from gateway.auth.issuer import generate_signing_key


ADDR = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"


def minimal(**service_overrides) -> dict:
    service = {"upstream": "http://127.0.0.1:9000"} | service_overrides
    return {"base_domain": "proxy.localhost", "services": {"elvis": service}}


def problems_of(data: dict, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, environ or {})
    return exc.value.problems


def test_minimal_config_has_documented_defaults():
    config = parse_config(minimal(), {})
    service = config.services["elvis"]
    assert service.timeout == 60.0
    assert service.upstream_auth.type == "none"
    assert service.max_body == 10 * 1024 * 1024
    assert config.public_scheme == "https"
    assert config.tokens.issuers == () and config.tokens.own is None


def test_missing_env_variable_is_reported_with_its_path():
    data = minimal(upstream_auth={"type": "bearer", "token": "${SECRET}"})
    assert "services.elvis.upstream_auth.token: environment variable SECRET is not set" in problems_of(data)


def test_env_default_and_value():
    data = minimal(upstream="${UP:-http://127.0.0.1:9001}", upstream_auth={"type": "bearer", "token": "${SECRET}"})
    config = parse_config(data, {"SECRET": "s3cret"})
    assert config.services["elvis"].upstream == "http://127.0.0.1:9001"
    assert config.services["elvis"].upstream_auth.header_value == "Bearer s3cret"
    assert "s3cret" not in repr(config.services["elvis"].upstream_auth)  # secrets stay out of reprs


def test_durations_sizes_and_addresses_are_typed():
    data = minimal(timeout="500ms", max_body="1MiB", owner=ADDR[2:].upper())
    data["chains"] = {"local": {"chain_id": 31337, "rpc_urls": ["http://127.0.0.1:8545"], "timeout": "2s"}}
    config = parse_config(data, {})
    service = config.services["elvis"]
    assert service.timeout == 0.5 and service.max_body == 1024 * 1024
    assert service.owner == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert config.chains["local"].timeout == 2.0


def test_every_problem_is_reported_at_once_with_its_path():
    data = minimal(
        timeout="soon",
        owner="0x123",
        protected_endpoints=["POST /query", {"endpoint": "POST /ask", "credits": -1}, "FETCH /x", "GET /(unclosed"],
        plan={"chain": "nowhere", "standard": "erc1155", "contract": "not-an-address", "token_id": 1},
        colour="blue",
    )
    data["listen"] = "nonsense"
    problems = problems_of(data)
    expected = [
        "listen: not HOST:PORT",
        "services.elvis.timeout: not a duration",
        "services.elvis.owner: not an address",
        "services.elvis.plan.contract: not an address",
        "services.elvis.plan.chain: no chain named 'nowhere'",
        "services.elvis.protected_endpoints[1].credits: must be >= 0",
        "services.elvis.protected_endpoints[2]: unknown HTTP method(s) FETCH",
        "services.elvis.protected_endpoints[3]: invalid regular expression",
        "services.elvis.colour: unknown key",
        "tokens: protected endpoints need at least one issuer",
    ]
    for fragment in expected:
        assert any(p.startswith(fragment) for p in problems), (fragment, problems)
    assert len(problems) == len(expected), problems


def test_protected_endpoints_require_a_plan():
    data = minimal(protected_endpoints=["POST /query"])
    data["tokens"] = {"issuers": [{"issuer": "x", "secret": "k" * 32, "algorithms": ["HS256"]}]}
    assert problems_of(data) == ["services.elvis.plan: required when protected_endpoints are listed"]


@pytest.mark.parametrize(
    "issuer, fragment",
    [
        ({"issuer": "a", "secret": "short", "algorithms": ["HS256"]}, "secret: must be at least 32 bytes"),
        ({"issuer": "a", "secret": "k" * 32, "algorithms": ["HS256", "ES256"]}, "allows exactly [HS256]"),
        ({"issuer": "a", "jwks_url": "https://a/jwks", "algorithms": ["HS256"]}, "HS256 needs a `secret`"),
        ({"issuer": "a", "algorithms": ["ES256"]}, "exactly one of jwks_url"),
        ({"issuer": "a", "jwks_url": "https://a/j", "algorithms": ["none"]}, "must be one of"),
    ],
)
def test_issuer_rules(issuer, fragment):
    data = minimal()
    data["tokens"] = {"issuers": [issuer]}
    assert any(fragment in p for p in problems_of(data)), problems_of(data)


def test_duplicate_host_labels_are_refused():
    data = minimal(hosts=["shared.example.com"])
    data["services"]["other"] = {"upstream": "http://127.0.0.1:9001", "hosts": ["shared.example.com"]}
    assert any("'shared.example.com' is also used by service 'elvis'" in p for p in problems_of(data))


def test_did_gets_its_base36_label():
    did = "did:nv:27ca72cfc79dccf35e4e54a54f0ed3e3b04873ce682fd5bf351fe9aa377d68c4"
    config = parse_config(minimal(did=did), {})
    assert config.services["elvis"].did_label == "zparolnv3lqwtjk26xfkgustpbbk9gz9so4x30zfe5v8x8wqs"


def test_rules_compile_once_with_params_and_prices():
    data = minimal(
        protected_endpoints=[{"endpoint": "POST /summarize/:song", "credits": {"header": "X-C", "min": 1, "max": 10}}],
        plan={"chain": "local", "contract": ADDR, "token_id": 1},
    )
    data["chains"] = {"local": {"chain_id": 1, "rpc_urls": ["http://127.0.0.1:8545"]}}
    data["tokens"] = {"issuers": [{"issuer": "x", "secret": "k" * 32, "algorithms": ["HS256"]}]}
    rule = parse_config(data, {}).services["elvis"].protected_endpoints[0]
    assert rule.matches("POST", "/summarize/love-me-tender") and not rule.matches("POST", "/summarize/a/b")
    assert (rule.price.header, rule.price.min, rule.price.max, rule.price.reserve) == ("X-C", 1, 10, 10)


def test_example_config_is_valid(tmp_path):
    key = tmp_path / "key.pem"
    generate_signing_key(key, "ES256")
    env = {"GATEWAY_SIGNING_KEY_FILE": str(key), "ELVIS_UPSTREAM_TOKEN": "secret"}
    config = load_config(REPO / "config" / "gateway.yaml", env)
    assert config.services["elvis"].plan.token_id == 1
