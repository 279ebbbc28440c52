"""A real JSON-RPC HTTP server on loopback for tests: a counting, breakable proxy or a fake node.

    async with RpcProxy("http://127.0.0.1:8545") as proxy:      # forwards to a node (anvil)
        ... proxy.url ... proxy.counts["eth_call"] ...
    async with RpcProxy(None, responder=lambda method, params: "0x01") as fake:   # no node at all

Switches, flipped at any time: `down` (answer HTTP 503), `hang` (hold requests until `release()`
or until the client gives up: an asyncio.Event, no sleeps), `garbage` (HTTP 200, body not JSON).
Every request is counted per method in `counts` and recorded in `calls` and `ids`, whatever the
switches.
A responder may be sync or async; raising `JsonRpcFault` answers a JSON-RPC error object.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import Counter
from typing import Any, Callable

import aiohttp
from aiohttp import web

Responder = Callable[[str, list], Any]


class JsonRpcFault(Exception):
    """Raise from a responder to answer `{"error": {code, message, data}}` (e.g. a revert)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def as_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class RpcProxy:
    """JSON-RPC over HTTP on 127.0.0.1 (a free port), forwarding to `target` or asking `responder`."""

    def __init__(self, target: str | None, responder: Responder | None = None) -> None:
        if (target is None) == (responder is None):
            raise ValueError("give exactly one of target and responder")
        self.target = target
        self.responder = responder
        self.counts: Counter[str] = Counter()
        self.calls: list[tuple[str, Any]] = []  # (method, params) in arrival order
        self.ids: list[Any] = []  # JSON-RPC ids in arrival order
        self.down = False
        self.hang = False
        self.garbage = False
        self.held = 0  # requests currently held by `hang`
        self.url = ""
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "RpcProxy":
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"
        if self.target is not None:
            self._client = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    def release(self) -> None:
        """Let every held request go on (answered as the other switches say) and stop hanging."""
        self.hang = False
        self._released.set()
        self._released = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        for item in payload if isinstance(payload, list) else [payload]:
            method = item.get("method", "?") if isinstance(item, dict) else "<invalid>"
            self.counts[method] += 1
            self.calls.append((method, item.get("params") if isinstance(item, dict) else None))
            self.ids.append(item.get("id") if isinstance(item, dict) else None)

        if self.hang:
            self.held += 1
            try:
                await self._released.wait()
            finally:
                self.held -= 1
        if self.down:
            return web.Response(status=503, text="proxy is down")
        if self.garbage:
            return web.Response(status=200, text="<html>surprise</html>", content_type="text/html")
        if self._client is not None:
            async with self._client.post(
                self.target, data=body, headers={"Content-Type": "application/json"}
            ) as upstream:
                return web.Response(
                    status=upstream.status, body=await upstream.read(), content_type="application/json"
                )
        if payload is None:
            return _json({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}, 400)
        if isinstance(payload, list):
            return _json([await self._answer(item) for item in payload])
        return _json(await self._answer(payload))

    async def _answer(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict) or not isinstance(item.get("method"), str):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request"}}
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": item.get("id")}
        try:
            assert self.responder is not None
            result = self.responder(item["method"], item.get("params") or [])
            if inspect.isawaitable(result):
                result = await result
            answer["result"] = result
        except JsonRpcFault as fault:
            answer["error"] = fault.as_error()
        return answer


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json")
