"""gateway.auth.tokens and gateway.auth.issuer: what is accepted, what is refused (and how), key sources,
JWKS fetching against a real loopback HTTP server, the verified-token cache, key rotation of the
own issuer, and revocation (gateway.auth.revocation on a real SQLite file)."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import aiohttp
import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config.model import IssuerConfig, OwnIssuerConfig, ServiceConfig, TokensConfig, UpstreamAuth
from gateway.ledger.database import SqliteDatabase
from gateway.auth.issuer import (
    OwnIssuer,
    check_signing_key,
    generate_signing_key,
    jwk_thumbprint,
    load_private_key,
    public_key_to_jwk,
)
from gateway.http.problems import Problem, bearer_challenge
from gateway.auth.revocation import RevocationList, RevocationsUnavailable, revoke
from gateway.auth.state import SqliteAuthState, auth_state
from gateway.http.refusals import problem_for
from gateway.auth.jwks import JWKS_REFETCH_INTERVAL
from gateway.auth.tokens import Subscriber, TokenRejected, TokenVerifier

ISS = "https://auth.example.com"
OWN_ISS = "https://gateway.example.com"
SUB = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
SUB_CHECKSUMMED = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
NOW = 1_800_000_000.0
LEEWAY = 30.0
SERVICE = ServiceConfig(
    id="elvis", upstream="http://127.0.0.1:9", upstream_auth=UpstreamAuth(type="none"), timeout=60.0)
OTHER = ServiceConfig(
    id="other", upstream="http://127.0.0.1:9", upstream_auth=UpstreamAuth(type="none"), timeout=60.0)
PUBLIC_URL = "https://elvis.proxy.example.com"
SECRET = "s" * 40
ALGORITHMS = ["ES256", "ES256K", "EdDSA", "RS256"]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def private_key(alg: str, n: int = 0):
    """A private key for `alg`; `n` tells apart several keys of one kind (cached: RSA is slow)."""
    return _private_key(alg, n)


@functools.lru_cache(maxsize=None)
def _private_key(alg: str, n: int):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES256K":
        return ec.generate_private_key(ec.SECP256K1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise AssertionError(alg)


def jwk(alg: str, n: int = 0, kid: str | None = "k1") -> dict:
    data = public_key_to_jwk(private_key(alg, n).public_key())
    return {**data, "kid": kid} if kid is not None else data


def write_private_pem(path: Path, key) -> Path:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def public_pem(alg: str, n: int = 0) -> bytes:
    return private_key(alg, n).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(**overrides) -> dict:
    base = {"iss": ISS, "sub": SUB, "aud": ["elvis"], "iat": int(NOW), "nbf": int(NOW),
            "exp": int(NOW) + 3600, "jti": "token-1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(alg: str = "ES256", n: int = 0, kid: str | None = "k1", headers: dict | None = None, **overrides) -> str:
    extra = dict(headers or {})
    if kid is not None:
        extra["kid"] = kid
    return jwt.encode(claims(**overrides), private_key(alg, n), algorithm=alg, headers=extra)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict, payload: dict, sign=lambda signing_input: b"") -> str:
    """A JWS built by hand, for tokens PyJWT refuses to produce."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def jwks_file_issuer(tmp_path: Path, keys: list[dict], algorithms=tuple(ALGORITHMS), issuer=ISS) -> IssuerConfig:
    path = tmp_path / f"jwks-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps({"keys": keys}))
    return IssuerConfig(issuer=issuer, algorithms=tuple(algorithms), jwks_file=path)


def verifier(*issuers: IssuerConfig, own: OwnIssuerConfig | None = None, clock=None, http=None,
             cache_size: int = 100) -> TokenVerifier:
    config = TokensConfig(issuers=tuple(issuers), own=own, leeway=LEEWAY, cache_size=cache_size)
    return TokenVerifier(config, http=http, clock=clock or Clock())


async def accept(v: TokenVerifier, tok: str, public_url: str = PUBLIC_URL) -> Subscriber:
    return await v.verify(f"Bearer {tok}", SERVICE, public_url)


