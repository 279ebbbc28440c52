"""The authorization endpoint, `/.gateway/oauth/authorize` (OAuth 2.1 §4.1, RFC 7636, RFC 8707).

`GET` checks the request and answers the consent page (`authorize_page.html`): which client asks,
for which service, what calls cost; the subscriber signs in there with their wallet. `POST` (from
that page) checks the very same request again (the page is never trusted), then the Sign-In with
Ethereum message and signature with every check of `/.gateway/login`, plus one: the message's
`Request ID` must be the digest of this request (client, redirect URI, state, PKCE challenge,
resource, scope, service), so a signature given to one client's request cannot authorize another
client, another redirect or another code challenge. Then it answers where the page sends the
browser: the redirect URI with a single-use code valid for `CODE_TTL` seconds, `state` and `iss`.

Until the client and its exact redirect URI are known, a refusal is problem JSON and never a
redirect (an open redirector otherwise); after that, refusals go back to the client's redirect URI
as RFC 6749 §4.1.2.1 errors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from gateway.config.model import ServiceConfig
from gateway.oauth.clients import Client, ClientRegistry
from gateway.oauth.errors import RedirectError, oauth_error
from gateway.oauth.metadata import AUTHORIZE_PATH

CODE_TTL = 60.0  # seconds: a code is for the client's immediate exchange (OAuth 2.1 §4.1.2 "short")
PARAMS = ("response_type", "client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method",
          "resource", "scope")
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256, no padding
STATE = re.compile(r"[\x20-\x7e]{1,1024}")
SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")  # RFC 6749 §3.3
_STATEMENT_UNSAFE = re.compile(r"[^A-Za-z0-9 ._~!$&'()*+,;=:/?#@\[\]-]")


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked request: everything the code will be bound to."""

    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str | None  # None: a confidential client exempt from PKCE (`require_pkce: false`)
    resource: str
    scope: str | None
    service: str

    def digest(self) -> str:
        """What the subscriber's signature is bound to (the message's `Request ID`)."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(hashlib.sha256(b"gateway-oauth-request:" + canonical).digest()).decode().rstrip("=")

    def params(self) -> dict[str, str]:
        """The query that makes this request again (what the page posts back)."""
        out = {"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
               "state": self.state, "resource": self.resource}
        if self.code_challenge is not None:
            out |= {"code_challenge": self.code_challenge, "code_challenge_method": "S256"}
        return out | ({"scope": self.scope} if self.scope else {})


def single_values(params: Mapping[str, list[str]]) -> dict[str, str]:
    """One value per known parameter; Problem 400 for a repeated one (RFC 6749 §3.1)."""
    out = {}
    for name in PARAMS:
        values = params.get(name) or []
        if len(values) > 1:
            # Why refuse: which copy the client meant (and which we checked) would be a guess.
            raise oauth_error(400, "invalid_request", f"{name} is given more than once")
        if values:
            out[name] = values[0]
    return out


async def check_request(params: Mapping[str, str], service: ServiceConfig, base: str,
                        registry: ClientRegistry) -> tuple[AuthorizationRequest, Client]:
    """The request, checked; Problem (client or redirect URI wrong) or RedirectError (anything else)."""
    client = await registry.find(params.get("client_id"))
    redirect_uri = params.get("redirect_uri")
    if not redirect_uri:
        # Why required even with one registered URI: the token request must repeat it exactly.
        raise oauth_error(400, "invalid_request", "redirect_uri is required")
    if not client.allows_redirect(redirect_uri):
        # Why no redirect: a URI the client never registered may be anyone's (open redirect, code theft).
        raise oauth_error(400, "invalid_request", "redirect_uri is not one of this client's redirect URIs")
    state = params.get("state")
    if params.get("response_type") != "code":
        raise RedirectError("unsupported_response_type", "response_type must be code",
                       state if state and STATE.fullmatch(state) else None)
    if state is None or not STATE.fullmatch(state):
        # Why required: it is the client's only defence against a forged callback (CSRF).
        raise RedirectError("invalid_request", "state is required (1 to 1024 printable ASCII characters)")
    method, challenge = params.get("code_challenge_method"), params.get("code_challenge")
    exempt = not client.require_pkce and method is None and challenge is None
    if not exempt and (method != "S256" or challenge is None):
        # Why S256 only: `plain` gives the code's thief the verifier; no PKCE gives them the code.
        raise RedirectError("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256", state)
    if challenge is not None and not CHALLENGE.fullmatch(challenge):
        raise RedirectError("invalid_request", "code_challenge must be a base64url SHA-256 (43 characters)", state)
    scope = params.get("scope") or None
    if scope is not None and not SCOPE.fullmatch(scope):
        raise RedirectError("invalid_scope", "scope must be space-separated RFC 6749 scope tokens", state)
    resource = resource_of(params.get("resource"), service, base)
    if resource is None:
        # Why: a token is only ever for this service (RFC 8707); one for elsewhere is not ours to make.
        raise RedirectError("invalid_target", f"resource must be {base} or this service's MCP URL", state)
    return AuthorizationRequest(client.client_id, redirect_uri, state, challenge, resource, scope, service.id), client


def resource_of(requested: str | None, service: ServiceConfig, base: str) -> str | None:
    """The resource a token will be for: the requested one if it is this service (its URL or its
    MCP URL, on the host the client used), the service's URL when none is named; None otherwise."""
    if requested is None:
        return base
    accepted = {base} | ({base + service.mcp.path} if service.mcp else set())
    candidate = requested.rstrip("/")  # `https://host/` and `https://host` name the same resource
    return candidate if candidate in accepted else None


def statement(client: Client, service: ServiceConfig) -> str:
    """The sentence the wallet shows: who asks, for what (EIP-4361 statement characters only)."""
    name = _STATEMENT_UNSAFE.sub("", client.name)[:80].strip() or "a client"
    return f"Allow {name} to call {service.id} for you, paying with your credits."


def page_data(request: AuthorizationRequest, client: Client, service: ServiceConfig, base: str,
              chain_id: int, plan: dict[str, Any], deny_url: str) -> dict[str, Any]:
    """What the consent page shows and signs (embedded in it as JSON)."""
    return {
        "client": {"name": client.name, "id": client.client_id, "kind": client.kind,
                   "redirect": request.redirect_uri},
        "service": service.id, "resource": request.resource, "plan": plan.get("plan"),
        "siwe": {"statement": statement(client, service), "uri": base + AUTHORIZE_PATH, "chain_id": chain_id,
                 "request_id": request.digest(), "resources": [request.resource]},
        "params": request.params(), "deny_url": deny_url,
    }
