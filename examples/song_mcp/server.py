"""The Song tools MCP server (official MCP Python SDK), deterministic and self-contained.

Tools: ``search`` (songs matching words), ``summarize`` (a song's summary) and ``count_songs``.
Like a real paid service it trusts only its owner's secret (``Authorization: Bearer <token>``,
which the gateway injects in place of the subscriber's token). ``GET /debug/calls`` (same
secret) lists the tool runs and the subscriber the gateway named for each MCP request, so tests
can prove which tools ran and which did not.
"""

from __future__ import annotations

import collections
import hmac
import json
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from examples.song_plugin.songs import SEED_SONGS, search as search_songs, summarize as summarize_song

SONGS = {song["id"]: song for song in SEED_SONGS}


def create_app(token: str):
    """The ASGI app: the SDK's Streamable HTTP app at /mcp behind a bearer check, plus /debug/calls."""
    if not token:
        raise ValueError("token must not be empty")
    runs: collections.Counter[str] = collections.Counter()
    seen: list[dict[str, Any]] = []
    server = MCPServer("song-tools", instructions="Search songs and summarize their lyrics.")

    @server.tool()
    def search(query: str, top_k: int = 3) -> list[dict]:
        """Search songs by words in their title, artist or lyrics (best match first)."""
        runs["search"] += 1
        return search_songs(SONGS, query, top_k)

    @server.tool()
    def summarize(song_id: str) -> dict:
        """Summarize the lyrics of one song (its id comes from search)."""
        runs["summarize"] += 1
        if song_id not in SONGS:
            raise ValueError(f"unknown song: {song_id}")
        return summarize_song(SONGS[song_id])

    @server.tool()
    def count_songs() -> int:
        """How many songs the catalogue holds."""
        runs["count_songs"] += 1
        return len(SONGS)

    # Why no DNS-rebinding check here: the gateway routes by Host, and this server only answers
    # its owner's secret, which no browser page holds.
    mcp_app = server.streamable_http_app(
        stateless_http=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return await mcp_app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
            return await _json(send, 401, {"error": "unauthorized"}, {"www-authenticate": 'Bearer realm="song-mcp"'})
        if scope["path"] == "/debug/calls":
            return await _json(send, 200, {"runs": dict(runs), "seen": seen})
        if scope["method"] == "POST":
            seen.append({"subscriber": headers.get("x-gateway-subscriber"),
                         "service": headers.get("x-gateway-service")})
        return await mcp_app(scope, receive, send)

    return app


async def _json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})
