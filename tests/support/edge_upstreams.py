"""Upstreams for the edge tests (money timing, compressed bodies), each a real aiohttp server.

`WorkUpstream` `/work`: reads the whole request body, records it as applied (the paid work is
done), then answers 200 only once `release()` is called, so that a test can make the client leave
between "the upstream has the request" and "the status line". `RawEchoUpstream` `/echo/...`:
answers with exactly the bytes and headers that arrived, never decompressing a request body.
Synchronization is by asyncio.Event, never by sleeping.
"""

from __future__ import annotations

import asyncio
import base64

from aiohttp import web

from tests.support.upstreams import serve_app


class WorkUpstream:
    def __init__(self) -> None:
        self.applied: list[bytes] = []     # bodies of calls whose work was done
        self.arrived = asyncio.Event()     # a complete request arrived (and was applied)
        self.released = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def release(self) -> None:
        self.released.set()

    async def _work(self, request: web.Request) -> web.Response:
        body = await request.read()  # the whole request: the work is done on it
        self.applied.append(body)
        self.arrived.set()
        await self.released.wait()
        return web.json_response({"applied": len(body)})

    async def __aenter__(self) -> "WorkUpstream":
        app = web.Application()
        app.router.add_route("*", "/work", self._work)
        self._runner, self.url = await serve_app(app)
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()
        assert self._runner is not None
        await self._runner.cleanup()


class RawEchoUpstream:
    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    @staticmethod
    async def _echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"headers": list(request.headers.items()),
                                  "body_b64": base64.b64encode(body).decode()})

    async def __aenter__(self) -> "RawEchoUpstream":
        app = web.Application(handler_args={"auto_decompress": False})  # the bytes as they came
        app.router.add_route("*", "/echo/{tail:.*}", self._echo)
        self._runner, self.url = await serve_app(app)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