async def refuse(v: TokenVerifier, authorization: str | None, code: str = "invalid_token", status: int = 401,
                 service: ServiceConfig = SERVICE) -> Problem:
    """Assert a refusal and everything every refusal must satisfy (challenge, no token echoed)."""
    with pytest.raises(TokenRejected) as info:
        await v.verify(authorization, service, PUBLIC_URL)
    problem = problem_for(info.value)  # what the http layer answers (gateway.http.refusals)
    assert (problem.status, problem.code) == (status, code), problem.detail
    if code == "invalid_token":
        assert problem.headers["WWW-Authenticate"] == bearer_challenge(service.id, "invalid_token", problem.detail)
    elif code == "missing_token":
        assert problem.headers["WWW-Authenticate"] == f'Bearer realm="{service.id}"'
    credential = (authorization or "").partition(" ")[2].strip()
    # Neither the token nor any part of it (shorter strings could occur in a detail by coincidence).
    for part in [credential, *credential.split(".")]:
        for text in (problem.detail, str(problem), *problem.headers.values()):
            assert len(part) <= 16 or part not in text
    return problem


# --- valid tokens, every algorithm and key source ---------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_valid_token_verifies_with_jwks_file_kid(tmp_path, alg):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256", 1, kid="other"), jwk(alg, kid="k1")]))
    subscriber = await accept(v, token(alg, kid="k1"))
    assert subscriber == Subscriber(address=SUB_CHECKSUMMED, issuer=ISS, expires_at=NOW + 3600, token_id="token-1",
                                  issued_at=NOW)


@pytest.mark.asyncio
@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_valid_token_verifies_with_public_key_file_ignoring_kid(tmp_path, alg):
    (tmp_path / "pub.pem").write_bytes(public_pem(alg))
    v = verifier(IssuerConfig(issuer=ISS, algorithms=(alg,), public_key_file=tmp_path / "pub.pem"))
    assert (await accept(v, token(alg, kid="whatever"))).address == SUB_CHECKSUMMED
    assert (await accept(v, token(alg, kid=None, jti="no-kid"))).token_id == "no-kid"


@pytest.mark.asyncio
async def test_bearer_scheme_is_case_insensitive(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert (await v.verify(f"{scheme} {token()}", SERVICE, PUBLIC_URL)).address == SUB_CHECKSUMMED


@pytest.mark.asyncio
async def test_hs256_issuer_with_long_secret_accepted(tmp_path):
    v = verifier(IssuerConfig(issuer=ISS, algorithms=("HS256",), secret=SECRET))
    tok = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert (await accept(v, tok)).address == SUB_CHECKSUMMED
    await refuse(v, "Bearer " + jwt.encode(claims(), "x" * 40, algorithm="HS256"))  # another secret


def test_hs256_issuer_with_short_secret_is_a_config_error():
    with pytest.raises(ValueError, match="32 bytes"):
        verifier(IssuerConfig(issuer=ISS, algorithms=("HS256",), secret="short"))


# --- missing or malformed credentials -----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer    ", "   "])
async def test_missing_token_is_401_missing_token_with_plain_challenge(tmp_path, authorization):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, authorization, code="missing_token")


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["Basic", "Token", "JWT", "Bearer:"])
async def test_wrong_scheme_is_missing_token(tmp_path, scheme):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, f"{scheme} {token()}", code="missing_token")


@pytest.mark.asyncio
@pytest.mark.parametrize("garbage", ["not-a-jwt", "a.b.c", "....", "eyJhbGciOiJFUzI1NiJ9.e30", "x y z", "é.é.é",
                                     "e30.e30.\udcff", "e30\x00.e30.e30", "e30.e30.e30\n",
                                     "e30.e30.e30.e30.e30", base64.b64encode(b"user:pass").decode()])
async def test_garbage_token_is_invalid_token(tmp_path, garbage):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, f"Bearer {garbage}")


# --- algorithm attacks ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_refused(tmp_path, alg):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")], algorithms=("ES256", "none")))
    problem = await refuse(v, "Bearer " + craft({"alg": alg, "typ": "JWT"}, claims()))
    assert "unsigned" in problem.detail


