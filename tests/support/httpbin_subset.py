"""The httpbin endpoints the forwarding tests use, as httpbin answers them, run in its own process.

Why not PyPI's httpbin: 0.10.4 (the last release) requires greenlet<3 on Python < 3.12 without
importing it, and every Playwright newer than 1.38 requires greenlet>=3: the two cannot share one
locked, hash-checked environment. What the tests need from httpbin is small and documented
(https://httpbin.org), so this module serves exactly that, with httpbin's JSON shapes:

  ANY /anything[/...]           {"method", "url", "args", "headers", "data"}
  GET /headers                  {"headers"}: every request header, names in Title-Case like httpbin
  GET /status/<code>            an empty answer with that status (302 with a Location, as httpbin)
  GET /gzip                     {"gzipped": true, "method", "headers"}, gzip-coded, with its length
  GET /response-headers?K=V...  each query pair as an answer header, and as JSON
  GET /stream-bytes/<n>         n seeded random bytes (?seed=, ?chunk_size=), chunked

httpbin hides the X-Forwarded-* family unless `?show_env=1`; this echo always shows every header,
which only makes the tests that check those headers stricter.

Run: `python -m tests.support.httpbin_subset PORT`; it prints `httpbin subset ready on URL`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import sys

from aiohttp import web


def _headers(request: web.Request) -> dict[str, str]:
    # httpbin reads headers through WSGI, which spells each name in Title-Case and joins repeats.
    seen: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        seen.setdefault(name.title(), []).append(value)
    return {name: ",".join(values) for name, values in seen.items()}


async def anything(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"method": request.method, "url": str(request.url), "args": dict(request.query),
                              "headers": _headers(request), "data": body.decode("utf-8", "replace")})


async def headers(request: web.Request) -> web.Response:
    return web.json_response({"headers": _headers(request)})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    extra = {"Location": "/redirect/1"} if code in (301, 302, 303, 305, 307) else {}
    return web.Response(status=code, headers=extra)


async def gzipped(request: web.Request) -> web.Response:
    payload = json.dumps({"gzipped": True, "method": request.method, "headers": _headers(request)}).encode()
    # The body is coded here, once, like httpbin's: the test checks those bytes arrive untouched.
    return web.Response(body=gzip.compress(payload), headers={"Content-Encoding": "gzip"},
                        content_type="application/json")


async def response_headers(request: web.Request) -> web.Response:
    answer = web.json_response({key: value for key, value in request.query.items()})
    for key, value in request.query.items():
        answer.headers.add(key, value)
    return answer


async def stream_bytes(request: web.Request) -> web.StreamResponse:
    n = min(int(request.match_info["n"]), 100 * 1024)  # httpbin's own cap
    rng = random.Random(request.query.get("seed"))
    chunk_size = max(int(request.query.get("chunk_size", 10 * 1024)), 1)
    answer = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    answer.enable_chunked_encoding()
    await answer.prepare(request)
    for start in range(0, n, chunk_size):
        await answer.write(bytes(rng.randint(0, 255) for _ in range(min(chunk_size, n - start))))
    await answer.write_eof()
    return answer


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/anything", anything)
    app.router.add_route("*", "/anything/{rest:.*}", anything)
    app.router.add_get("/headers", headers)
    app.router.add_get(r"/status/{code:\d{3}}", status)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/response-headers", response_headers)
    app.router.add_get(r"/stream-bytes/{n:\d+}", stream_bytes)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"httpbin subset ready on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()  # until the test session stops this process


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
