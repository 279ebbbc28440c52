"""Attacks a gateway must refuse, end to end (real gateway, real chain, real plugin)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.auth.issuer import load_private_key
from tests.support.stack import OWNER, SUBSCRIBER

pytestmark = pytest.mark.asyncio
QUERY = {"queries": [{"query": "love"}]}


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(**extra) -> dict:
    now = int(time.time())
    return {"iss": "https://gateway.test", "sub": SUBSCRIBER, "aud": ["elvis"], "iat": now, "exp": now + 600} | extra


async def status_and_code(resp) -> tuple[int, str | None]:
    body = await resp.json(content_type=None)
    return resp.status, body.get("code") if isinstance(body, dict) else None


async def upstream_saw(gateway, plugin) -> list[dict]:
    async with gateway.session.get(f"{plugin.url}/debug/requests",
                                   headers={"Authorization": f"Bearer {plugin.secret}"}) as resp:
        return await resp.json()


async def test_expired_token_is_refused(gateway):
    token = gateway.sign(claims(exp=int(time.time()) - 60))
    async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
        assert await status_and_code(resp) == (401, "invalid_token")


async def test_alg_none_token_is_refused(gateway):
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
        assert await status_and_code(resp) == (401, "invalid_token")


async def test_hs256_token_signed_with_the_issuers_public_key_is_refused(gateway, signing_key):
    public_pem = load_private_key(signing_key).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": gateway.issuer.kid}
    import hashlib
    import hmac

    signing_input = f"{b64(header)}.{b64(claims())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
        assert await status_and_code(resp) == (401, "invalid_token")


async def test_token_signed_by_an_unknown_key_with_an_embedded_jwk_is_refused(gateway, tmp_path):
    from gateway.auth.issuer import generate_signing_key

    generate_signing_key(tmp_path / "attacker.pem", "ES256")
    attacker = load_private_key(tmp_path / "attacker.pem")
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    token = jwt.encode(claims(), attacker, algorithm="ES256",
                       headers={"kid": gateway.issuer.kid, "jwk": jwk, "jku": "http://127.0.0.1:1/jwks"})
    async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
        assert await status_and_code(resp) == (401, "invalid_token")


@pytest.mark.parametrize("path", [
    "/.well-known/../query",
    "/.well-known/%2e%2e/query",
    "/.well-known/%2E%2E/query",
    "/.well-known/..%2Fquery",
    "/.well-known%2F..%2Fquery",
    "/.well-known/./../query",
    "/health/../query",
])
async def test_paths_that_climb_from_an_open_endpoint_never_reach_a_protected_one_for_free(gateway, plugin, path):
    async with gateway.request("POST", path, json=QUERY) as resp:
        status, code = await status_and_code(resp)
    # Either refused as ambiguous (400) or recognised as the protected /query (401 without a token).
    assert (status, code) in {(400, "bad_request"), (401, "missing_token")}
    assert not any(r["path"] == "/query" for r in await upstream_saw(gateway, plugin))


async def test_spoofed_gateway_headers_never_reach_the_upstream(gateway, plugin):
    spoof = {"X-Gateway-Subscriber": OWNER, "X-Gateway-Service": "admin"}
    async with gateway.request("GET", "/health", headers=spoof) as resp:
        assert resp.status == 200
    async with gateway.request("POST", "/query", json=QUERY, headers=spoof, token=gateway.token(SUBSCRIBER)) as resp:
        assert (await resp.json())["subscriber"] == SUBSCRIBER
    seen = {r["path"]: r["headers"] for r in await upstream_saw(gateway, plugin)}
    health = {k.lower(): v for k, v in seen["/health"].items()}
    query = {k.lower(): v for k, v in seen["/query"].items()}
    assert "x-gateway-subscriber" not in health and "x-gateway-service" not in health
    assert query["x-gateway-subscriber"] == SUBSCRIBER and query["x-gateway-service"] == "elvis"


async def test_subscriber_token_never_reaches_the_upstream_and_the_owner_secret_does(gateway, plugin):
    token = gateway.token(SUBSCRIBER)
    async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
        assert resp.status == 200
    seen = await upstream_saw(gateway, plugin)
    assert token not in json.dumps(seen)
    query = next(r for r in seen if r["path"] == "/query")
    auth = [v for k, v in query["headers"].items() if k.lower() == "authorization"]
    assert auth == [f"Bearer {plugin.secret}"]


async def test_access_log_never_contains_the_token_or_the_secret(gateway, plugin):
    from structlog.testing import capture_logs

    token = gateway.token(SUBSCRIBER)
    with capture_logs() as logs:
        async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
            assert resp.status == 200
        async with gateway.request("POST", "/query", json=QUERY, token=token + "x") as resp:
            assert resp.status == 401
    lines = [entry for entry in logs if entry.get("event") == "request"]
    assert [(e["status"], e["decision"], e["subscriber"]) for e in lines] == [
        (200, "protected", SUBSCRIBER), (401, "protected", None)]
    assert lines[0]["rule"] == "POST /query" and lines[0]["upstream_status"] == 200 and lines[0]["credits"] == 1
    text = json.dumps(logs)
    assert token not in text and plugin.secret not in text