@pytest.mark.asyncio
async def test_hs256_signed_with_the_issuers_public_key_pem_refused(tmp_path):
    pem = public_pem("ES256")
    (tmp_path / "pub.pem").write_bytes(pem)
    # HS256 in the allowlist on purpose: an asymmetric issuer must refuse it anyway.
    issuers = [IssuerConfig(issuer=ISS, algorithms=("ES256", "HS256"), public_key_file=tmp_path / "pub.pem"),
               jwks_file_issuer(tmp_path, [jwk("ES256")], algorithms=("ES256", "HS256"), issuer="https://jwks.example")]
    for issuer in issuers:
        v = verifier(issuer)
        forged = craft({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(iss=issuer.issuer),
                       lambda data: hmac.new(pem, data, hashlib.sha256).digest())
        problem = await refuse(v, f"Bearer {forged}")
        assert "algorithm not allowed" in problem.detail


@pytest.mark.asyncio
async def test_algorithm_not_in_allowlist_refused(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256"), jwk("RS256", kid="rsa")], algorithms=("ES256",)))
    problem = await refuse(v, "Bearer " + token("RS256", kid="rsa"))
    assert problem.detail == f"algorithm not allowed for issuer {ISS}"


@pytest.mark.asyncio
async def test_key_used_only_with_the_algorithm_it_fits(tmp_path):
    # kid "k1" is a P-256 key; a secp256k1 signature naming it must not find a key.
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, "Bearer " + token("ES256K", kid="k1"))


@pytest.mark.asyncio
async def test_jwk_alg_member_restricts_the_key(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [{**jwk("RS256"), "alg": "PS256"}], algorithms=("RS256", "PS256")))
    await refuse(v, "Bearer " + token("RS256"))


@pytest.mark.asyncio
async def test_critical_header_extension_refused(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, "Bearer " + token(headers={"crit": ["exp"], "exp": 1}))


# --- issuer and claims ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("iss", ["https://evil.example.com", ISS + "/", ISS.upper(), None])
async def test_unknown_or_missing_issuer_refused(tmp_path, iss):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    problem = await refuse(v, "Bearer " + token(iss=iss))
    assert "evil" not in problem.detail


@pytest.mark.asyncio
async def test_expired_token_refused(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    problem = await refuse(v, "Bearer " + token(exp=int(NOW - LEEWAY - 1)))
    assert problem.detail == "token expired"


@pytest.mark.asyncio
@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_not_yet_valid_token_refused(tmp_path, claim):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    problem = await refuse(v, "Bearer " + token(**{claim: int(NOW + LEEWAY + 5)}))
    assert claim in problem.detail


@pytest.mark.asyncio
async def test_times_within_leeway_accepted(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    late = int(NOW + LEEWAY - 5)
    assert await accept(v, token(exp=int(NOW - LEEWAY + 5), nbf=late, iat=late))


@pytest.mark.asyncio
@pytest.mark.parametrize("value", ["1800003600", True, None])
async def test_exp_must_be_a_number(tmp_path, value):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, "Bearer " + token(exp=value))


@pytest.mark.asyncio
@pytest.mark.parametrize("claim", ["sub", "exp", "aud"])
async def test_missing_required_claim_refused(tmp_path, claim):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    payload = {k: v for k, v in claims().items() if k != claim}
    tok = jwt.encode(payload, private_key("ES256"), algorithm="ES256", headers={"kid": "k1"})
    problem = await refuse(v, f"Bearer {tok}")
    assert claim in problem.detail


@pytest.mark.asyncio
@pytest.mark.parametrize("sub", ["alice", "0x1234", SUB[2:], SUB + "0", SUB + "\n", "0x" + "g" * 40, 42,
                                 ["0x" + "1" * 40]])
async def test_sub_must_be_an_ethereum_address(tmp_path, sub):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, "Bearer " + token(sub=sub))


