"""x402 inside MCP tool calls, in tests: `gateway serve` in front of the example Song tools server
(`examples.song_mcp`) with tools sold per call, and the official SDKs as the payer: x402's own MCP
client (`x402.mcp.x402MCPClient`) on the MCP SDK's own `Client` (Streamable HTTP, no token)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from x402.mcp import x402MCPClient

from tests.support.served import Served
from tests.support.stack import HOST
from tests.support.x402 import PAYEE, payer_client

SEARCH_PRICE = 50_000      # "0.05": search is sold per call at its own price
SUMMARIZE_PRICE = 20_000   # "0.02"
MCP_ACCEPT = "application/json, text/event-stream"


def sell_tools(served: Served, token: str) -> None:
    """`served` in front of the MCP server: search and summarize also sold per call, count_songs
    for credits only (no service-wide x402 price)."""
    def change(data: dict) -> None:
        service = data["services"]["elvis"]
        service.update(open_endpoints=[], protected_endpoints=[])
        service["mcp"] = {"path": "/mcp", "default_tool_credits": 1,
                          "tools": {"search": {"credits": 2, "x402": "0.05"},
                                    "summarize": {"credits": 5, "x402": "0.02"}}}
        service["x402"] = {"network": "eip155:31337", "asset": token, "pay_to": PAYEE,
                           "extra": {"name": "Demo USD", "version": "1"}}
    served.configure(change)


class SdkSession:
    """What x402MCPClient calls (`call_tool(params, **kwargs)`, x402's MCPToolResult back) on the
    MCP SDK's `Client`: the adapter of x402's own example (examples/python/clients/mcp/simple.py),
    reading the SDK 2.x result's snake_case fields."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.raw: list[Any] = []  # the SDK's CallToolResult of each call, in order
        self.content_types: list[str] = []  # of every answer the client read

    async def call_tool(self, params: dict[str, Any], **kwargs: Any) -> SimpleNamespace:
        timeout = kwargs.get("read_timeout_seconds")
        result = await self.client.call_tool(
            params["name"], params.get("arguments") or {}, meta=params.get("_meta"),
            read_timeout_seconds=timeout.total_seconds() if isinstance(timeout, timedelta) else timeout)
        self.raw.append(result)
        # Why the wire names (isError, _meta, structuredContent): x402's `convert_mcp_result` reads
        # those attributes (an x402 MCPToolResult's own `meta` would be lost: no PAYMENT-RESPONSE).
        return SimpleNamespace(**{
            "content": [item.model_dump(by_alias=True, exclude_none=True) for item in result.content],
            "isError": bool(result.is_error), "_meta": dict(result.meta or {}),
            "structuredContent": result.structured_content})

    async def list_tools(self) -> Any:
        return await self.client.list_tools()


@asynccontextmanager
async def paying_mcp(served: Served, token: str, mode: str = "auto"):
    """x402's MCP client over the MCP SDK's client, with no token: it pays tools from their terms."""
    http = create_mcp_http_client(headers={"Host": HOST})
    client = Client(streamable_http_client(f"http://127.0.0.1:{served.port}/mcp", http_client=http), mode=mode)
    session = SdkSession(client)

    async def seen(response: httpx.Response) -> None:
        session.content_types.append(response.headers.get("Content-Type", ""))

    http.event_hooks["response"].append(seen)
    async with http, client:
        yield x402MCPClient(session, payer_client(token), auto_payment=True), session


async def rpc(served: Served, message: dict, token: str | None = None) -> httpx.Response:
    """One raw JSON-RPC POST on the MCP path (the server is stateless: no session needed)."""
    headers = {"Host": HOST, "Accept": MCP_ACCEPT} | ({"Authorization": f"Bearer {token}"} if token else {})
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        return await http.post(f"http://127.0.0.1:{served.port}/mcp", json=message)


def tool_call(i: int, name: str, payment: dict | None = None, **arguments) -> dict:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if payment is not None:
        params["_meta"] = {"x402/payment": payment}
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
