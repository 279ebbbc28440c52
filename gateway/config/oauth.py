"""The `oauth` section: the gateway's OAuth 2.1 authorization server (`gateway.oauth`).

```yaml
oauth:
  access_token_ttl: 1h              # short-lived; clients renew them with their refresh token
  refresh_token_ttl: 30d
  registration: true                # RFC 7591 dynamic client registration (public clients only)
  client_metadata_documents: true   # HTTPS client_id URLs whose JSON names the redirect URIs
  metadata_private_addresses: false # such a URL may not resolve to loopback/private addresses
  clients:                          # confidential clients (GPT Actions): id, secret, redirect URIs
    - client_id: chatgpt
      secret_file: secrets/chatgpt-oauth-secret
      redirect_uris: ["https://chat.openai.com/aip/g-123/oauth/callback"]
      require_pkce: false           # GPT Actions send no PKCE; every other client must (S256)
```

Every problem is reported with its path, as for the other sections; a secret never appears in one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config import values as v
from gateway.config.model import OAuthClientConfig, OAuthConfig
from gateway.config.nodes import Node
from gateway.config.secret_files import inline_or_file

MIN_SECRET = 32  # bytes: a client secret is a password an attacker may guess offline at the token endpoint
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
UNSAFE_SCHEMES = ("javascript", "data", "file", "vbscript", "about", "blob", "filesystem", "view-source")


def boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise ValueError(f"must be true or false (got {raw!r})")


def redirect_uri(raw: Any) -> str:
    """An absolute redirect URI: https, http on a loopback host, or a native app's own scheme
    (RFC 8252); no fragment, no user info. Used for configured clients, registrations and metadata
    documents alike."""
    uri = v.non_empty(raw)
    parts = urlsplit(uri)
    if len(uri) > 2000 or not uri.isprintable() or " " in uri:
        raise ValueError("a redirect URI is at most 2000 printable characters without spaces")
    if parts.fragment or "#" in uri:
        raise ValueError(f"a redirect URI has no fragment (RFC 6749 §3.1.2): {uri}")
    if "@" in parts.netloc:
        raise ValueError(f"a redirect URI has no user info: {uri}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"a redirect URI's port must be a number: {uri}") from None
    # Why only https (or loopback http): the code travels in this URL; plain http would expose it.
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return uri
    # Native apps' private-use schemes (RFC 8252 §7.1: `cursor://...`, `com.example.app:/cb`); never
    # one a browser runs or reads locally, and never plain http to another host.
    if parts.scheme and parts.scheme not in ("http", "https", *UNSAFE_SCHEMES) and parts.path:
        return uri
    raise ValueError(f"a redirect URI is https://..., http:// on 127.0.0.1, [::1] or localhost, or an app's own scheme (got {uri})")


def _client_id(raw: Any) -> str:
    text = v.non_empty(raw)
    # Why: an https client_id is a Client ID Metadata Document URL; a configured client must not shadow one.
    if "://" in text or len(text) > 200 or not text.isprintable() or " " in text:
        raise ValueError("a client id is printable text without spaces or '://', at most 200 characters")
    return text


def _secret(raw: Any) -> str:
    text = v.non_empty(raw)
    if len(text.encode()) < MIN_SECRET:
        raise ValueError(f"must be at least {MIN_SECRET} bytes")
    return text


def parse_oauth(node: Node | None, base_dir: Path, has_own_issuer: bool) -> OAuthConfig:
    if node is None:
        return OAuthConfig()
    clients = []
    for i, raw in enumerate(node.get("clients", v.list_of(lambda x: x), []) or []):
        c = Node(raw, node.at(f"clients[{i}]"), node.problems)
        clients.append(OAuthClientConfig(
            client_id=c.get("client_id", _client_id) or "",
            secret=inline_or_file(c, "secret", _secret, base_dir) or "",
            redirect_uris=tuple(c.get("redirect_uris", v.list_of(redirect_uri, min_items=1)) or ()),
            name=c.get("name", v.non_empty, None),
            # Why a client may go without PKCE: GPT Actions cannot send it; a confidential client's
            # code is still useless without its secret (RFC 9700 §2.1.1 recommends, not requires, it).
            require_pkce=c.get("require_pkce", boolean, True),
        ))
        c.done()
    ids = [c.client_id for c in clients]
    if len(set(ids)) != len(ids):
        node.problems.append(f"{node.at('clients')}: a client_id is listed twice")
    config = OAuthConfig(
        enabled=node.get("enabled", boolean, True),
        access_token_ttl=node.get("access_token_ttl", v.duration, OAuthConfig.access_token_ttl),
        refresh_token_ttl=node.get("refresh_token_ttl", v.duration, OAuthConfig.refresh_token_ttl),
        registration=node.get("registration", boolean, True),
        client_metadata_documents=node.get("client_metadata_documents", boolean, True),
        metadata_private_addresses=node.get("metadata_private_addresses", boolean, False),
        clients=tuple(clients),
    )
    for key in ("access_token_ttl", "refresh_token_ttl"):
        if (getattr(config, key) or 0) <= 0 and node.value.get(key) not in (None, ""):
            node.problems.append(f"{node.at(key)}: must be positive")
    if clients and not has_own_issuer:
        # Why: OAuth tokens are the own issuer's JWTs; without it there is nothing to sign them with.
        node.problems.append(f"{node.at('clients')}: needs tokens.own (the OAuth server signs its tokens with it)")
    node.done()
    return config