@pytest.mark.asyncio
async def test_sub_in_any_case_is_checksummed(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    assert (await accept(v, token(sub=SUB.upper().replace("0X", "0x")))).address == SUB_CHECKSUMMED


# --- audience -------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("aud", ["other", ["other", "https://other.proxy.example.com"], PUBLIC_URL + ".evil"])
async def test_token_for_another_service_is_403_wrong_audience(tmp_path, aud):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    problem = await refuse(v, "Bearer " + token(aud=aud), code="wrong_audience", status=403)
    assert "WWW-Authenticate" not in problem.headers


@pytest.mark.asyncio
@pytest.mark.parametrize("aud", [PUBLIC_URL, [PUBLIC_URL], ["other", PUBLIC_URL + "/"], "elvis"])
async def test_audience_as_service_id_or_public_url_accepted(tmp_path, aud):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    assert await accept(v, token(aud=aud))


@pytest.mark.asyncio
async def test_signature_and_expiry_checked_before_audience(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, "Bearer " + token(aud="other", exp=int(NOW - 3600)))
    await refuse(v, "Bearer " + token(n=1, aud="other"))  # signed by a key the issuer does not have
    await refuse(v, "Bearer " + craft({"alg": "none"}, claims(aud="other")))


@pytest.mark.asyncio
@pytest.mark.parametrize("aud", [[], [1, 2], {"elvis": True}])
async def test_malformed_audience_is_invalid_token(tmp_path, aud):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    await refuse(v, "Bearer " + token(aud=aud))


# --- key-source headers are ignored ------------------------------------------------------------


@pytest_asyncio.fixture
async def attacker_server():
    """An HTTP server an attacker controls, serving the attacker's key; counts every request."""
    hits = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"keys": [jwk("ES256", 9, kid="k1")]})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield server, hits
    await server.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("header", ["jku", "x5u"])
async def test_jku_and_x5u_headers_are_ignored(tmp_path, attacker_server, header):
    server, hits = attacker_server
    async with aiohttp.ClientSession() as http:
        v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]), http=http)
        forged = token(n=9, kid="k1", headers={header: str(server.make_url("/jwks.json"))})
        problem = await refuse(v, f"Bearer {forged}")
    assert problem.detail == "signature verification failed"
    assert hits == []


@pytest.mark.asyncio
@pytest.mark.parametrize("kid", ["k1", None])
async def test_embedded_jwk_header_is_ignored(tmp_path, kid):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256", kid=None)]))
    forged = token(n=9, kid=kid, headers={"jwk": jwk("ES256", 9, kid=kid)})
    await refuse(v, f"Bearer {forged}")


# --- JWKS from a URL ------------------------------------------------------------------------------


