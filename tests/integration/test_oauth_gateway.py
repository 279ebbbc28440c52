"""The OAuth 2.1 authorization server (issue 14) on the real gateway app, real chain and real
example plugin: discovery documents, dynamic registration, the consent bound to its request by a
Sign-In with Ethereum signature, codes and rotating refresh tokens, a confidential client (GPT
Actions style), revocation; and every hostile parameter of the issue's list gets the RFC error
and never a token."""

from __future__ import annotations

import base64
import ssl
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.app import RUNTIME
from gateway.auth.revocation import revoke
from gateway.auth.state import auth_state
from gateway.ledger.backends import open_database
from gateway.ledger.postgres import PostgresLedger
from tests.support.oauth import (REDIRECT, authorize, authorize_params, consent_message, consent_page, oauth_error,
                                 pkce, post_consent, register, self_signed_cert, token)
from tests.support.postgres import postgres, postgres_url  # noqa: F401 - fixtures
from tests.support.served import Served
from tests.support.signin import nonce_of, problem, sign
from tests.support.stack import BROKE, HOST, SUBSCRIBER, base_config

pytestmark = pytest.mark.asyncio
QUERY = {"queries": [{"query": "love"}]}
GPT_REDIRECT = "https://chat.openai.com/aip/g-test/oauth/callback"
GPT_SECRET = "gpt-actions-secret-0123456789abcdef"


def oauth_config(chain, plugin, signing_key, tmp_path=None, **oauth) -> dict:
    data = base_config(chain, plugin, signing_key)
    data["tokens"]["revocation_refresh"] = "0s"  # a revocation is seen by the very next check
    if tmp_path is not None:
        secret = tmp_path / "gpt-secret"
        secret.write_text(GPT_SECRET + "\n")
        secret.chmod(0o600)
        oauth.setdefault("clients", [
            # GPT Actions send no PKCE: exempt, as a confidential client whose code needs its secret.
            {"client_id": "gpt-actions", "secret_file": str(secret), "name": "My GPT", "redirect_uris": [GPT_REDIRECT],
             "require_pkce": False},
            {"client_id": "strict", "secret_file": str(secret), "redirect_uris": [GPT_REDIRECT]},
        ])
    data["oauth"] = {"access_token_ttl": "10m"} | oauth
    return data


@pytest_asyncio.fixture
async def gw(make_gateway, chain, plugin, signing_key, tmp_path):
    return await make_gateway(oauth_config(chain, plugin, signing_key, tmp_path))


async def code_for(gw, client_id: str, redirect: str = REDIRECT, address: str = SUBSCRIBER, **extra):
    verifier, challenge = pkce()
    answer = await authorize(gw, authorize_params(client_id, challenge, redirect, **extra), address)
    return answer, verifier


async def exchange(gw, client_id: str, code: str, verifier: str, redirect: str = REDIRECT, **extra):
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "client_id": client_id,
            "code_verifier": verifier} | extra
    return await token(gw, form)


# --- discovery --------------------------------------------------------------------------------------

async def test_the_service_host_publishes_its_authorization_server_metadata(gw):
    base = f"http://{HOST}"
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        async with gw.request("GET", path) as resp:
            assert resp.status == 200
            doc = await resp.json()
        assert doc["issuer"] == base + "/"
        assert doc["authorization_endpoint"] == base + "/.gateway/oauth/authorize"
        assert doc["token_endpoint"] == base + "/.gateway/oauth/token"
        assert doc["registration_endpoint"] == base + "/.gateway/oauth/register"
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token"}
        assert doc["client_id_metadata_document_supported"] is True


# --- the whole flow with a registered (public) client ----------------------------------------------

async def test_a_registered_client_gets_tokens_that_pay_and_refresh_with_rotation(gw):
    await registered_client_pays_and_refreshes(gw)


