"""Authorization server metadata (RFC 8414), per service host.

The issuer is the service's public URL as the client reached it, with a trailing slash (`https://
elvis.example.com/`): the form both official MCP SDKs normalise an issuer URL to, so their
string comparisons (RFC 8414 §3.3 metadata issuer, RFC 9207 `iss`) hold. The service's RFC 9728
metadata names the same URL (`http.mcp.resource_metadata`). Served at the two well-known paths MCP
clients try for a root issuer: `oauth-authorization-server` and `openid-configuration`.
"""

from __future__ import annotations

from typing import Any

from gateway.config.model import OAuthConfig

PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")
AUTHORIZE_PATH = "/.gateway/oauth/authorize"
TOKEN_PATH = "/.gateway/oauth/token"
REGISTER_PATH = "/.gateway/oauth/register"


def issuer(base: str) -> str:
    return base.rstrip("/") + "/"


def document(base: str, config: OAuthConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": issuer(base),
        "authorization_endpoint": base + AUTHORIZE_PATH,
        "token_endpoint": base + TOKEN_PATH,
        "jwks_uri": base + "/.gateway/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        # Why S256 only: `plain` PKCE protects nothing against a stolen code (OAuth 2.1 §4.1.1).
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "client_id_metadata_document_supported": config.client_metadata_documents,
        "authorization_response_iss_parameter_supported": True,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "EdDSA"],
    }
    if config.registration:
        doc["registration_endpoint"] = base + REGISTER_PATH
    return doc