class JwksServer:
    """A real JWKS endpoint on 127.0.0.1 whose keys can be rotated; counts requests."""

    def __init__(self) -> None:
        self.keys: list[dict] = [jwk("ES256", 0, kid="k1")]
        self.requests = 0
        self.status = 200
        self.gate: asyncio.Event | None = None  # when set, requests wait for it

    async def handler(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response({"keys": self.keys})


@pytest_asyncio.fixture
async def jwks():
    state = JwksServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", state.handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("/.well-known/jwks.json"))
    async with aiohttp.ClientSession() as http:
        state.http = http
        yield state
    await server.close()


def url_verifier(jwks: JwksServer, clock: Clock | None = None, cache_size: int = 100) -> TokenVerifier:
    issuer = IssuerConfig(issuer=ISS, algorithms=tuple(ALGORITHMS), jwks_url=jwks.url)
    return verifier(issuer, http=jwks.http, clock=clock, cache_size=cache_size)


@pytest.mark.asyncio
async def test_jwks_url_fetched_once_then_served_from_cache(jwks):
    v = url_verifier(jwks)
    assert jwks.requests == 0  # nothing fetched at construction
    for i in range(3):
        assert (await accept(v, token(kid="k1", jti=f"t{i}"))).token_id == f"t{i}"
    assert jwks.requests == 1


@pytest.mark.asyncio
async def test_jwks_rotation_new_kid_triggers_exactly_one_refetch(jwks):
    v = url_verifier(jwks)
    await accept(v, token(kid="k1"))
    jwks.keys = [jwk("ES256", 0, kid="k1"), jwk("EdDSA", 0, kid="k2")]
    assert await accept(v, token("EdDSA", kid="k2"))
    assert await accept(v, token("EdDSA", kid="k2", jti="again"))
    assert jwks.requests == 2


@pytest.mark.asyncio
async def test_unknown_kid_refetch_is_rate_limited_per_issuer(jwks):
    clock = Clock()
    v = url_verifier(jwks, clock=clock)
    await accept(v, token(kid="k1"))
    await refuse(v, "Bearer " + token(kid="nope-1"))
    assert jwks.requests == 2
    clock.now += JWKS_REFETCH_INTERVAL - 1
    await refuse(v, "Bearer " + token(kid="nope-2"))
    assert jwks.requests == 2  # within the interval: refused without asking
    clock.now += 2
    jwks.keys.append(jwk("ES256", 1, kid="k3"))
    assert await accept(v, token(n=1, kid="k3"))
    assert jwks.requests == 3


@pytest.mark.asyncio
async def test_concurrent_unknown_kids_cause_at_most_one_refetch(jwks):
    v = url_verifier(jwks)
    await accept(v, token(kid="k1"))
    jwks.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(accept(v, token(kid=f"unknown-{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    jwks.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TokenRejected) and problem_for(r).code == "invalid_token" for r in results)
    assert jwks.requests == 2


@pytest.mark.asyncio
async def test_concurrent_tokens_with_a_rotated_kid_share_one_refetch(jwks):
    v = url_verifier(jwks)
    await accept(v, token(kid="k1"))
    jwks.keys = [jwk("ES256", 1, kid="k2")]
    jwks.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(accept(v, token(n=1, kid="k2", jti=f"t{i}"))) for i in range(20)]
    for _ in range(500):  # until the refetch reaches the server (it is held there by the gate)
        if jwks.requests == 2:
            break
        await asyncio.sleep(0.01)
    assert jwks.requests == 2  # one refetch in flight, the others waiting on it
    jwks.gate.set()
    assert [s.token_id for s in await asyncio.gather(*tasks)] == [f"t{i}" for i in range(20)]
    assert jwks.requests == 2


@pytest.mark.asyncio
async def test_first_fetch_is_shared_by_concurrent_requests(jwks):
    v = url_verifier(jwks)
    results = await asyncio.gather(*(accept(v, token(kid="k1", jti=f"t{i}")) for i in range(10)))
    assert len(results) == 10 and jwks.requests == 1


@pytest.mark.asyncio
async def test_unreachable_jwks_refuses_and_backs_off(jwks):
    clock = Clock()
    v = url_verifier(jwks, clock=clock)
    jwks.status = 503
    await refuse(v, "Bearer " + token(kid="k1"))
    await refuse(v, "Bearer " + token(kid="k1", jti="2"))
    assert jwks.requests == 1  # a failed fetch is not retried by every request
    jwks.status = 200
    clock.now += JWKS_REFETCH_INTERVAL
    assert await accept(v, token(kid="k1", jti="3"))
    assert jwks.requests == 2


@pytest.mark.asyncio
async def test_jwks_keys_kept_when_a_refresh_fails(jwks):
    clock = Clock()
    v = url_verifier(jwks, clock=clock)
    await accept(v, token(kid="k1"))
    jwks.status = 500
    clock.now += 3600  # old enough to be refreshed; the refresh fails
    await accept(v, token(kid="k1", jti="later", exp=int(clock.now) + 60))
    assert jwks.requests == 2


@pytest.mark.asyncio
async def test_jwks_without_kids_uses_the_single_key_of_matching_type(jwks):
    jwks.keys = [jwk("ES256", kid=None), jwk("RS256", kid=None)]
    v = url_verifier(jwks)
    assert await accept(v, token("ES256", kid=None))
    assert await accept(v, token("RS256", kid=None))
    jwks.keys.append(jwk("ES256", 1, kid=None))
    v = url_verifier(jwks)
    problem = await refuse(v, "Bearer " + token("ES256", kid=None, jti="ambiguous"))
    assert "several keys" in problem.detail


def test_own_issuer_name_must_differ_from_external_issuers(tmp_path):
    path = write_private_pem(tmp_path / "k.pem", private_key("ES256"))
    with pytest.raises(ValueError, match="both"):
        verifier(jwks_file_issuer(tmp_path, [jwk("ES256")], issuer=OWN_ISS),
                 own=OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=path, ttl=60.0))


@pytest.mark.asyncio
async def test_verifier_without_a_session_makes_and_closes_its_own(jwks):
    v = verifier(IssuerConfig(issuer=ISS, algorithms=("ES256",), jwks_url=jwks.url))
    assert await accept(v, token(kid="k1"))
    await v.close()
    assert jwks.requests == 1


# --- verified-token cache -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_second_verify_of_same_token_does_no_crypto(tmp_path, monkeypatch):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    calls = []
    real_decode, real_verify = jwt.decode, jwt.api_jws.PyJWS._verify_signature
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append("decode") or real_decode(*a, **k))
    monkeypatch.setattr(jwt.api_jws.PyJWS, "_verify_signature",
                        lambda *a, **k: calls.append("verify") or real_verify(*a, **k))
    tok = token()
    first = await accept(v, tok)
    assert "verify" in calls
    calls.clear()
    assert await accept(v, tok) == first
    assert calls == []


@pytest.mark.asyncio
async def test_cached_token_refused_after_exp(tmp_path):
    clock = Clock()
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]), clock=clock)
    tok = token(exp=int(NOW) + 60)
    await accept(v, tok)
    clock.now = NOW + 60 + LEEWAY - 1
    await accept(v, tok)  # within the leeway, as a fresh verification would be
    clock.now = NOW + 60 + LEEWAY
    assert (await refuse(v, f"Bearer {tok}")).detail == "token expired"