async def test_the_same_on_a_postgresql_ledger(make_gateway, chain, plugin, signing_key, tmp_path, postgres_url):
    """Codes, refresh tokens, registered clients, sign-in nonces and charges on the shared ledger."""
    data = oauth_config(chain, plugin, signing_key, tmp_path)
    data["metering"]["ledger"] = postgres_url
    gw = await make_gateway(data)
    ledger = gw.app[RUNTIME].ledger
    assert isinstance(ledger, PostgresLedger)
    await registered_client_pays_and_refreshes(gw)
    assert [row["charged"] for row in await ledger.usage()] == [2]  # the two paid calls of the flow


async def registered_client_pays_and_refreshes(gw) -> None:
    client = await register(gw)
    assert client["token_endpoint_auth_method"] == "none" and client["redirect_uris"] == [REDIRECT]
    answer, verifier = await code_for(gw, client["client_id"])
    assert answer["state"] == "st-1" and answer["iss"] == f"http://{HOST}/"
    page = await consent_page(gw, authorize_params(client["client_id"], pkce()[1]))
    assert page["deny_url"] == REDIRECT + f"?error=access_denied&state=st-1&iss=http%3A%2F%2F{HOST}%2F"
    assert page["client"]["name"] == "Test client" and page["siwe"]["statement"].startswith("Allow Test client")
    assert answer["_location"].startswith(REDIRECT + "?")
    async with await exchange(gw, client["client_id"], answer["code"], verifier) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        tokens = await resp.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 600
    async with gw.request("POST", "/query", json=QUERY, token=tokens["access_token"]) as resp:
        assert resp.status == 200 and (await resp.json())["subscriber"] == SUBSCRIBER
        assert resp.headers["X-Credits-Charged"] == "1"
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
               "client_id": client["client_id"]}
    async with await token(gw, refresh) as resp:
        assert resp.status == 200, await resp.text()
        renewed = await resp.json()
    assert renewed["refresh_token"] != tokens["refresh_token"]  # rotated
    async with gw.request("POST", "/query", json=QUERY, token=renewed["access_token"]) as resp:
        assert resp.status == 200
    # The spent refresh token again: a stolen copy. Refused, and the whole family with it.
    async with await token(gw, refresh) as resp:
        await oauth_error(resp, 400, "invalid_grant")
    async with await token(gw, refresh | {"refresh_token": renewed["refresh_token"]}) as resp:
        await oauth_error(resp, 400, "invalid_grant")


async def revoked(gw, **which) -> None:
    """What `gateway token revoke JTI` / `--subscriber 0x..` records."""
    db = open_database(gw.config.metering.ledger, None, pool_size=1)
    try:
        await revoke(auth_state(db), **which)
    finally:
        await db.close()


async def test_revoking_an_access_token_ends_its_grant_and_refresh_tokens(gw):
    client = await register(gw)
    answer, verifier = await code_for(gw, client["client_id"])
    async with await exchange(gw, client["client_id"], answer["code"], verifier) as resp:
        tokens = await resp.json()
    jti = jwt.decode(tokens["access_token"], options={"verify_signature": False})["jti"]
    await revoked(gw, jti=jti)
    async with await token(gw, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                "client_id": client["client_id"]}) as resp:
        await oauth_error(resp, 400, "invalid_grant")


async def test_revoking_the_subscriber_ends_their_refresh_tokens(gw):
    client = await register(gw)
    answer, verifier = await code_for(gw, client["client_id"])
    async with await exchange(gw, client["client_id"], answer["code"], verifier) as resp:
        tokens = await resp.json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["aud"] == ["elvis", f"http://{HOST}"] and claims["exp"] - claims["iat"] == 600
    await revoked(gw, subscriber=SUBSCRIBER)
    async with await token(gw, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                "client_id": client["client_id"]}) as resp:
        await oauth_error(resp, 400, "invalid_grant")
    async with gw.request("POST", "/query", json=QUERY, token=tokens["access_token"]) as resp:
        assert resp.status == 401


