"""Config rules that only `gateway serve` used to meet, at start-up: now `check-config` refuses them too.

One test per former gap. Each shows both halves: the runtime part that refused the value at
start-up (router, ledger, settler, token verifier, listeners) still refuses it (a guard), and the
loader now reports it first, with its YAML path, among every other problem.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from eth_account import Account

from gateway.auth.tokens import TokenVerifier
from gateway.config.load import ConfigError, parse_config
from gateway.config.model import IssuerConfig, ListenAddress, TokensConfig
from gateway.config.values import did_label
from gateway.http.routing import ServiceRouter
from gateway.ledger.database import sqlite_path
from gateway.process.server import bind

DID = "did:nv:27ca72cfc79dccf35e4e54a54f0ed3e3b04873ce682fd5bf351fe9aa377d68c4"
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def two_services(**other) -> dict:
    return {"base_domain": "proxy.localhost",
            "services": {"api": {"upstream": "http://127.0.0.1:9000"},
                         "other": {"upstream": "http://127.0.0.1:9001"} | other}}


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, {})
    return exc.value.problems


def accepted_but(data: dict, **service_changes):
    """The config parsed without a rule, as serve used to get it: a valid one, then changed."""
    config = parse_config(data, {})
    services = {sid: dataclasses.replace(s, **service_changes.get(sid, {})) for sid, s in config.services.items()}
    return dataclasses.replace(config, services=services)


# --- (a) host names: what ServiceRouter refused at start-up --------------------------------------

def test_service_id_equal_to_another_services_hosts_entry_is_refused():
    config = accepted_but(two_services(), other={"hosts": ("api.proxy.localhost",)})
    with pytest.raises(ValueError, match="claimed by"):  # what serve did at start-up
        ServiceRouter(config.services.values(), config.base_domain)
    assert problems_of(two_services(hosts=["api.proxy.localhost"])) == [
        "services.other.hosts[0]: host 'api.proxy.localhost' is also used by service 'api'"]


def test_did_label_host_equal_to_another_services_hosts_entry_is_refused():
    data = two_services(hosts=[f"{did_label(DID)}.proxy.localhost"])
    data["services"]["api"]["did"] = DID
    assert problems_of(data) == [
        f"services.other.hosts[0]: host '{did_label(DID)}.proxy.localhost' is also used by service 'api'"]


def test_two_services_with_one_did_are_refused():
    data = two_services(did=DID)
    data["services"]["api"]["did"] = DID
    assert problems_of(data) == [
        f"services.other.did: host '{did_label(DID)}.proxy.localhost' is also used by service 'api'"]


@pytest.mark.parametrize("other_hosts", [["api"], ["api.example.com"], ["other.proxy.localhost"]])
def test_host_names_the_router_tells_apart_are_accepted(other_hosts):
    # A bare `api` or `api.example.com` is not `api.proxy.localhost`: the router serves both
    # services; a service naming its own host again is harmless. Labels are never compared alone.
    config = parse_config(two_services(hosts=other_hosts), {})
    router = ServiceRouter(config.services.values(), config.base_domain)
    assert router.resolve("api.proxy.localhost").id == "api"
    assert router.resolve(other_hosts[0]).id == "other"


# --- (b) the ledger URL: what sqlite_path refused at start-up ---------------------------------

@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://:pw@cache:6380/1", "unix:///run/redis.sock",
                                 "mysql://db/gateway", "ledger.db"])
def test_a_ledger_url_other_than_sqlite_or_postgresql_is_refused(url):
    with pytest.raises(ValueError):  # what serve did at start-up (gateway.app._open_database)
        sqlite_path(url)
    data = two_services() | {"metering": {"ledger": url}}
    [problem] = problems_of(data)
    assert problem.startswith("metering.ledger: must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB"), problem
    assert "pw" not in problem  # a URL's password is never repeated


@pytest.mark.parametrize("url", ["postgresql://gw@db.internal:5432/gateway", "postgres://gw@10.0.0.5/gateway"])
def test_a_postgresql_ledger_url_is_accepted(url):
    config = parse_config(two_services() | {"metering": {"ledger": url}}, {})
    assert config.metering.ledger == url


def test_a_password_inside_a_postgresql_url_is_refused_without_repeating_it():
    data = two_services() | {"metering": {"ledger": "postgresql://gw:s3cr3t-pw@db/gateway"}}
    [problem] = problems_of(data)
    assert "ledger_password_file" in problem and "s3cr3t" not in problem, problem


def test_the_ledger_password_comes_from_a_file(tmp_path):
    secret = tmp_path / "pg-password"
    secret.write_text("s3cr3t-pw\n")
    secret.chmod(0o600)
    data = two_services() | {"metering": {"ledger": "postgresql://gw@db/gateway", "ledger_password_file": str(secret)}}
    config = parse_config(data, {})
    assert config.metering.ledger_password == "s3cr3t-pw"
    assert "s3cr3t" not in repr(config.metering)


# --- (c) key material: what the settler and the token verifier refused at start-up ---------------

@pytest.mark.parametrize("number", [0, SECP256K1_ORDER, 2**256 - 1])
def test_an_operator_key_outside_the_curve_is_refused(number):
    key = f"0x{number:064x}"
    with pytest.raises(ValueError):  # what serve did at start-up (Settler -> eth_account)
        Account.from_key(key)
    data = two_services() | {"metering": {"operator_key": key}}
    assert problems_of(data) == ["metering.operator_key: not a valid secp256k1 private key "
                                 "(must be between 1 and the curve order - 1)"]


def test_an_operator_key_just_below_the_order_is_accepted():
    key = f"0x{SECP256K1_ORDER - 1:064x}"
    assert parse_config(two_services() | {"metering": {"operator_key": key}}, {}).metering.operator_key == key


def issuer_with(tmp_path, key: str, content: bytes) -> dict:
    path = tmp_path / "issuer-key"
    path.write_bytes(content)
    issuer = {"issuer": "https://idp.test", "algorithms": ["ES256"], key: str(path)}
    return two_services() | {"tokens": {"issuers": [issuer]}}


@pytest.mark.parametrize("key, content, message", [
    ("public_key_file", b"not a key", "not a PEM public key or certificate"),
    ("jwks_file", b"{not json", "Expecting property name"),
    ("jwks_file", b'{"keys": "none"}', 'not a JWKS: expected {"keys": [...]}'),
    ("jwks_file", b"[]", "not a JWKS"),
])
def test_an_issuer_key_file_that_does_not_load_is_refused(tmp_path, key, content, message):
    data = issuer_with(tmp_path, key, content)
    issuer = IssuerConfig(issuer="https://idp.test", algorithms=("ES256",), **{key: tmp_path / "issuer-key"})
    with pytest.raises(ValueError, match="issuer-key"):  # what serve did at start-up
        TokenVerifier(TokensConfig(issuers=(issuer,), own=None, leeway=30.0))
    [problem] = problems_of(data)
    assert problem.startswith(f"tokens.issuers[0].{key}: {tmp_path / 'issuer-key'}: "), problem
    assert message in problem, problem


@pytest.mark.parametrize("key", ["public_key_file", "jwks_file"])
def test_an_unreadable_issuer_key_file_is_refused(tmp_path, monkeypatch, key):
    data = issuer_with(tmp_path, key, b'{"keys": []}')
    unreadable, read_bytes = tmp_path / "issuer-key", Path.read_bytes

    def refuse(path: Path) -> bytes:  # chmod 0 is no test when the suite runs as root
        if path == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    [problem] = problems_of(data)
    assert problem == f"tokens.issuers[0].{key}: cannot read {unreadable}: Permission denied"


def test_valid_issuer_key_files_are_accepted(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert parse_config(issuer_with(tmp_path, "public_key_file", pem), {}).tokens.issuers[0].public_key_file
    assert parse_config(issuer_with(tmp_path, "jwks_file", b'{"keys": []}'), {}).tokens.issuers[0].jwks_file


# --- listeners: what bind refused at start-up ------------------------------------------------

def test_admin_listen_on_the_public_address_is_refused():
    sockets = bind(ListenAddress("127.0.0.1", 0))
    port = sockets[0].getsockname()[1]
    try:
        with pytest.raises(OSError):  # what serve did at start-up (cannot_listen, exit 1)
            bind(ListenAddress("127.0.0.1", port))
    finally:
        for sock in sockets:
            sock.close()
    data = two_services() | {"listen": "127.0.0.1:8080", "admin_listen": "127.0.0.1:8080"}
    assert problems_of(data) == ["admin_listen: 127.0.0.1:8080 is also bound by listen (127.0.0.1:8080); "
                                 "give it its own address or port"]


@pytest.mark.parametrize("listen, admin, refused", [
    ("0.0.0.0:8080", "127.0.0.1:8080", True),     # the wildcard holds every IPv4 address
    ("[::1]:8080", "[::]:8080", True),
    ("127.0.0.1:8080", "127.0.0.1:9090", False),
    ("127.0.0.1:0", "127.0.0.1:0", False),        # port 0: each gets its own free port
    ("0.0.0.0:8080", "[::1]:8080", False),        # another family (IPV6_V6ONLY)
    ("127.0.0.1:8080", "127.0.0.2:8080", False),
])
def test_admin_listen_overlap(listen, admin, refused):
    data = two_services() | {"listen": listen, "admin_listen": admin}
    if refused:
        assert [p.split(":")[0] for p in problems_of(data)] == ["admin_listen"]
    else:
        parse_config(data, {})
