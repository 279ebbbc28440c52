"""The gateway's own endpoints under `/.gateway/` on every service host (SPEC §6).

They are answered by the gateway and never forwarded upstream:
- `GET /.gateway/plan`: the service's plan as JSON (with a token: also the subscriber's balance;
  an endpoint also sold per call carries its x402 `exact` terms);
- `GET /.gateway/jwks.json`: the own issuer's public keys (signing key and previous keys);
- `GET /.gateway/nonce`: a sign-in nonce, `{"nonce", "expires_in"}`;
- `GET /.gateway/login`: the sign-in page (`login_page.html`, no external resources, strict CSP);
- `POST /.gateway/login` `{message, signature}`: Sign-In with Ethereum (`gateway.auth.signin`);
- `/.gateway/oauth/*`: the OAuth 2.1 authorization server (`gateway.oauth.server`), when it is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from gateway.config.model import GatewayConfig, ServiceConfig
from gateway.http.mcp import offer as mcp_offer
from gateway.credits.meter import Meter
from gateway.auth.issuer import OwnIssuer
from gateway.credits.prices import plan_document, price_of
from gateway.x402.offers import exact_offer
from gateway.http.own_pages import page_with_csp
from gateway.http.problems import Problem
from gateway.auth.signin import SignIn, parse_login_body
from gateway.auth.signin_address import origin_of
from gateway.auth.tokens import TokenVerifier
from gateway.http.upstream import read_bounded
from gateway.oauth.server import OAuthServer

LOGIN_BODY_LIMIT = 64 * 1024  # a SIWE message and a signature are a few hundred bytes
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
Handler = Callable[[web.Request, ServiceConfig], Awaitable[web.StreamResponse]]


def _login_page() -> tuple[bytes, str]:
    """The sign-in page, and its Content-Security-Policy (`gateway.http.own_pages`)."""
    html, csp = page_with_csp(Path(__file__).parent / "login_page.html")
    return html.encode(), csp


class GatewayEndpoints:
    def __init__(self, config: GatewayConfig, own_issuer: OwnIssuer | None, signin: SignIn | None = None,
                 tokens: TokenVerifier | None = None, meter: Meter | None = None) -> None:
        self.config = config
        self.own_issuer = own_issuer
        self.signin = signin
        self.tokens, self.meter = tokens, meter  # for /.gateway/plan with a token
        self._page, self._csp = _login_page()
        self.oauth: OAuthServer | None = None  # the OAuth authorization server (gateway.oauth), set by app
        self._routes: dict[str, dict[str, Handler]] = {
            "/.gateway/plan": {"GET": self._plan},
            "/.gateway/jwks.json": {"GET": self._jwks},
            "/.gateway/nonce": {"GET": self._nonce},
            "/.gateway/login": {"GET": self._login_page, "POST": self._login},
        }

    def oauth_metadata(self, service: ServiceConfig, path: str, base: str) -> web.Response | None:
        """The OAuth authorization server's metadata (RFC 8414) at its well-known paths; None elsewhere."""
        return self.oauth.document(service, path, base) if self.oauth is not None else None

    async def handle(self, request: web.Request, service: ServiceConfig, path: str) -> web.StreamResponse:
        if self.oauth is not None and path.startswith("/.gateway/oauth/"):
            answer = await self.oauth.handle(request, service, path)
            if answer is not None:
                return answer
        handlers = self._routes.get(path)
        if handlers is None or (path == "/.gateway/jwks.json" and self.own_issuer is None) or (
                path in ("/.gateway/nonce", "/.gateway/login") and self.signin is None):
            # Why 404: without an own issuer there is no JWKS to publish and no token to sign in for.
            raise Problem(404, "endpoint_not_exposed", f"{path} is not a gateway endpoint")
        method = "GET" if request.method == "HEAD" else request.method
        handler = handlers.get(method)
        if handler is None:
            allowed = ", ".join(sorted(set(handlers) | ({"HEAD"} if "GET" in handlers else set())))
            raise Problem(405, "method_not_allowed", f"{request.method} is not allowed on {path}",
                          headers={"Allow": allowed})
        return await handler(request, service)

    async def _plan(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        if not (authorization and service.plan and self.tokens and self.meter):
            return web.json_response(self.plan(service))
        # With a token: the plan plus what this subscriber can spend right now (an invalid token
        # is refused like anywhere else: the balance is the subscriber's business only).
        who = await self.tokens.verify(authorization, service, self.config.public_url(service))
        document = self.plan(service)
        document["subscriber"] = who.address
        document["plan"]["balance"] = await self.meter.available(service, who.address)
        return web.json_response(document, headers={"Cache-Control": "no-store"})

    async def _jwks(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        assert self.own_issuer is not None
        return web.json_response(self.own_issuer.jwks(), headers={"Cache-Control": "public, max-age=300"})

    async def _nonce(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        assert self.signin is not None
        self.signin.admit(request)  # Why: anonymous; 429 above tokens.signin_rate per client address
        nonce, _ = self.signin.nonces.issue()
        return web.json_response({"nonce": nonce, "expires_in": int(self.signin.nonces.ttl)}, headers=NO_STORE)

    async def _login_page(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        headers = {"Content-Security-Policy": self._csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
        return web.Response(body=self._page, content_type="text/html", charset="utf-8", headers=headers)

    async def _login(self, request: web.Request, service: ServiceConfig) -> web.StreamResponse:
        assert self.signin is not None
        self.signin.admit(request)  # Why: anonymous and costly (recovery, chain read); before any work
        body = await read_bounded(request, LOGIN_BODY_LIMIT)
        message, signature = parse_login_body(body)  # strict, depth-limited JSON (gateway.http.client_json)
        answer = await self.signin.login(service, origin_of(self.config, request), message, signature)
        # Why no-store: the answer carries a bearer token (RFC 6749 §5.1).
        return web.json_response(answer, headers=NO_STORE)

    def plan(self, service: ServiceConfig) -> dict:
        if service.plan is None:
            return {"service": service.id, "plan": None}
        doc = plan_document(service, self.config.chains[service.plan.chain].chain_id)
        doc["endpoints"] = [
            {"endpoint": rule.source, "credits": _price_json(price_of(service, rule))} | _per_call(service, rule)
            for rule in service.protected_endpoints
        ]
        if service.mcp is not None:
            doc["mcp"] = mcp_offer(service)  # credits per MCP tool
        return {"service": service.id, "plan": doc}


def _per_call(service: ServiceConfig, rule) -> dict:
    """`x402`: the standard `exact` terms of an endpoint also sold per call (what its 402 offers)."""
    offer = exact_offer(service, rule)
    return {"x402": offer.model_dump(by_alias=True, exclude_none=True)} if offer is not None else {}


def _price_json(price) -> int | dict:
    if price.is_dynamic:
        return {"header": price.header, "min": price.min, "max": price.max}
    return price.fixed or 0