@pytest.mark.asyncio
async def test_cache_is_per_service(tmp_path):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]))
    tok = token(aud="elvis")
    await accept(v, tok)
    await refuse(v, f"Bearer {tok}", code="wrong_audience", status=403, service=OTHER)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 1])
async def test_small_or_disabled_cache_still_verifies(tmp_path, size):
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]), cache_size=size)
    for i in range(3):
        for j in range(2):
            assert (await accept(v, token(jti=f"t{i}"))).token_id == f"t{i}"


# --- the own issuer ---------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["ES256", "EdDSA"])
async def test_own_issuer_issue_then_verify_round_trip(tmp_path, kind):
    path = tmp_path / "signing.pem"
    generate_signing_key(path, kind)
    own_config = OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=path, ttl=3600.0)
    clock = Clock()
    own = OwnIssuer(own_config, clock=clock)
    assert own.algorithm == kind
    tok = own.issue(SUB, ["elvis"])
    assert jwt.get_unverified_header(tok)["kid"] == own.kid
    v = verifier(jwks_file_issuer(tmp_path, [jwk("ES256")]), own=own_config, clock=clock)
    subscriber = await accept(v, tok)
    assert (subscriber.address, subscriber.issuer, subscriber.expires_at) == (SUB_CHECKSUMMED, OWN_ISS, NOW + 3600)
    assert len(subscriber.token_id) == 32
    assert (await accept(v, own.issue(SUB, [PUBLIC_URL], ttl=60, jti="mine"))).token_id == "mine"
    await refuse(v, "Bearer " + own.issue(SUB, ["other"]), code="wrong_audience", status=403)
    # The own issuer accepts only its own algorithm: an HS256 token naming it is refused.
    await refuse(v, "Bearer " + jwt.encode(claims(iss=OWN_ISS), SECRET, algorithm="HS256"))


def test_own_issuer_jwks_publishes_the_public_key(tmp_path):
    path = write_private_pem(tmp_path / "k.pem", private_key("ES256"))
    own = OwnIssuer(OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=path, ttl=60.0))
    (public,) = own.jwks()["keys"]
    assert public["kid"] == own.kid == jwk_thumbprint(public)
    assert (public["use"], public["alg"], public["crv"]) == ("sig", "ES256", "P-256")
    assert "d" not in public
    assert own.jwks() == {"keys": [public]}


