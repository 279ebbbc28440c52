"""Command line: ``python -m examples.song_plugin --port 9000 --token SECRET``.

Prints ``song-plugin listening on http://HOST:PORT`` once the port accepts connections (with
``--port 0`` the port the system chose), then serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from aiohttp import web

from .app import create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.song_plugin",
                                     description="Run the Song Summarizer example plugin.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--token", default=os.environ.get("SONG_PLUGIN_TOKEN"),
                        help="bearer secret callers must send (default: $SONG_PLUGIN_TOKEN)")
    parser.add_argument("--public-url", default=None,
                        help="base URL written into the manifest and OpenAPI document "
                             "(default: derived from each request's Host header)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is required: --token or $SONG_PLUGIN_TOKEN")
    return args


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(create_app(args.token, args.public_url))
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"song-plugin listening on http://{shown}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except OSError as exc:  # e.g. the port is taken
        print(f"song-plugin: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