# --- GPT Actions: a confidential client with a secret ------------------------------------------------

async def test_a_confidential_client_authenticates_with_its_secret_and_calls_an_endpoint(gw):
    # As ChatGPT's GPT Actions do it: authorization URL + token URL + client secret, no PKCE, no resource.
    params = authorize_params("gpt-actions", None, GPT_REDIRECT, code_challenge_method=None)
    answer = await authorize(gw, params)
    form = {"grant_type": "authorization_code", "code": answer["code"], "redirect_uri": GPT_REDIRECT}
    wrong = base64.b64encode(b"gpt-actions:not-the-secret").decode()
    async with await token(gw, form, headers={"Authorization": f"Basic {wrong}"}) as resp:
        await oauth_error(resp, 401, "invalid_client")
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    async with await token(gw, form | {"client_id": "gpt-actions"}) as resp:  # no secret at all
        await oauth_error(resp, 401, "invalid_client")
    basic = base64.b64encode(f"gpt-actions:{GPT_SECRET}".encode()).decode()
    async with await token(gw, form, headers={"Authorization": f"Basic {basic}"}) as resp:
        assert resp.status == 200, await resp.text()
        tokens = await resp.json()
    async with gw.request("POST", "/ask", json={"question": "blue"}, token=tokens["access_token"]) as resp:
        assert resp.status == 200 and resp.headers["X-Credits-Charged"] == "2"
    # client_secret_post, as GPT Actions' "Default (POST request)" sends it: refresh.
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "gpt-actions",
               "client_secret": GPT_SECRET}
    async with await token(gw, refresh) as resp:
        assert resp.status == 200, await resp.text()
    # Its exemption is its own: a client that must use PKCE cannot go without; a verifier for a
    # code issued without PKCE is a mix-up.
    async with gw.request("GET", "/.gateway/oauth/authorize?" + urlencode(
            authorize_params("strict", None, GPT_REDIRECT, code_challenge_method=None)), allow_redirects=False) as resp:
        assert resp.status == 302 and "error=invalid_request" in resp.headers["Location"]
        assert "code=" not in resp.headers["Location"]
    answer = await authorize(gw, params)
    async with await token(gw, form | {"code": answer["code"], "code_verifier": pkce()[0]},
                           headers={"Authorization": f"Basic {basic}"}) as resp:
        await oauth_error(resp, 400, "invalid_grant")


# --- hostile input: never a token -------------------------------------------------------------------

async def test_an_unknown_client_or_a_foreign_redirect_is_refused_without_redirecting(gw):
    client = await register(gw)
    _, challenge = pkce()
    hostile = [
        authorize_params("dcr_nobody", challenge),                                  # unknown client
        authorize_params(client["client_id"], challenge, "https://evil.example/callback"),
        authorize_params(client["client_id"], challenge, REDIRECT + "/../evil"),    # not exactly the same
        authorize_params(client["client_id"], challenge, REDIRECT + "?next=https://evil.example"),
        authorize_params(client["client_id"], challenge, "https://client.example@evil.example/callback"),
        authorize_params(client["client_id"], challenge, "https://client.example:8443/callback"),
        authorize_params(client["client_id"], challenge, None),                     # no redirect_uri
    ]
    for params in hostile:
        async with gw.request("GET", "/.gateway/oauth/authorize?" + urlencode(params), allow_redirects=False) as resp:
            assert resp.status == 400 and "Location" not in resp.headers, params
            body = await resp.json(content_type=None)
            assert body["error"] in ("invalid_client", "invalid_request"), body


