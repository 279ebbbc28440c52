"""A small SSE upstream for bench/scale.py: holds many streams open, then sends their events slowly.

    python bench/sse_upstream.py --port P --events N --interval S

- `GET /events?stream=<id>`: `text/event-stream`. Event 0 is sent at once; the stream is then held
  (no bytes) until `POST /release`; then events 1..N-1 follow, `--interval` seconds apart, and the
  stream ends. Each event is `id: <seq>` + `data: <stream id> <seq>`, so the client can check that
  every event of every stream arrived, in order.
- `GET /stats`: `{open, max_open, started, completed, events_sent, released}`.
- `POST /release`: let every held stream (and every later one) go on.
- any other `GET`: a small fixed JSON body (the plain protected calls of the eth_call checks).

Prints `sse upstream listening on http://127.0.0.1:P` when ready. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

PLAIN_BODY = b'{"ok":true,"from":"sse upstream"}'


def build_app(events: int, interval: float) -> web.Application:
    app = web.Application()
    stats = {"open": 0, "max_open": 0, "started": 0, "completed": 0, "events_sent": 0, "released": False}
    released = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        sid = request.query.get("stream", "?")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        stats["started"] += 1
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        try:
            for seq in range(events):
                if seq == 1:
                    await released.wait()
                elif seq > 1:
                    await asyncio.sleep(interval)  # pacing: "events sent slowly", not synchronization
                await resp.write(f"id: {seq}\ndata: {sid} {seq}\n\n".encode())
                stats["events_sent"] += 1
            await resp.write_eof()
            stats["completed"] += 1
        finally:
            stats["open"] -= 1
        return resp

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def release(request: web.Request) -> web.Response:
        released.set()
        stats["released"] = True
        return web.json_response(stats)

    async def plain(request: web.Request) -> web.Response:
        return web.Response(body=PLAIN_BODY, content_type="application/json")

    app.router.add_get("/events", stream)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/release", release)
    app.router.add_get("/{tail:.*}", plain)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--events", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.5)
    args = p.parse_args()

    async def serve() -> None:
        runner = web.AppRunner(build_app(args.events, args.interval), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096).start()
        print(f"sse upstream listening on http://127.0.0.1:{args.port}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
