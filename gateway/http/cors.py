"""Cross-origin calls from browsers (per service `cors: {origins: [...]}`).

For a service with `cors`, the gateway owns CORS: it answers preflights itself (a preflight never
carries a token, so it must not reach the token check), puts the CORS headers on every answer
to an allowed origin (refusals included, so a web app can read a 402's terms), exposes the
credit headers, and drops the upstream's own Access-Control-* headers. CORS is not access
control: a request from an origin not listed is still decided as usual, the browser just
keeps the answer from the page. Services without `cors` are untouched (preflights are
classified and forwarded like any request).
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.config.model import CorsConfig
from gateway.http.problems import Problem

ALLOW_HEADERS = ("Authorization", "Content-Type", "Accept", "X-Request-Id", "Last-Event-ID",
                 "Mcp-Session-Id", "Mcp-Protocol-Version", "Mcp-Method", "Mcp-Name", "Payment-Signature")
EXPOSE_HEADERS = ("X-Credits-Charged", "X-Credits-Remaining", "X-Request-Id", "Payment-Required",
                  "Payment-Response", "WWW-Authenticate", "Mcp-Session-Id")
UPSTREAM_CORS = frozenset({
    "access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-methods",
    "access-control-allow-headers", "access-control-expose-headers", "access-control-max-age",
})


def is_preflight(request: web.Request) -> bool:
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


def requested_method(request: web.Request) -> str:
    """The method a preflight asks about ("" when it names none)."""
    return request.headers.get("Access-Control-Request-Method", "").strip().upper()


def allowed_origin(cors: CorsConfig, origin: str | None) -> str | None:
    """What Access-Control-Allow-Origin says for `origin`, or None when it is not allowed."""
    if not origin:
        return None
    if "*" in cors.origins:
        return "*"
    return origin if origin.lower() in cors.origins else None


def answer_headers(cors: CorsConfig | None, request: web.Request) -> dict[str, str] | None:
    """The CORS headers of this request's answer, whatever the answer turns out to be (kept in
    the request's scope); None for a service without `cors` (its answers are untouched)."""
    if cors is None:
        return None
    allow = allowed_origin(cors, request.headers.get("Origin"))
    headers = {"Vary": "Origin"} if "*" not in cors.origins else {}
    if allow is not None:
        headers["Access-Control-Allow-Origin"] = allow
        headers["Access-Control-Expose-Headers"] = ", ".join((*EXPOSE_HEADERS, *cors.expose_headers))
    return headers


def relay_headers(headers: dict[str, str] | None,
                  upstream: CIMultiDictProxy[str]) -> tuple[dict[str, str], frozenset[str]]:
    """For a relayed answer: the CORS headers to add (`Vary` merged with the upstream's own) and
    the upstream headers to drop (with `cors` configured, the gateway's say is the only one)."""
    if headers is None:
        return {}, frozenset()
    merged = dict(headers)
    if "Vary" in merged and upstream.get("Vary"):
        merged["Vary"] = f"{upstream['Vary']}, Origin"
    return merged, UPSTREAM_CORS


def decorate(response: web.StreamResponse, headers: dict[str, str] | None) -> None:
    """Add the CORS headers to an answer that has not started yet (a relayed one carries them)."""
    if headers is not None and not response.prepared:
        for name, value in headers.items():
            current = response.headers.get(name)
            if current is None:
                response.headers[name] = value
            elif name == "Vary" and "origin" not in current.lower():
                response.headers[name] = f"{current}, {value}"


def preflight(cors: CorsConfig, request: web.Request, headers: dict[str, str], path: str,
              exposed: bool) -> web.Response:
    """Answer a preflight: 204 with what the browser may send, or a problem saying why not.

    `exposed`: whether the method the preflight asks about is exposed on `path` (the pipeline
    classified the request under that method)."""
    origin = request.headers.get("Origin")
    if allowed_origin(cors, origin) is None:
        raise Problem(403, "origin_not_allowed", f"origin {origin[:120]!r} may not call this service from a browser")
    method = requested_method(request)
    if not method or not exposed:
        # Why the same answer as the call itself would get: a preflight must not reveal more.
        raise Problem(404, "endpoint_not_exposed", f"{method or '(no method)'} {path} is not exposed")
    answer = dict(headers)
    answer.update({
        "Access-Control-Allow-Methods": method,
        "Access-Control-Allow-Headers": ", ".join((*ALLOW_HEADERS, *cors.allow_headers)),
        "Access-Control-Max-Age": str(int(cors.max_age)),
    })
    if "Vary" in answer:
        answer["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    return web.Response(status=204, headers=answer)
