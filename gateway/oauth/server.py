"""The OAuth 2.1 authorization server of every service host: its routes, in one place.

- `GET /.well-known/oauth-authorization-server` (RFC 8414) and `/.well-known/openid-configuration`
  (the path MCP clients also try): the metadata (`metadata`); the issuer is the service's own
  public URL, which its RFC 9728 metadata names as its authorization server;
- `GET|POST /.gateway/oauth/authorize`: the consent page and the signed consent (`authorize`);
- `POST /.gateway/oauth/token`: codes and refresh tokens for tokens (`token`);
- `POST /.gateway/oauth/register`: RFC 7591 registration of public clients (`clients`).
Anonymous endpoints that cost work or storage (the page, which may fetch a client's metadata
document, the consent and registration) pass the sign-in rate limit per client address first.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from gateway.auth.issuer import OwnIssuer
from gateway.auth.revocation import RevocationList
from gateway.auth.signin import SignIn
from gateway.auth.signin_address import origin_of
from gateway.auth.signin_rate import SigninRateLimit
from gateway.auth.siwe import split_uri
from gateway.config.model import GatewayConfig, ServiceConfig
from gateway.http import client_json
from gateway.http.own_pages import page_with_csp
from gateway.http.problems import Problem
from gateway.http.public_url import public_base
from gateway.http.upstream import read_bounded
from gateway.oauth import metadata
from gateway.oauth.authorize import CODE_TTL, AuthorizationRequest, check_request, page_data, single_values
from gateway.oauth.clients import ClientRegistry
from gateway.oauth.errors import RedirectError, oauth_error, with_query
from gateway.oauth.metadata_documents import MetadataDocuments
from gateway.oauth.store import OAuthStore
from gateway.oauth.token import NO_STORE, TokenEndpoint, parse_form, token_hash

BODY_LIMIT = 64 * 1024


def _page() -> tuple[str, str]:
    """The consent page, and its Content-Security-Policy (`gateway.http.own_pages`)."""
    return page_with_csp(Path(__file__).parent / "authorize_page.html")


class OAuthServer:
    """The routes of one config's authorization server; `endpoints.oauth` of the gateway's own endpoints."""

    def __init__(self, config: GatewayConfig, issuer: OwnIssuer, signin: SignIn, store: OAuthStore,
                 revocations: RevocationList | None, describe_plan: Callable[[ServiceConfig], dict[str, Any]],
                 documents: MetadataDocuments | None, clock: Callable[[], float]) -> None:
        self.config, self.signin, self.store, self.clock = config, signin, store, clock
        self.describe_plan = describe_plan
        self.clients = ClientRegistry(config.oauth, store, documents, clock)
        self.tokens = TokenEndpoint(config.oauth, issuer, self.clients, store, revocations, clock)
        self.rate = SigninRateLimit(config.tokens.signin_rate, config.trusted_proxies)
        self._routes = {
            metadata.AUTHORIZE_PATH: {"GET": self._authorize_page, "POST": self._consent},
            metadata.TOKEN_PATH: {"POST": self._token},
            metadata.REGISTER_PATH: {"POST": self._register},
        }

    def document(self, service: ServiceConfig, path: str, base: str) -> web.Response | None:
        """The RFC 8414 metadata for a GET of one of its well-known paths; None for other paths."""
        if path not in metadata.PATHS or service.plan is None:
            return None
        document = metadata.document(base, self.config.oauth)
        return web.json_response(document, headers={"Cache-Control": "public, max-age=300"})

    async def handle(self, request: web.Request, service: ServiceConfig, path: str) -> web.StreamResponse | None:
        """Answer a `/.gateway/oauth/*` request; None for a path that is not the OAuth server's."""
        handlers = self._routes.get(path)
        if handlers is None:
            return None
        if service.plan is None:  # Why: a token for a service that sells nothing would open nothing.
            raise Problem(404, "endpoint_not_exposed", f"{service.id} has no plan: there is nothing to authorize")
        method = "GET" if request.method == "HEAD" else request.method
        if method not in handlers:
            raise Problem(405, "method_not_allowed", f"{request.method} is not allowed on {path}",
                          headers={"Allow": ", ".join(sorted(handlers))})
        return await handlers[method](request, service)

    async def _authorize_page(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        self.rate.check(request)  # Why: anonymous, and it may fetch a client's metadata document
        base = public_base(self.config, request)
        params = single_values({name: request.query.getall(name, []) for name in request.query})
        try:
            checked, client = await check_request(params, service, base, self.clients)
        except RedirectError as refused:
            return _redirect(refused.location(params["redirect_uri"], metadata.issuer(base)))
        deny = with_query(checked.redirect_uri, {"error": "access_denied", "state": checked.state,
                                                 "iss": metadata.issuer(base)})
        chain_id = self.config.chains[service.plan.chain].chain_id
        data = page_data(checked, client, service, base, chain_id, self.describe_plan(service), deny)
        html, csp = _page()
        # Why the escapes: the JSON sits in HTML; no value (a client's name) can close the element.
        embedded = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        headers = {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer", **NO_STORE}
        return web.Response(text=html.replace("REQUEST_JSON", embedded), content_type="text/html", headers=headers)

    async def _consent(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        self.rate.check(request)  # Why: anonymous and costly (signature recovery, a chain read for 1271)
        body = client_json.loads(await read_bounded(request, BODY_LIMIT),
                                 'send JSON {"params": {...}, "message": "<EIP-4361 text>", "signature": "0x..."}')
        if not isinstance(body, dict) or not isinstance(body.get("params"), dict) \
                or not isinstance(body.get("message"), str) or not isinstance(body.get("signature"), str):
            raise Problem(400, "bad_request", 'send JSON {"params": {...}, "message": "...", "signature": "0x..."}')
        if not all(isinstance(v, str) for v in body["params"].values()):
            raise Problem(400, "bad_request", "every authorization parameter is a string")
        base = public_base(self.config, request)
        params = {name: value for name, value in body["params"].items()}
        try:
            checked, _client = await check_request(params, service, base, self.clients)
        except RedirectError as refused:
            # Why not a code: the page posted a request that the page itself would have refused.
            raise oauth_error(400, refused.error, refused.description) from None
        address, _ = await self.signin.prove(service, origin_of(self.config, request), body["message"],
                                             body["signature"], bound=lambda message: _bound(message, checked))
        code, family, now = secrets.token_urlsafe(32), secrets.token_urlsafe(16), self.clock()
        grant = {"client_id": checked.client_id, "redirect_uri": checked.redirect_uri, "service": service.id,
                 "code_challenge": checked.code_challenge, "resource": checked.resource, "scope": checked.scope,
                 "subscriber": address}
        await self.store.add_code(token_hash(code), family, grant, now + CODE_TTL, now)
        location = with_query(checked.redirect_uri, {"code": code, "state": checked.state, "iss": metadata.issuer(base)})
        return web.json_response({"redirect_to": location}, headers=NO_STORE)

    async def _token(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        if request.content_type != "application/x-www-form-urlencoded":
            raise oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        form = parse_form(await read_bounded(request, 16 * 1024))
        answer = await self.tokens.answer(form, request.headers.get("Authorization"), service)
        return web.json_response(answer, headers=NO_STORE)

    async def _register(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        self.rate.check(request)  # Why: anonymous writes to the database
        answer = await self.clients.register(await read_bounded(request, 16 * 1024))
        return web.json_response(answer, status=201, headers=NO_STORE)


def _bound(message: Any, request: AuthorizationRequest) -> None:
    """Refuse a message that was not signed for this very authorization request."""
    _, _, path = split_uri(message.uri)
    # Why: the Request ID is the digest of client, redirect URI, state, PKCE challenge, resource and
    # service: a signature for any other request (another client's above all) has another one.
    if message.request_id != request.digest() or path != metadata.AUTHORIZE_PATH:
        raise Problem(401, "request_mismatch", "the signed message was not made for this authorization request")


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, **NO_STORE})
