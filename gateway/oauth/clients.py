"""Who may ask for tokens: the three kinds of OAuth clients, and their redirect URIs.

- **Configured** (`oauth.clients`): confidential clients such as GPT Actions, with a secret read
  from a file; they authenticate at the token endpoint (HTTP Basic or `client_secret_post`).
- **Client ID Metadata Documents**: a `client_id` that is an HTTPS URL names the JSON describing
  the client (`metadata_documents`, fetched with bounds). Public clients: PKCE is their proof.
- **Dynamically registered** (RFC 7591, `POST /.gateway/oauth/register`): public clients, stored
  in the OAuth store (`store`); a registration asks for nothing and grants nothing but a client id
  bound to its redirect URIs: tokens still need the subscriber's signature.

Redirect URIs are compared exactly (OAuth 2.1 §4.1.1), except that a loopback IP redirect
(`http://127.0.0.1:PORT/...`, `http://[::1]:PORT/...`) may use any port (RFC 8252 §7.3).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from gateway.config.model import OAuthConfig
from gateway.config.oauth import redirect_uri
from gateway.http import client_json
from gateway.oauth.errors import oauth_error
from gateway.oauth.metadata_documents import DocumentRefused, MetadataDocuments
from gateway.oauth.store import OAuthStore

MAX_REDIRECT_URIS = 10
GRANT_TYPES = ("authorization_code", "refresh_token")


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    kind: str                      # configured | metadata_document | registered
    secret: str | None = None      # configured clients only
    require_pkce: bool = True      # only a configured confidential client may be exempt

    def allows_redirect(self, uri: str) -> bool:
        if uri in self.redirect_uris:
            return True
        loopback = _loopback_without_port(uri)
        # Why any port on loopback IPs only: a native app gets a free port from the OS at run time
        # (RFC 8252 §7.3); nothing but that machine answers there.
        return loopback is not None and any(_loopback_without_port(r) == loopback for r in self.redirect_uris)

    def secret_matches(self, presented: str) -> bool:
        # Why compare_digest: no timing oracle on the client secret.
        return self.secret is not None and hmac.compare_digest(self.secret.encode(), presented.encode())


def _loopback_without_port(uri: str) -> tuple[str, str, str, str] | None:
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "::1"):
        return None
    return parts.scheme, parts.hostname, parts.path, parts.query


class ClientRegistry:
    def __init__(self, config: OAuthConfig, store: OAuthStore, documents: MetadataDocuments | None,
                 clock: Callable[[], float]) -> None:
        self._configured = {c.client_id: Client(c.client_id, c.name or c.client_id, c.redirect_uris, "configured",
                                                c.secret, c.require_pkce) for c in config.clients}
        self._store, self._documents, self._clock = store, documents, clock
        self.registration = config.registration

    async def find(self, client_id: str | None) -> Client:
        """The client with this id; Problem 400/401 `invalid_client` when there is none."""
        if not client_id:
            raise oauth_error(400, "invalid_request", "client_id is required")
        if client_id in self._configured:
            return self._configured[client_id]
        if client_id.startswith("https://"):
            if self._documents is None:
                raise oauth_error(400, "invalid_client", "client metadata documents are not accepted here")
            try:
                document = await self._documents.get(client_id)
            except DocumentRefused as exc:
                raise oauth_error(400, "invalid_client", str(exc)) from None
            return Client(document.client_id, document.name, document.redirect_uris, "metadata_document")
        stored = await self._store.client(client_id) if len(client_id) <= 100 else None
        if stored is None:
            raise oauth_error(400, "invalid_client", "unknown client_id")
        return Client(client_id, stored["client_name"], tuple(stored["redirect_uris"]), "registered")

    async def register(self, body: bytes) -> dict[str, Any]:
        """RFC 7591 §3: register a public client; its information (§3.2.1) to answer 201 with."""
        if not self.registration:
            raise oauth_error(404, "endpoint_not_exposed", "dynamic client registration is turned off here")
        data = client_json.loads(body, "send the client metadata as a JSON object (RFC 7591)")
        if not isinstance(data, dict):
            raise oauth_error(400, "invalid_client_metadata", "the client metadata must be a JSON object")
        uris = data.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            raise oauth_error(400, "invalid_redirect_uri", f"redirect_uris: 1 to {MAX_REDIRECT_URIS} URIs")
        try:
            checked = [redirect_uri(uri) for uri in uris]
        except (ValueError, TypeError) as exc:
            raise oauth_error(400, "invalid_redirect_uri", str(exc)) from None
        grants = data.get("grant_types", list(GRANT_TYPES))
        if not isinstance(grants, list) or not grants or any(g not in GRANT_TYPES for g in grants):
            raise oauth_error(400, "invalid_client_metadata", f"grant_types: only {', '.join(GRANT_TYPES)}")
        if data.get("response_types", ["code"]) != ["code"]:
            raise oauth_error(400, "invalid_client_metadata", 'response_types: only ["code"]')
        name = data.get("client_name")
        if name is not None and not (isinstance(name, str) and name.isprintable() and 0 < len(name) <= 200):
            raise oauth_error(400, "invalid_client_metadata", "client_name: printable text, at most 200 characters")
        now = self._clock()
        client_id = "dcr_" + secrets.token_urlsafe(24)
        record = {"client_name": name or "an unnamed client", "redirect_uris": checked, "grant_types": grants}
        await self._store.add_client(client_id, record, now)
        # Why "none" whatever was asked: registered clients are public (no secret to leak or store);
        # PKCE binds their codes (RFC 7591 §3.2.1 lets the server replace requested values).
        return {"client_id": client_id, "client_id_issued_at": int(now), "client_name": record["client_name"],
                "redirect_uris": checked, "grant_types": grants, "response_types": ["code"],
                "token_endpoint_auth_method": "none"}
