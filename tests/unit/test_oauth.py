"""The OAuth authorization server's parts in process: its store on SQLite (single-use codes,
rotation, family revocation), redirect URI matching, the authorization request checks and their
binding digest, Client ID Metadata Document fetching (bounds, private addresses) against a local
HTTPS server, the token endpoint's form and Basic parsing, and the `oauth` config section."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from gateway.config.load import parse_config
from gateway.config.nodes import ConfigError
from gateway.config.oauth import redirect_uri
from gateway.http.problems import Problem
from gateway.ledger.database import SqliteDatabase
from gateway.oauth.authorize import check_request, resource_of, statement
from gateway.oauth.clients import Client, ClientRegistry
from gateway.oauth.errors import RedirectError
from gateway.oauth.metadata_documents import (MAX_BYTES, DocumentRefused, MetadataDocuments, PublicOnlyResolver,
                                              check_url, parse_document)
from gateway.oauth.store import SqliteOAuthStore
from gateway.oauth.token import _basic_credentials, parse_form
from tests.support.oauth import pkce, self_signed_cert
from tests.support.oauth import prune_scenario
from tests.support.stack import base_config

BASE = "https://elvis.example.com"
GRANT = {"client_id": "c", "redirect_uri": "https://c.example/cb", "service": "elvis", "code_challenge": "x",
         "resource": BASE, "scope": None, "subscriber": "0x" + "11" * 20}


@pytest_asyncio.fixture
async def store(tmp_path):
    db = SqliteDatabase(tmp_path / "oauth.db")
    s = SqliteOAuthStore(db)
    await s.open()
    yield s
    await db.close()


# --- store ------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_a_code_is_taken_once_and_a_second_take_revokes_its_family(store):
    await store.add_code("h1", "fam", GRANT, expires_at=160.0, now=100.0)
    assert await store.take_code("h1", 101.0) == ("ok", "fam", GRANT)
    await store.start_family("fam", GRANT, "r1", "jti-1", expires_at=1000.0, now=101.0)
    assert (await store.take_code("h1", 102.0))[0] == "reused"
    assert (await store.refresh_token("r1")).family_revoked
    assert await store.rotate("r1", "r2", "jti-2", 1000.0, 103.0) == "revoked"
    assert (await store.take_code("nope", 102.0))[0] == "unknown"
    await store.add_code("h2", "fam2", GRANT, expires_at=160.0, now=100.0)
    assert (await store.take_code("h2", 160.0))[0] == "expired"


@pytest.mark.asyncio
async def test_refresh_tokens_rotate_and_a_spent_one_revokes_the_family(store):
    await store.start_family("fam", GRANT, "r1", "jti-1", expires_at=1000.0, now=100.0)
    assert await store.rotate("r1", "r2", "jti-2", 1000.0, 101.0) == "ok"
    record = await store.refresh_token("r2")
    assert record.grant == GRANT and not record.used and set(record.access_jtis) == {"jti-1", "jti-2"}
    assert await store.rotate("r1", "r3", "jti-3", 1000.0, 102.0) == "reused"  # the spent one again
    assert await store.rotate("r2", "r4", "jti-4", 1000.0, 103.0) == "revoked"  # the whole family
    assert await store.rotate("unknown", "r5", "j", 1000.0, 103.0) == "unknown"
    await store.start_family("fam2", GRANT, "s1", "j1", expires_at=200.0, now=100.0)
    assert await store.rotate("s1", "s2", "j2", 1000.0, 200.0) == "expired"


@pytest.mark.asyncio
async def test_concurrent_redemptions_of_one_code_have_one_winner(store):
    await store.add_code("h", "fam", GRANT, expires_at=160.0, now=100.0)
    results = await asyncio.gather(*(store.take_code("h", 101.0) for _ in range(5)))
    assert sorted(r[0] for r in results) == ["ok", "reused", "reused", "reused", "reused"]


# --- clients and redirect URIs ------------------------------------------------------------------------

def test_redirect_uris_match_exactly_except_a_loopback_port():
    client = Client("c", "C", ("https://c.example/cb", "http://127.0.0.1:8000/cb", "http://[::1]/cb"), "registered")
    assert client.allows_redirect("https://c.example/cb")
    for hostile in ("https://c.example/cb/", "https://c.example/cb?x=1", "https://c.example:444/cb",
                    "https://evil.example/cb", "https://c.example.evil.example/cb", "http://c.example/cb",
                    "https://user@c.example/cb", "https://C.example/cb"):
        assert not client.allows_redirect(hostile), hostile
    assert client.allows_redirect("http://127.0.0.1:53111/cb") and client.allows_redirect("http://[::1]:9/cb")
    assert not client.allows_redirect("http://127.0.0.1:53111/other")
    assert not client.allows_redirect("http://localhost:8000/cb")  # only loopback IPs may vary the port


def test_redirect_uri_rules():
    for good in ("https://a.example/cb", "http://127.0.0.1:1234/cb", "http://localhost/cb", "cursor://x/cb",
                 "com.example.app:/oauth"):
        assert redirect_uri(good) == good
    for bad in ("http://a.example/cb", "https://a.example/cb#x", "javascript:alert(1)//", "data:text/html,x",
                "https://u@a.example/cb", "https://a.example:x/cb", "relative/cb", "https://a.example/ cb", ""):
        with pytest.raises(ValueError):
            redirect_uri(bad)


def test_client_secrets_are_compared_whole():
    client = Client("gpt", "GPT", (), "configured", secret="s" * 32)
    assert client.secret_matches("s" * 32)
    assert not client.secret_matches("s" * 31) and not client.secret_matches("s" * 33)
    assert not Client("pub", "P", (), "registered").secret_matches("")


# --- the authorization request --------------------------------------------------------------------------

def service(mcp: bool = True):
    from gateway.config.load import parse_config as parse
    data = base_config(None, None, _key())
    if mcp:
        data["services"]["elvis"].update(protected_endpoints=[], mcp={"path": "/mcp"})
    return parse(data, {}).services["elvis"]


_KEY: list[Path] = []


def _key() -> Path:
    if not _KEY:
        import tempfile
        from gateway.auth.issuer import generate_signing_key
        path = Path(tempfile.mkdtemp()) / "k.pem"
        generate_signing_key(path)
        _KEY.append(path)
    return _KEY[0]


class Registry(ClientRegistry):
    def __init__(self, client: Client) -> None:
        self.client = client

    async def find(self, client_id):
        if client_id != self.client.client_id:
            raise Problem(400, "invalid_client", "unknown")
        return self.client


@pytest.mark.asyncio
async def test_the_authorization_request_checks_and_its_binding():
    svc = service()
    client = Client("c", "Claude <script>", ("https://c.example/cb",), "registered")
    registry = Registry(client)
    _, challenge = pkce()
    good = {"response_type": "code", "client_id": "c", "redirect_uri": "https://c.example/cb", "state": "s",
            "code_challenge": challenge, "code_challenge_method": "S256", "resource": BASE + "/mcp"}
    request, _ = await check_request(good, svc, BASE, registry)
    assert request.resource == BASE + "/mcp" and request.service == "elvis"
    digests = {request.digest()}
    for name, value in (("state", "t"), ("code_challenge", pkce()[1]), ("resource", BASE), ("scope", "a b")):
        other, _ = await check_request(good | {name: value}, svc, BASE, registry)
        digests.add(other.digest())
    assert len(digests) == 5  # every bound field changes the digest
    for change, error in ((dict(code_challenge_method="plain"), "invalid_request"),
                          (dict(code_challenge="a" * 42), "invalid_request"),
                          (dict(state="\n"), "invalid_request"), (dict(response_type="token"), "unsupported_response_type"),
                          (dict(resource="https://elvis.example.com.evil.example/mcp"), "invalid_target"),
                          (dict(resource=BASE + "/other"), "invalid_target"), (dict(scope='a"b'), "invalid_scope")):
        with pytest.raises(RedirectError) as refused:
            await check_request(good | change, svc, BASE, registry)
        assert refused.value.error == error, change
    for change in (dict(client_id="other"), dict(redirect_uri="https://c.example/cb2"), dict(redirect_uri="")):
        with pytest.raises(Problem):  # never a redirect
            await check_request(good | change, svc, BASE, registry)
    assert "<" not in statement(client, svc) and statement(client, svc).startswith("Allow Claude script")


def test_the_resource_is_this_service_or_its_mcp_url():
    svc = service()
    assert resource_of(None, svc, BASE) == BASE
    assert resource_of(BASE + "/", svc, BASE) == BASE and resource_of(BASE + "/mcp", svc, BASE) == BASE + "/mcp"
    assert resource_of("https://other.example.com/mcp", svc, BASE) is None
    assert resource_of(BASE + "/mcp", service(mcp=False), BASE) is None


# --- client metadata documents ------------------------------------------------------------------------

def test_metadata_document_urls_that_are_never_fetched():
    for url in ("http://a.example/c.json", "https://a.example", "https://a.example/", "https://u@a.example/c",
                "https://a.example/c#f", "https://a.example/a/../c", "https://127.0.0.1/c", "https://[::1]/c",
                "https://10.0.0.7/c", "https://169.254.169.254/latest/meta-data", "https://[fd00::1]/c"):
        with pytest.raises(DocumentRefused):
            check_url(url, allow_private=False)
    check_url("https://127.0.0.1/c", allow_private=True)
    check_url("https://client.example/oauth.json", allow_private=False)


def test_a_metadata_document_must_name_its_own_url_and_its_redirects():
    url = "https://c.example/client.json"
    ok = parse_document(url, b'{"client_id": "https://c.example/client.json", "redirect_uris": ["https://c.example/cb"]}')
    assert ok.redirect_uris == ("https://c.example/cb",) and ok.name == "c.example"
    for body in (b"[]", b"not json", b'{"client_id": "https://other.example/c.json", "redirect_uris": ["https://c.example/cb"]}',
                 b'{"client_id": "https://c.example/client.json"}',
                 b'{"client_id": "https://c.example/client.json", "redirect_uris": ["http://evil.example/cb"]}',
                 b'{"client_id": "https://c.example/client.json", "redirect_uris": ["https://c.example/cb"],'
                 b' "token_endpoint_auth_method": "client_secret_basic"}'):
        with pytest.raises(DocumentRefused):
            parse_document(url, body)


@pytest.mark.asyncio
async def test_the_resolver_keeps_only_public_addresses():
    class Inner:
        async def resolve(self, host, port, family):
            return [{"host": a, "port": port} for a in {"mixed": ["10.0.0.1", "93.184.215.14"],
                                                        "private": ["127.0.0.1", "192.168.1.9"]}[host]]

    resolver = PublicOnlyResolver(allow_private=False)
    resolver._inner = Inner()
    assert [e["host"] for e in await resolver.resolve("mixed", 443, socket.AF_INET)] == ["93.184.215.14"]
    with pytest.raises(OSError, match="no public address"):
        await resolver.resolve("private", 443, socket.AF_INET)


@pytest_asyncio.fixture
async def https_documents(tmp_path):
    """A local HTTPS server of documents (path -> handler), and a client TLS context that trusts it."""
    cert, key = self_signed_cert(tmp_path)
    routes: dict = {}
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await routes[request.path](request)

    app.router.add_get("/{tail:.*}", handle)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    client_tls = ssl.create_default_context(cafile=cert)
    yield f"https://localhost:{runner.addresses[0][1]}", routes, client_tls
    await runner.cleanup()


@pytest.mark.asyncio
async def test_fetched_documents_are_bounded_in_size_and_never_redirected(https_documents):
    base, routes, tls = https_documents
    documents = MetadataDocuments(allow_private=True, tls=tls, timeout=5.0)
    url = base + "/ok.json"
    routes["/ok.json"] = lambda r: _json({"client_id": url, "redirect_uris": ["https://c.example/cb"],
                                          "client_name": "Doc client"})
    routes["/big.json"] = lambda r: _json({"client_id": base + "/big.json", "redirect_uris": ["https://c.example/cb"],
                                           "padding": "x" * MAX_BYTES})
    routes["/redirect.json"] = lambda r: _redirect(url)
    routes["/missing.json"] = lambda r: _status(404)
    assert (await documents.get(url)).name == "Doc client"
    for path, reason in (("/big.json", "larger than"), ("/redirect.json", "HTTP 302"), ("/missing.json", "HTTP 404")):
        with pytest.raises(DocumentRefused, match=reason):
            await documents.get(base + path)
    private = MetadataDocuments(allow_private=False, tls=tls)
    with pytest.raises(DocumentRefused, match="private"):  # localhost resolves to loopback only
        await private.get(url)


@pytest.mark.asyncio
async def test_a_document_that_never_arrives_is_refused_within_the_bound(https_documents):
    base, routes, tls = https_documents
    released = asyncio.Event()

    async def stall(request):
        await released.wait()  # set only once the fetch gave up: its own time bound ended it
        return await _status(200)

    routes["/slow.json"] = stall
    try:
        with pytest.raises(DocumentRefused, match="could not be fetched"):
            await MetadataDocuments(allow_private=True, tls=tls, timeout=0.3).get(base + "/slow.json")
    finally:
        released.set()


async def _json(body):
    return web.json_response(body)


async def _redirect(location):
    return web.Response(status=302, headers={"Location": location})


async def _status(status):
    return web.Response(status=status)


# --- token endpoint parsing ----------------------------------------------------------------------------

def test_the_token_form_takes_each_parameter_once():
    assert parse_form(b"grant_type=authorization_code&code=a%2Bb") == {"grant_type": "authorization_code", "code": "a+b"}
    for body in (b"code=a&code=b", "code=\u00e9".encode(), b"a&&b"):
        with pytest.raises(Problem):
            parse_form(body)


def test_basic_client_credentials():
    import base64
    encoded = base64.b64encode(b"my%20client:s%3Acret").decode()
    assert _basic_credentials(f"Basic {encoded}") == ("my client", "s:cret")
    assert _basic_credentials("Bearer x") is None and _basic_credentials(None) is None
    for bad in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        with pytest.raises(Problem) as refused:
            _basic_credentials(bad)
        assert refused.value.status == 401 and refused.value.code == "invalid_client"


# --- config ---------------------------------------------------------------------------------------------

def test_the_oauth_section_reports_every_problem(tmp_path):
    data = base_config(None, None, _key())
    data["oauth"] = {"access_token_ttl": "soon", "registration": "maybe", "clients": [
        {"client_id": "https://looks.like/a/document", "secret": "short", "redirect_uris": ["http://evil.example/cb"]},
        {"client_id": "dup", "secret_file": str(tmp_path / "missing"), "redirect_uris": ["https://a.example/cb"]},
        {"client_id": "dup", "secret": "s" * 32, "redirect_uris": ["https://a.example/cb"], "extra": 1},
    ]}
    with pytest.raises(ConfigError) as error:
        parse_config(data, {})
    text = "\n".join(error.value.problems)
    for expected in ("oauth.access_token_ttl", "oauth.registration", "oauth.clients[0].client_id",
                     "oauth.clients[0].secret: must be at least 32 bytes", "oauth.clients[0].redirect_uris",
                     "oauth.clients[1].secret_file", "oauth.clients[2].extra: unknown key",
                     "oauth.clients: a client_id is listed twice"):
        assert expected in text, (expected, text)
    assert "short" not in text  # never a secret in a problem
    del data["tokens"]["own"]
    data["oauth"] = {"clients": [{"client_id": "gpt", "secret": "s" * 32, "redirect_uris": ["https://a.example/cb"]}]}
    data["services"]["elvis"]["protected_endpoints"] = []
    with pytest.raises(ConfigError, match="needs tokens.own"):
        parse_config(data, {})


# --- access tokens for the MCP URL ------------------------------------------------------------------

@pytest.mark.asyncio
async def test_a_token_for_the_mcp_url_is_accepted_on_that_service_only():
    from gateway.auth.issuer import OwnIssuer
    from gateway.auth.tokens import TokenVerifier, WrongAudience

    data = base_config(None, None, _key())
    data["listen"] = "127.0.0.1:8080"
    data["services"]["elvis"].update(protected_endpoints=[], mcp={"path": "/mcp"})
    config = parse_config(data, {})
    svc, url = config.services["elvis"], config.public_url(config.services["elvis"])
    issuer = OwnIssuer(config.tokens.own)
    verifier = TokenVerifier(config.tokens)
    who = await verifier.verify("Bearer " + issuer.issue("0x" + "11" * 20, [url + "/mcp"]), svc, url)
    assert who.address == "0x" + "11" * 20
    for audience in (url + "/other", "https://elsewhere.example/mcp"):
        with pytest.raises(WrongAudience):
            await verifier.verify("Bearer " + issuer.issue("0x" + "11" * 20, [audience]), svc, url)


@pytest.mark.asyncio
async def test_only_an_exempt_confidential_client_may_go_without_pkce():
    svc = service()
    request = {"response_type": "code", "client_id": "gpt", "redirect_uri": "https://c.example/cb", "state": "s"}
    exempt = Client("gpt", "GPT", ("https://c.example/cb",), "configured", "s" * 32, require_pkce=False)
    checked, _ = await check_request(request, svc, BASE, Registry(exempt))
    assert checked.code_challenge is None and "code_challenge" not in checked.params()
    with pytest.raises(RedirectError):  # half a PKCE request is no exemption
        await check_request(request | {"code_challenge_method": "plain"}, svc, BASE, Registry(exempt))
    for client in (Client("gpt", "GPT", ("https://c.example/cb",), "configured", "s" * 32),
                   Client("gpt", "Public", ("https://c.example/cb",), "registered")):
        with pytest.raises(RedirectError):
            await check_request(request, svc, BASE, Registry(client))


@pytest.mark.asyncio
async def test_registered_clients_that_never_got_a_code_are_pruned_after_a_day(store):
    await prune_scenario(store, GRANT)