def test_jwk_thumbprint_matches_rfc7638_example():
    example = {
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
             "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8K"
             "JZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_x"
             "BniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }
    assert jwk_thumbprint(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_own_issuer_refuses_bad_subjects_and_audiences(tmp_path):
    path = write_private_pem(tmp_path / "k.pem", private_key("EdDSA"))
    own = OwnIssuer(OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=path, ttl=60.0))
    with pytest.raises(ValueError, match="Ethereum address"):
        own.issue("alice", ["elvis"])
    with pytest.raises(ValueError, match="audience"):
        own.issue(SUB, [])
    with pytest.raises(ValueError, match="audience"):
        own.issue(SUB, "elvis")  # type: ignore[arg-type]


def test_generate_signing_key_is_private_and_never_overwrites(tmp_path):
    path = tmp_path / "signing.pem"
    generate_signing_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert isinstance(load_private_key(path), ec.EllipticCurvePrivateKey)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_signing_key(path, "EdDSA")
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="ES256, EdDSA"):
        generate_signing_key(tmp_path / "other.pem", "RS256")


def test_check_signing_key_explains_what_is_wrong(tmp_path):
    assert check_signing_key(write_private_pem(tmp_path / "p256.pem", private_key("ES256"))) is None
    assert check_signing_key(write_private_pem(tmp_path / "ed.pem", private_key("EdDSA"))) is None
    assert "P-256" in check_signing_key(write_private_pem(tmp_path / "k1.pem", private_key("ES256K")))
    assert "P-256" in check_signing_key(write_private_pem(tmp_path / "rsa.pem", private_key("RS256")))
    (tmp_path / "junk.pem").write_text("hello")
    assert "not a PEM private key" in check_signing_key(tmp_path / "junk.pem")
    assert "cannot read" in check_signing_key(tmp_path / "missing.pem")
    encrypted = private_key("ES256").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"))
    (tmp_path / "enc.pem").write_bytes(encrypted)
    assert "password-protected" in check_signing_key(tmp_path / "enc.pem")
    (tmp_path / "pub.pem").write_bytes(public_pem("ES256"))
    assert "not a PEM private key" in check_signing_key(tmp_path / "pub.pem")
    with pytest.raises(ValueError, match="P-256"):
        OwnIssuer(OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=tmp_path / "k1.pem", ttl=60.0))


# --- key rotation -----------------------------------------------------------------------------------


def test_own_issuer_signs_with_the_current_key_and_publishes_the_previous_ones(tmp_path):
    old = write_private_pem(tmp_path / "old.pem", private_key("ES256", 1))
    new = write_private_pem(tmp_path / "new.pem", private_key("EdDSA", 1))
    # The signing key repeated among the previous ones is published once.
    own = OwnIssuer(OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=new, ttl=60.0, previous_key_files=(old, new)))
    old_kid = jwk_thumbprint(public_key_to_jwk(private_key("ES256", 1).public_key()))
    assert [(k["kid"], k["alg"]) for k in own.jwks()["keys"]] == [(own.kid, "EdDSA"), (old_kid, "ES256")]
    assert jwt.get_unverified_header(own.issue(SUB, ["elvis"]))["kid"] == own.kid


@pytest.mark.asyncio
async def test_a_previous_key_verifies_only_while_it_is_listed(tmp_path):
    old = write_private_pem(tmp_path / "old.pem", private_key("ES256", 2))
    new = write_private_pem(tmp_path / "new.pem", private_key("ES256", 3))
    old_token = OwnIssuer(OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=old, ttl=60.0), clock=Clock()).issue(
        SUB, ["elvis"])
    listed = verifier(own=OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=new, ttl=60.0, previous_key_files=(old,)))
    assert (await accept(listed, old_token)).address == SUB_CHECKSUMMED
    # A token naming no kid is ambiguous once several keys verify: refused, never guessed.
    kidless = jwt.encode(claims(iss=OWN_ISS), private_key("ES256", 2), algorithm="ES256")
    await refuse(listed, f"Bearer {kidless}")
    removed = verifier(own=OwnIssuerConfig(issuer=OWN_ISS, signing_key_file=new, ttl=60.0))
    await refuse(removed, f"Bearer {old_token}")


