"""OAuth refusals: RFC 6749 §5.2 error JSON that is also an RFC 9457 problem.

`oauth_error` raises a `Problem` whose code is the OAuth error code and whose body also carries
`error` and `error_description`, so an OAuth client reads the RFC 6749 members and everything
else reads the problem members. The authorization endpoint redirects its errors to the client
once the redirect URI is known to be the client's (`redirect_error`); before that it never
redirects (RFC 6749 §4.1.2.1: an open redirector otherwise).
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

from gateway.http.problems import Problem


def oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Problem:
    return Problem(status, error, description, extra={"error": error, "error_description": description},
                   headers={"Cache-Control": "no-store", **(headers or {})})


def with_query(uri: str, params: dict[str, str]) -> str:
    """`uri` with `params` added to its query (its own query kept, RFC 6749 §3.1.2)."""
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class RedirectError(Exception):
    """An authorization request refused after its redirect URI was verified: sent back to the client."""

    def __init__(self, error: str, description: str, state: str | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.state = error, description, state

    def location(self, redirect_uri: str, issuer: str) -> str:
        params = {"error": self.error, "error_description": self.description, "iss": issuer}
        if self.state is not None:
            params["state"] = self.state
        return with_query(redirect_uri, params)
