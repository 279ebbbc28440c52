"""The floor the gateway's open path is measured against (issue 16): a bare aiohttp reverse proxy.

    python bench/bare_proxy.py --port PORT --upstream http://127.0.0.1:UPORT [--workers 2]

What it does per request, and nothing else: forward method, path + query, headers and body to the
upstream over ONE pooled `aiohttp.ClientSession` per process (keep-alive, no cookie jar, no
decompression, as the gateway's), read the whole answer, and return its status, body and
Content-Type. No rules, no header hygiene, no access log, no metrics. It runs on uvloop (as the
gateway does when uvloop is installed) in `--workers` processes that accept on ONE listening
socket bound by the parent before it forks: the same way the gateway's workers share its port
(`gateway.process.server.bind`, no SO_REUSEPORT), so the kernel hands out connections to both the
same way and the comparison is of the request handling alone.

Prints `listening on <port>` once every worker is serving. SIGTERM/SIGINT stop the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

import aiohttp
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gateway.process.parent_death import die_with_parent  # noqa: E402


def make_app(upstream: str) -> web.Application:
    app = web.Application(handler_args={"auto_decompress": False})
    key = web.AppKey("session", aiohttp.ClientSession)

    async def start(app: web.Application) -> None:
        app[key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=10_000, limit_per_host=0),
                                         auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())

    async def stop(app: web.Application) -> None:
        await app[key].close()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read() if request.body_exists else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with app[key].request(request.method, upstream + request.raw_path, headers=headers, data=body,
                                     allow_redirects=False) as resp:
            data = await resp.read()
            return web.Response(status=resp.status, body=data,
                                headers={"Content-Type": resp.headers.get("Content-Type", "application/octet-stream")})

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(sock: socket.socket, upstream: str, ready_fd: int) -> None:
    runner = web.AppRunner(make_app(upstream), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=2048).start()
    os.write(ready_fd, b"r")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def run_worker(sock: socket.socket, upstream: str, ready_fd: int) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(sock, upstream, ready_fd))
    else:
        uvloop.run(serve(sock, upstream, ready_fd))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8081")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(2048)
    read_fd, write_fd = os.pipe()
    # Why block first: a SIGTERM between fork and the worker's handler would kill it half started.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    pids, parent = [], os.getpid()
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            die_with_parent(parent)  # never outlive the parent (a benchmark killed mid-run)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            run_worker(sock, args.upstream.rstrip("/"), write_fd)
            os._exit(0)
        pids.append(pid)
    os.close(write_fd)
    ready = 0
    while ready < args.workers:  # one byte per worker serving; EOF means every worker died
        got = os.read(read_fd, args.workers)
        if not got:
            print("bare proxy: a worker exited before serving", file=sys.stderr, flush=True)
            return 1
        ready += len(got)
    print(f"listening on {args.port} ({args.workers} workers)", flush=True)
    sig = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    for pid in pids:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
