"""WebSocket proxying, after the same route/auth/plan checks as any request.

The upstream handshake happens first (with the cleaned headers and the owner's
credential); only when it succeeds is the client's upgrade accepted, with the
subprotocol the upstream chose. Messages are then pumped both ways until one
side closes.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from gateway.http.upstream import UPSTREAM_ERRORS, upstream_problem

# The handshake headers aiohttp's ws_connect sets itself.
_HANDSHAKE = frozenset(
    h.lower() for h in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Content-Length")
)


def is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket" and request.method == "GET"


async def proxy_websocket(
    request: web.Request, session: aiohttp.ClientSession, url: URL, headers: CIMultiDict[str], timeout: float,
    on_open: Callable[[], Awaitable[dict[str, str]]] | None = None,
) -> web.WebSocketResponse:
    """Proxy one WebSocket; `on_open` runs once the upstream accepted (it charges the call) and
    returns headers for the client's handshake answer."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    upstream_headers = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HANDSHAKE)
    ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
    try:
        upstream = await session.ws_connect(
            ws_url, headers=upstream_headers, protocols=protocols, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout),
            autoping=True,
        )
    except UPSTREAM_ERRORS as exc:  # a refused upgrade (WSServerHandshakeError) included
        # No `timeout` in the detail: the handshake is bounded by the session, not the service's timeout.
        raise upstream_problem(exc) from None

    try:
        extra = await on_open() if on_open else {}
    except BaseException:
        await upstream.close()
        raise
    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), autoping=True)
    client.headers.update(extra)
    await client.prepare(request)
    try:
        await asyncio.gather(_pump(client, upstream), _pump(upstream, client))
    finally:
        await upstream.close()
        await client.close()
    return client


async def _pump(source, sink) -> None:
    """Copy messages from source to sink; a close on one side closes the other."""
    async for msg in source:
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
            break
    code = source.close_code
    # 1005/1006/1015 are reserved for "no code"/"abnormal": they must never be sent.
    await sink.close(code=code if code and 1000 <= code < 5000 and code not in (1005, 1006, 1015) else 1000)
