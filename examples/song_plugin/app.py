"""The Song Summarizer plugin server (aiohttp), deterministic and self-contained.

Everything except ``/.well-known/*``, ``/health``, ``/logo.png`` and ``/legal`` requires
``Authorization: Bearer <token>``: like a real plugin it trusts only its own secret, which the
gateway injects.  ``/debug/requests`` shows what the last requests looked like on arrival, so
tests can prove which headers the gateway forwarded.
"""

from __future__ import annotations

import collections
import hmac
from typing import Any

from aiohttp import WSMsgType, web

from . import discovery
from .api import SONGS, BadRequest, ask, delete, error, query, stream, summarize_song, upsert
from .songs import SEED_SONGS

MAX_RECORDED = 100

TOKEN = web.AppKey("token", str)
PUBLIC_URL = web.AppKey("public_url", object)  # str, or None: derived from each request
RECORDED = web.AppKey("recorded", collections.deque)


def multi_to_dict(pairs) -> dict[str, Any]:
    """Multidict -> dict; a repeated name (case-insensitive) becomes a list of its values."""
    out: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in pairs:
        name = names.setdefault(key.lower(), key)
        if name not in out:
            out[name] = value
        elif isinstance(out[name], list):
            out[name].append(value)
        else:
            out[name] = [out[name], value]
    return out


def base_url(request: web.Request) -> str:
    return request.app[PUBLIC_URL] or f"{request.scheme}://{request.host}"


# --- middleware: record, authenticate, JSON errors ---------------------------------------

@web.middleware
async def middleware(request: web.Request, handler):
    if not request.path.startswith("/debug/requests"):
        request.app[RECORDED].append({
            "method": request.method, "path": request.path,
            "query": multi_to_dict(request.query.items()),
            "headers": multi_to_dict(request.headers.items()),
        })
    unrouted = request.match_info.http_exception is not None
    open_path = getattr(request.match_info.handler, "public", False) or (
        unrouted and request.path.startswith("/.well-known/"))  # unknown well-known: plain 404
    if not open_path and not authorized(request):
        return web.json_response({"error": "unauthorized"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="song-plugin"'})
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        resp = error(exc.status, exc.reason.lower())
        if "Allow" in exc.headers:  # keep what a 405 must say
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


def authorized(request: web.Request) -> bool:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), request.app[TOKEN].encode())


def public(handler):
    """Mark a handler as reachable without the bearer token."""
    handler.public = True
    return handler


# --- handlers ------------------------------------------------------------------------------

@public
async def manifest(request: web.Request) -> web.Response:
    return web.json_response(discovery.manifest(base_url(request)))


@public
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=discovery.openapi_yaml(base_url(request)),
                        content_type="application/yaml")


@public
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@public
async def logo(request: web.Request) -> web.Response:
    return web.Response(body=discovery.LOGO_PNG, content_type="image/png")


@public
async def legal(request: web.Request) -> web.Response:
    return web.Response(text=discovery.LEGAL_TEXT)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(f"echo: {msg.data}")
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def status(request: web.Request) -> web.Response:
    raw = request.match_info["code"]
    if not (raw.isascii() and raw.isdigit()) or not 200 <= int(raw) <= 599:
        return error(400, "status code must be between 200 and 599")
    code = int(raw)
    if code in (204, 304):
        return web.Response(status=code)
    return web.json_response({"status": code}, status=code)


async def debug_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[RECORDED]))


async def clear_debug_requests(request: web.Request) -> web.Response:
    request.app[RECORDED].clear()
    return web.json_response({"cleared": True})


def create_app(token: str, public_url: str | None = None) -> web.Application:
    """Build the plugin app.

    ``token`` is the bearer secret every non-public call must carry.  ``public_url`` is the base
    URL written into the manifest and OpenAPI document; when None it is derived from each
    request's scheme and Host header.
    """
    if not token:
        raise ValueError("token must not be empty")
    app = web.Application(middlewares=[middleware])
    app[TOKEN] = token
    app[PUBLIC_URL] = public_url.rstrip("/") if public_url else None
    app[SONGS] = {song["id"]: dict(song) for song in SEED_SONGS}
    app[RECORDED] = collections.deque(maxlen=MAX_RECORDED)
    app.add_routes([
        web.get("/.well-known/ai-plugin.json", manifest),
        web.get("/.well-known/openapi.yaml", openapi),
        web.get("/health", health),
        web.get("/logo.png", logo),
        web.get("/legal", legal),
        web.post("/query", query),
        web.post("/ask", ask),
        web.post("/summarize/{song_id}", summarize_song),
        web.post("/upsert", upsert),
        web.delete("/delete", delete),
        web.get("/stream", stream),
        web.get("/ws", websocket),
        web.get("/status/{code}", status),
        web.get("/debug/requests", debug_requests),
        web.delete("/debug/requests", clear_debug_requests),
    ])
    return app