async def test_missing_or_plain_pkce_and_bad_parameters_go_back_as_errors_without_a_code(gw):
    client = await register(gw)
    _, challenge = pkce()
    cases = {
        "invalid_request": [dict(code_challenge=None, code_challenge_method=None),       # no PKCE
                            dict(code_challenge_method="plain", code_challenge="x" * 43),  # plain PKCE
                            dict(code_challenge_method=None),                              # method missing
                            dict(code_challenge="short"), dict(state=None)],
        "unsupported_response_type": [dict(response_type="token")],
        "invalid_target": [dict(resource="http://other.proxy.localhost"), dict(resource="https://evil.example/mcp")],
    }
    for error, variants in cases.items():
        for variant in variants:
            params = authorize_params(client["client_id"], challenge) | variant
            params = {k: v for k, v in params.items() if v is not None}
            async with gw.request("GET", "/.gateway/oauth/authorize?" + urlencode(params),
                                  allow_redirects=False) as resp:
                assert resp.status == 302, (variant, await resp.text())
                location = resp.headers["Location"]
            assert location.startswith(REDIRECT + "?")
            query = parse_qs(urlsplit(location).query)
            assert query["error"] == [error] and "code" not in query, (variant, query)


async def test_a_code_works_once_for_its_client_redirect_and_verifier_only(gw):
    client, other = await register(gw), await register(gw)
    answer, verifier = await code_for(gw, client["client_id"])
    code = answer["code"]
    async with await exchange(gw, other["client_id"], code, verifier) as resp:  # another client
        await oauth_error(resp, 400, "invalid_grant")
    answer, verifier = await code_for(gw, client["client_id"])
    async with await exchange(gw, client["client_id"], answer["code"], verifier, "https://client.example/other") as r:
        await oauth_error(r, 400, "invalid_grant")  # redirect differs
    answer, verifier = await code_for(gw, client["client_id"])
    async with await exchange(gw, client["client_id"], answer["code"], pkce()[0]) as resp:  # another verifier
        await oauth_error(resp, 400, "invalid_grant")
    async with await exchange(gw, client["client_id"], answer["code"], "tooshort") as resp:
        await oauth_error(resp, 400, "invalid_request")
    answer, verifier = await code_for(gw, client["client_id"])
    async with await exchange(gw, client["client_id"], answer["code"], verifier) as resp:
        assert resp.status == 200
        first = await resp.json()
    async with await exchange(gw, client["client_id"], answer["code"], verifier) as resp:  # reused
        await oauth_error(resp, 400, "invalid_grant")
    # The reuse revoked what the first exchange bought.
    async with await token(gw, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                                "client_id": client["client_id"]}) as resp:
        await oauth_error(resp, 400, "invalid_grant")
    async with await exchange(gw, client["client_id"], "made-up-code", verifier) as resp:
        await oauth_error(resp, 400, "invalid_grant")
    async with await token(gw, {"grant_type": "password", "client_id": client["client_id"]}) as resp:
        await oauth_error(resp, 400, "unsupported_grant_type")
    async with gw.request("POST", "/.gateway/oauth/token", json={"grant_type": "authorization_code"}) as resp:
        await oauth_error(resp, 400, "invalid_request")  # a token request is a form, not JSON
    async with gw.request("POST", "/.gateway/oauth/token", data=b"code=a&code=b&grant_type=authorization_code",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        await oauth_error(resp, 400, "invalid_request")  # a parameter given twice


async def test_a_signature_for_one_request_authorizes_no_other(gw):
    client, other = await register(gw), await register(gw, name="Other client")
    _, challenge = pkce()
    mine = await consent_page(gw, authorize_params(client["client_id"], challenge))
    theirs = await consent_page(gw, authorize_params(other["client_id"], challenge))
    text = consent_message(mine, await nonce_of(gw))
    signature = sign(text)
    # Replayed for another client's request (or with another PKCE challenge): refused, nonce unspent.
    async with await post_consent(gw, theirs["params"], text, signature) as resp:
        await problem(resp, 401, "request_mismatch")
    changed = mine["params"] | {"code_challenge": pkce()[1]}
    async with await post_consent(gw, changed, text, signature) as resp:
        await problem(resp, 401, "request_mismatch")
    plain = consent_message(mine, await nonce_of(gw), request_id=None)  # no binding at all
    async with await post_consent(gw, mine["params"], plain, sign(plain)) as resp:
        await problem(resp, 401, "request_mismatch")
    async with await post_consent(gw, mine["params"], text, sign(text, BROKE)) as resp:  # someone else's key
        await problem(resp, 401, "bad_signature")
    async with await post_consent(gw, mine["params"], text, signature) as resp:  # the right one still works
        assert resp.status == 200, await resp.text()


async def test_registration_refuses_bad_metadata(gw):
    for body in ({"redirect_uris": []}, {"redirect_uris": ["http://evil.example/cb"]},
                 {"redirect_uris": ["javascript:alert(1)//"]}, {"redirect_uris": ["https://a.example/cb#frag"]},
                 {"redirect_uris": [REDIRECT] * 11}, {"client_name": "x"}):
        async with gw.request("POST", "/.gateway/oauth/register", json=body) as resp:
            await oauth_error(resp, 400, "invalid_redirect_uri")
    async with gw.request("POST", "/.gateway/oauth/register",
                          json={"redirect_uris": [REDIRECT], "grant_types": ["client_credentials"]}) as resp:
        await oauth_error(resp, 400, "invalid_client_metadata")


# --- client metadata documents: bounded, never from private addresses --------------------------------

async def test_a_metadata_document_on_a_private_address_is_never_fetched(gw):
    seen: list[str] = []

    async def document(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/{tail:.*}", document)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    _, challenge = pkce()
    try:
        for client_id in (f"https://localhost:{port}/client.json", f"https://127.0.0.1:{port}/client.json",
                          f"https://[::1]:{port}/client.json", "https://169.254.169.254/latest/meta-data/x",
                          f"http://localhost:{port}/client.json", f"https://localhost:{port}/"):
            params = authorize_params(client_id, challenge, f"http://127.0.0.1:{port}/cb")
            async with gw.request("GET", "/.gateway/oauth/authorize?" + urlencode(params),
                                  allow_redirects=False) as resp:
                await oauth_error(resp, 400, "invalid_client")
                assert "Location" not in resp.headers
    finally:
        await runner.cleanup()
    assert seen == []  # refused before any connection


async def test_an_oversized_metadata_document_is_refused_by_the_served_gateway(chain, plugin, signing_key, tmp_path,
                                                                                monkeypatch, session):
    cert, key = self_signed_cert(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the gateway process trusts the test's HTTPS server
    documents: dict[str, dict] = {}

    async def document(request: web.Request) -> web.Response:
        return web.json_response(documents[request.path])

    app = web.Application()
    app.router.add_get("/{tail:.*}", document)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    base = f"https://localhost:{runner.addresses[0][1]}"
    redirect = "http://127.0.0.1:9/callback"
    documents["/small.json"] = {"client_id": base + "/small.json", "client_name": "Small", "redirect_uris": [redirect]}
    documents["/big.json"] = {"client_id": base + "/big.json", "redirect_uris": [redirect], "logo": "x" * 20_000}
    served = Served(chain, plugin, signing_key, tmp_path / "gw")
    served.configure(lambda data: data.update(oauth={"metadata_private_addresses": True}))
    _, challenge = pkce()
    try:
        served.start()
        for path, status in (("/small.json", 200), ("/big.json", 400)):
            params = authorize_params(base + path, challenge, redirect)
            async with session.get(f"http://127.0.0.1:{served.port}/.gateway/oauth/authorize?{urlencode(params)}",
                                   headers={"Host": HOST}, allow_redirects=False) as resp:
                assert resp.status == status, await resp.text()
                if status == 400:
                    assert "larger than" in (await oauth_error(resp, 400, "invalid_client"))["error_description"]
    finally:
        served.stop()
        await runner.cleanup()
