"""The token endpoint, `POST /.gateway/oauth/token` (OAuth 2.1 §3.2, RFC 7636 §4.6, RFC 6749 §5).

- `authorization_code`: the client is the one the code was issued to (a confidential client
  authenticates with its secret: HTTP Basic or `client_secret_post`; a public one names its
  `client_id`), the redirect URI is the one of the authorization request, the PKCE verifier hashes
  (S256) to the challenge, the code is unexpired and unused. A code presented twice revokes what
  the first use bought. Answers an access token (the own issuer's JWT, `aud` = the service and the
  requested resource, `oauth.access_token_ttl`) and a refresh token (opaque, stored hashed).
- `refresh_token`: same client and service; the token is rotated (a new one each use, the old one
  spent); presenting a spent one revokes its whole family. A family whose subscriber was revoked
  (`gateway token revoke --subscriber`), or one of whose access tokens was (`gateway token revoke
  JTI`), is revoked on its next refresh.
Every refusal is RFC 6749 §5.2 error JSON (also an RFC 9457 problem), never a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import uuid
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

from gateway.auth.issuer import OwnIssuer
from gateway.auth.revocation import RevocationList
from gateway.config.model import OAuthConfig, ServiceConfig
from gateway.oauth.clients import Client, ClientRegistry
from gateway.oauth.errors import oauth_error
from gateway.oauth.store import OAuthStore

VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 §4.1
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def token_hash(token: str) -> str:
    """What is stored for a code or refresh token: its SHA-256 (a database leak gives no usable token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_form(body: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body, one value per name; Problem 400 otherwise."""
    try:
        parsed = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded") from None
    repeated = [name for name, values in parsed.items() if len(values) > 1]
    if repeated:
        raise oauth_error(400, "invalid_request", f"{repeated[0]} is given more than once")
    return {name: values[0] for name, values in parsed.items()}


class TokenEndpoint:
    def __init__(self, config: OAuthConfig, issuer: OwnIssuer, registry: ClientRegistry, store: OAuthStore,
                 revocations: RevocationList | None, clock: Callable[[], float]) -> None:
        self.config, self.issuer, self.registry, self.store = config, issuer, registry, store
        self.revocations, self.clock = revocations, clock

    async def answer(self, form: dict[str, str], authorization: str | None, service: ServiceConfig) -> dict[str, Any]:
        client = await self._client(form, authorization)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return await self._code(form, client, service)
        if grant_type == "refresh_token":
            return await self._refresh(form, client, service)
        raise oauth_error(400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token")

    async def _client(self, form: dict[str, str], authorization: str | None) -> Client:
        """The authenticated (confidential) or named (public) client; Problem 401 `invalid_client`."""
        basic = _basic_credentials(authorization)
        if basic is not None and "client_secret" in form:
            raise oauth_error(400, "invalid_request", "use one client authentication method, not two")
        if basic is None and "client_secret" in form:
            basic = (form.get("client_id", ""), form["client_secret"])
        client_id = basic[0] if basic is not None else form.get("client_id")
        if basic is not None and form.get("client_id") not in (None, basic[0]):
            raise oauth_error(400, "invalid_request", "client_id differs from the authenticated client")
        try:
            client = await self.registry.find(client_id)
        except Exception:  # noqa: BLE001 - whatever is wrong with the id, the answer is the same
            raise _invalid_client("unknown client", basic is not None and authorization is not None) from None
        if client.secret is not None:
            # Why: a confidential client's code or refresh token is useless without its secret.
            if basic is None or not client.secret_matches(basic[1]):
                raise _invalid_client("client authentication failed", authorization is not None)
        elif basic is not None:
            raise _invalid_client("this client has no secret: send client_id alone", authorization is not None)
        return client

    async def _code(self, form: dict[str, str], client: Client, service: ServiceConfig) -> dict[str, Any]:
        code, verifier, redirect_uri = form.get("code"), form.get("code_verifier"), form.get("redirect_uri")
        if not code or not redirect_uri:
            raise oauth_error(400, "invalid_request", "code and redirect_uri are required")
        if (verifier is not None or client.require_pkce) and (verifier is None or not VERIFIER.fullmatch(verifier)):
            raise oauth_error(400, "invalid_request", "code_verifier is required (43-128 unreserved characters)")
        now = self.clock()
        status, family, grant = await self.store.take_code(token_hash(code), now)
        if status == "reused":
            raise oauth_error(400, "invalid_grant", "the code was already used; what it was exchanged for is revoked")
        if status != "ok" or grant is None or family is None:
            raise oauth_error(400, "invalid_grant", "the code is unknown or expired")
        # Why each: the code is bound to one client, one redirect URI, one PKCE challenge, one service.
        if grant["client_id"] != client.client_id:
            raise oauth_error(400, "invalid_grant", "the code was issued to another client")
        if grant["redirect_uri"] != redirect_uri:
            raise oauth_error(400, "invalid_grant", "redirect_uri differs from the authorization request's")
        if grant["service"] != service.id:
            raise oauth_error(400, "invalid_grant", "the code is for another service")
        if grant["code_challenge"] is None:
            # Why: a code without PKCE went only to an exempt confidential client (authenticated above);
            # a verifier for a code that has no challenge is a mix-up (OAuth 2.1 §4.1.3).
            if verifier is not None or client.secret is None:
                raise oauth_error(400, "invalid_grant", "this code was issued without PKCE")
        else:
            challenge = base64.urlsafe_b64encode(hashlib.sha256((verifier or "").encode()).digest()).decode()
            if verifier is None or not hmac.compare_digest(challenge.rstrip("="), grant["code_challenge"]):
                raise oauth_error(400, "invalid_grant", "code_verifier does not match the code_challenge")
        _same_resource(form, grant)
        access, jti = self._access_token(grant)
        refresh = secrets.token_urlsafe(32)
        await self.store.start_family(family, grant, token_hash(refresh), jti, now + self.config.refresh_token_ttl, now)
        return self._answer(access, refresh, grant)

    async def _refresh(self, form: dict[str, str], client: Client, service: ServiceConfig) -> dict[str, Any]:
        presented = form.get("refresh_token")
        if not presented:
            raise oauth_error(400, "invalid_request", "refresh_token is required")
        record = await self.store.refresh_token(token_hash(presented))
        if record is None:
            raise oauth_error(400, "invalid_grant", "unknown refresh token")
        grant = record.grant
        # Why before rotating: another client's (or service's) attempt must not spend the token.
        if grant["client_id"] != client.client_id or grant["service"] != service.id:
            raise oauth_error(400, "invalid_grant", "the refresh token was issued to another client or service")
        _same_resource(form, grant)
        now = self.clock()
        if await self._revoked(grant["subscriber"], record.family, record.access_jtis, record.family_created_at):
            await self.store.revoke_family(record.family, now)
            raise oauth_error(400, "invalid_grant", "the grant was revoked")
        access, jti = self._access_token(grant)
        refresh = secrets.token_urlsafe(32)
        status = await self.store.rotate(token_hash(presented), token_hash(refresh), jti,
                                         now + self.config.refresh_token_ttl, now)
        if status != "ok":
            detail = {"reused": "the refresh token was already used; its grant is revoked",
                      "revoked": "the grant was revoked", "expired": "the refresh token expired"}
            raise oauth_error(400, "invalid_grant", detail.get(status, "unknown refresh token"))
        return self._answer(access, refresh, grant)

    async def _revoked(self, subscriber: str, family: str, jtis: tuple[str, ...], created_at: float) -> bool:
        if self.revocations is None:
            return False
        # Why each jti: revoking any access token of a grant ends the grant (its refresh tokens too).
        for jti in (family, *jtis):
            if await self.revocations.is_revoked(subscriber, jti, created_at):
                return True
        return False

    def _access_token(self, grant: dict[str, Any]) -> tuple[str, str]:
        jti = uuid.uuid4().hex
        # Why both audiences: the service id is what every gateway name of the service accepts;
        # the resource is what the client asked for (RFC 8707), its MCP URL included.
        audience = list(dict.fromkeys([grant["service"], grant["resource"]]))
        return self.issuer.issue(grant["subscriber"], audience, ttl=self.config.access_token_ttl, jti=jti), jti

    def _answer(self, access: str, refresh: str, grant: dict[str, Any]) -> dict[str, Any]:
        answer = {"access_token": access, "token_type": "Bearer", "expires_in": int(self.config.access_token_ttl),
                  "refresh_token": refresh}
        return answer | ({"scope": grant["scope"]} if grant.get("scope") else {})


def _same_resource(form: dict[str, str], grant: dict[str, Any]) -> None:
    requested = form.get("resource")
    if requested is not None and requested.rstrip("/") != grant["resource"]:
        # Why: the token is for the resource the subscriber agreed to, never another (RFC 8707 §2.2).
        raise oauth_error(400, "invalid_target", "resource differs from the authorization request's")


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise oauth_error(401, "invalid_client", "malformed Basic credentials",
                          {"WWW-Authenticate": 'Basic realm="oauth"'}) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise oauth_error(401, "invalid_client", "malformed Basic credentials", {"WWW-Authenticate": 'Basic realm="oauth"'})
    return unquote(client_id), unquote(secret)  # RFC 6749 §2.3.1: form-urlencoded, then Basic


def _invalid_client(description: str, used_basic: bool) -> Exception:
    headers = {"WWW-Authenticate": 'Basic realm="oauth"'} if used_basic else None
    return oauth_error(401, "invalid_client", description, headers)
