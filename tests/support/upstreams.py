"""A small, controllable upstream for tests that need to hold an answer open.

`/echo/...` answers with exactly what it received; `/hold` answers only once `release()` is called; `/sse` sends its first event
at once and the rest only after `release()`, so a test can prove that the first
event crossed the gateway while the upstream was still busy. Synchronization
is by asyncio.Event, never by sleeping.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve an aiohttp app on a free loopback port: its runner (to clean up) and its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


class HeldUpstream:
    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.requests: list[web.Request] = []
        self.finished = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def release(self) -> None:
        self.released.set()

    async def _hold(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        await self.released.wait()
        return web.json_response({"held": True})

    async def _echo(self, request: web.Request) -> web.Response:
        """What arrived, byte for byte: method, raw target, headers, body."""
        body = await request.read()
        return web.json_response({"method": request.method, "raw_path": request.raw_path,
                                  "headers": list(request.headers.items()), "body": body.decode(errors="replace"),
                                  "chunked": "chunked" in request.headers.get("Transfer-Encoding", "")})

    async def _priced(self, request: web.Request) -> web.Response:
        """Reports its own price, like a metered AI API: `X-Credits-Consumed: <n>`."""
        self.requests.append(request)
        return web.json_response({"priced": True}, headers={"X-Credits-Consumed": request.match_info["n"]})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b"event: first\ndata: 1\n\n")
        await self.released.wait()
        await resp.write(b"event: last\ndata: 2\n\n")
        await resp.write_eof()
        self.finished.set()
        return resp

    async def __aenter__(self) -> "HeldUpstream":
        app = web.Application()
        app.router.add_route("*", "/hold", self._hold)
        app.router.add_get("/sse", self._sse)
        app.router.add_route("*", "/echo/{tail:.*}", self._echo)
        app.router.add_post("/priced/{n}", self._priced)
        self._runner, self.url = await serve_app(app)
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()
        assert self._runner is not None
        await self._runner.cleanup()
