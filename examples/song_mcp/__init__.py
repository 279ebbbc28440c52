"""Song tools as an MCP server: the example upstream for selling MCP tools through the gateway.

Built with the official MCP Python SDK (`MCPServer`, Streamable HTTP, stateless) and served by
uvicorn. Run it with ``python -m examples.song_mcp --token SECRET``; see ``server.py``.
"""

from .server import create_app

__all__ = ["create_app"]
