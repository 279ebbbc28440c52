"""MCP behind the gateway: a config for service `elvis` in front of an MCP upstream (the example
Song tools server, `examples.song_mcp`, started by the `mcp_upstream` fixture) and raw JSON-RPC
messages."""

from __future__ import annotations

from tests.support.stack import Plugin, base_config


TOOLS = {"search": 2, "summarize": {"credits": 5}}  # count_songs: the default (1)
OPERATOR_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


McpUpstream = Plugin  # url: http://127.0.0.1:PORT (the MCP endpoint is /mcp), secret: the owner's


def mcp_config(chain, signing_key, upstream: McpUpstream | str, secret: str | None = None, **mcp):
    url = upstream.url if isinstance(upstream, McpUpstream) else upstream
    data = base_config(chain, None, signing_key, upstream=url, open_endpoints=[], protected_endpoints=[],
                       upstream_auth={"type": "bearer", "token": upstream.secret if isinstance(upstream, McpUpstream)
                                      else (secret or "x")},
                       mcp={"path": "/mcp", "tools": TOOLS, "default_tool_credits": 1} | mcp)
    data["metering"] |= {"operator_key": OPERATOR_KEY, "settle_every": "1h"}
    return data


def rpc(i, method, name=None, **params):
    message = {"jsonrpc": "2.0", "id": i, "method": method}
    if name is not None:
        message["params"] = {"name": name, "arguments": params}
    return message
