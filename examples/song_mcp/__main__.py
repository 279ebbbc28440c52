"""Command line: ``python -m examples.song_mcp --port 9100 --token SECRET``.

Prints ``song-mcp listening on http://HOST:PORT/mcp`` once the port accepts connections (with
``--port 0`` the port the system chose), then serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import uvicorn

from .server import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.song_mcp", description="Run the Song tools MCP server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--token", default=os.environ.get("SONG_MCP_TOKEN"),
                        help="bearer secret callers must send (default: $SONG_MCP_TOKEN)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is required: --token or $SONG_MCP_TOKEN")
    try:
        # Bound and listening before the line is printed: a client that reads it can connect.
        sock = socket.create_server((args.host, args.port))
    except OSError as exc:
        print(f"song-mcp: {exc}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    print(f"song-mcp listening on http://{host}:{port}/mcp", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(args.token), log_level="warning", lifespan="on"))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
