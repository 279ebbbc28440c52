"""Upstreams that read requests the lenient way some real servers do, for edge tests.

`DoubleDecodingUpstream` decodes the request path twice and resolves dot segments, as IIS and
some servlet or proxy chains do: it records which path it served, so a test can prove that a
spelling the gateway let through as an open path never reached a protected one upstream.
`/headers` echoes every header it received (names and values, in order).
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

from aiohttp import web

from tests.support.upstreams import serve_app


class DoubleDecodingUpstream:
    def __init__(self) -> None:
        self.served: list[str] = []  # the path each request was served as, after two decodings
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        raw = request.raw_path.partition("?")[0]
        decoded = unquote(unquote(raw)).replace("\\", "/")
        path = posixpath.normpath(decoded) if decoded else "/"
        path = "/" + path.lstrip("/")
        self.served.append(path)
        return web.json_response({"served": path, "headers": list(request.headers.items()),
                                  "method": request.method})

    async def __aenter__(self) -> "DoubleDecodingUpstream":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner, self.url = await serve_app(app)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