# --- revocation -------------------------------------------------------------------------------------


class FakeRevocations:
    def __init__(self) -> None:
        self.jtis: set[str] = set()
        self.calls = 0

    async def is_revoked(self, subscriber: str, token_id: str | None, issued_at: float | None) -> bool:
        self.calls += 1
        return token_id in self.jtis


@pytest.mark.asyncio
async def test_revocation_is_checked_on_every_call_cache_hits_included(tmp_path):
    revocations = FakeRevocations()
    config = TokensConfig(issuers=(jwks_file_issuer(tmp_path, [jwk("ES256")]),), own=None, leeway=LEEWAY)
    v = TokenVerifier(config, clock=Clock(), revocations=revocations)
    tok = token(jti="t-1")
    await accept(v, tok)
    await accept(v, tok)  # from the cache
    assert revocations.calls == 2
    revocations.jtis.add("t-1")
    problem = await refuse(v, f"Bearer {tok}", code="token_revoked")
    assert 'error="invalid_token"' in problem.headers["WWW-Authenticate"]


@pytest_asyncio.fixture
async def auth_db(tmp_path):
    db = SqliteDatabase(tmp_path / "auth.db")
    state = SqliteAuthState(db)
    await state.open()
    reads = []
    real_run = db.run
    db.run = lambda fn: reads.append(1) or real_run(fn)  # count the revocation list's reads
    state.reads = reads
    yield state
    await db.close()


@pytest.mark.asyncio
async def test_revocation_list_reads_at_most_once_per_refresh_interval(auth_db):
    clock = Clock(0.0)
    revocations = RevocationList(auth_db, refresh=5.0, clock=clock)
    assert not await revocations.is_revoked(SUB, "j1", NOW)
    await revoke(auth_db, jti="j1")
    reads = len(auth_db.reads)
    clock.now = 4.9
    assert not await revocations.is_revoked(SUB, "j1", NOW)  # the old view, until the interval is over
    assert len(auth_db.reads) == reads
    clock.now = 5.0
    assert await revocations.is_revoked(SUB, "j1", NOW)
    clock.now = 10.0
    await revoke(auth_db, subscriber=SUB, now=NOW)
    reads = len(auth_db.reads)
    assert all(await asyncio.gather(*(revocations.is_revoked(SUB_CHECKSUMMED, None, NOW) for _ in range(20))))
    assert len(auth_db.reads) == reads + 1  # twenty stale checks, one shared read


@pytest.mark.asyncio
async def test_revoking_a_subscriber_revokes_its_tokens_issued_until_then(auth_db):
    revocations = RevocationList(auth_db, refresh=0.0)
    await revoke(auth_db, subscriber=SUB.upper().replace("0X", "0x"), now=NOW)
    assert await revocations.is_revoked(SUB_CHECKSUMMED, "a", NOW - 1)
    assert await revocations.is_revoked(SUB, "b", NOW)  # same second: counted as before
    assert await revocations.is_revoked(SUB, "c", None)  # no iat: cannot be shown to be newer
    assert not await revocations.is_revoked(SUB, "d", NOW + 1)  # signed in again afterwards
    assert not await revocations.is_revoked("0x" + "1" * 40, "e", NOW - 1)
    with pytest.raises(ValueError):
        await revoke(auth_db, jti="x", subscriber=SUB)


@pytest.mark.asyncio
async def test_revocation_list_fails_closed_when_it_cannot_read(tmp_path):
    db = SqliteDatabase(tmp_path / "empty.db")  # no auth tables
    try:
        with pytest.raises(RevocationsUnavailable) as raised:
            await RevocationList(auth_state(db), refresh=1.0).is_revoked(SUB, "j", NOW)
        refusal = problem_for(raised.value)  # what the http layer answers (gateway.http.refusals)
        assert (refusal.status, refusal.code) == (503, "revocations_unavailable")
    finally:
        await db.close()
